"""From (config, converted state dict) to a ready model: optional position-embedding resampling,
strict loading, preprocessing and class names attached."""

from __future__ import annotations

from typing import Any

import torch

from ..config import ViTConfig
from ..data.imagenet import imagenet1k_classes
from ..data.preprocess import PreprocessConfig
from ..layers import resample_pos_embed, resize_patch_kernel, resize_rel_pos_table
from ..models.vit import VisionTransformer
from .safe_io import check_tensor_dtypes


def resize_state(cfg: ViTConfig, state: dict[str, torch.Tensor], image_size: int | tuple[int, int] | None = None,
                 interpolation: str = "bicubic", antialias: bool = True, patch_size: int | None = None
                 ) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """The config and state dict for another input size and/or patch size: the learned position embedding's
    patch grid is resampled to the new grid (prefix rows kept), as timm's ``resample_abs_pos_embed`` does,
    and BEiT's relative position tables as timm's ``resize_rel_pos_bias_table`` does (layers/rel_pos.py says
    why); a new ``patch_size`` resizes the patch-embedding kernel by FlexiViT's pseudo-inverse (layers/flexi.py)."""
    change = {k: v for k, v in (("image_size", image_size), ("patch_size", patch_size)) if v is not None}
    try:
        new = cfg.replace(**change)
    except ValueError as e:
        if patch_size is None:
            raise
        raise ValueError(f"patch_size={patch_size}: {e}") from None
    state = dict(state)
    if new.patch_size != cfg.patch_size and getattr(cfg, "stem", "patch") == "hybrid":
        raise ValueError(f"patch_size={patch_size}: a hybrid's patches are cut from its CNN's feature map; FlexiViT's "
                         "kernel resize is for pixel patches (a patch-stem ViT)")
    if new.patch_size != cfg.patch_size and "patch_embed.proj.weight" in state:
        state["patch_embed.proj.weight"] = resize_patch_kernel(state["patch_embed.proj.weight"], new.patch_size)
    if new.grid_size == cfg.grid_size:
        return new, state
    if "pos_embed" in state:
        prefix = cfg.num_prefix_tokens if cfg.pos_embed_prefix else 0
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], new.grid_size, cfg.grid_size, prefix,
                                                interpolation=interpolation, antialias=antialias)
    for k in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[k] = resize_rel_pos_table(state[k], new.grid_size, cfg.grid_size)
    return new, state


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype, source: str, opts=None) -> dict[str, torch.Tensor]:
    """Every tensor as ``dtype``: half-precision (or mixed) files are cast, said in one line; a tensor that is
    not floating point (an integer or bool dtype, e.g. a header relabelled I32 over F32 data) is refused."""
    check_tensor_dtypes(state, source)
    found = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
    want = str(dtype).replace("torch.", "")
    if found and found != [want]:
        msg = f"{source}: weights stored as {', '.join(found)}, cast to {want}"
        if opts is not None:
            opts.note(msg, loud=True)
        state = {k: v.to(dtype) for k, v in state.items()}
    return state


def build_model(cfg: ViTConfig, state: dict[str, torch.Tensor], preprocess: PreprocessConfig | None,
                info: dict[str, Any], opts=None) -> VisionTransformer:
    """A model in eval mode with ``preprocess_cfg`` and ``load_info`` ({format, source, ignored_keys, notes...}).

    ``opts`` (:class:`~vitkit.weights.options.LoadOptions`): ``image_size`` resamples the position embedding
    (only when asked), ``patch_size`` resizes the patch kernel (FlexiViT) and resamples it too,
    ``dynamic_img_size``, ``dtype`` (float32 by default), ``map_location``.
    """
    from .options import LoadOptions

    opts = opts if opts is not None else LoadOptions()
    if opts.dynamic_img_size is not None:
        cfg = cfg.replace(dynamic_img_size=bool(opts.dynamic_img_size))
    if opts.image_size is not None or opts.patch_size is not None:
        old, old_p = cfg.grid_size, cfg.patch_size
        cfg, state = resize_state(cfg, state, opts.image_size, patch_size=opts.patch_size)
        if cfg.patch_size != old_p:
            opts.note(f"patch-embedding kernel resized (FlexiViT pseudo-inverse, bicubic): patch {old_p} -> "
                      f"{cfg.patch_size}")
        if cfg.grid_size != old:
            opts.note(f"position embedding resampled: grid {old[0]}x{old[1]} -> {cfg.grid_size[0]}x{cfg.grid_size[1]}")
        if preprocess is not None:
            preprocess = PreprocessConfig(**{**preprocess.to_dict(), "size": cfg.image_hw})
    if cfg.labels is None and cfg.num_classes == 1000:
        cfg = cfg.replace(labels=imagenet1k_classes())  # every 1k-class ViT uses the ImageNet-1k order
        info["labels"] = "imagenet-1k (shipped with vitkit)"
    state = cast_state(state, opts.dtype, str(info.get("weights", info.get("source", "checkpoint"))), opts)
    model = _empty_model(cfg)
    model.load_state_dict(state, strict=True, assign=True)  # the loaded tensors become the parameters
    model.init_buffers()  # what is derived, not saved (sin-cos embedding, relative position index): computed
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"vitkit bug: tensors {left} were not loaded")
    model.preprocess_cfg = preprocess
    info["notes"] = list(opts.notes)
    model.load_info = info
    return model.to(opts.map_location).eval()


def _empty_model(cfg: ViTConfig) -> VisionTransformer:
    """The model's structure on the meta device: no memory and no random initialisation (which costs
    seconds at ViT-B size), since every tensor is replaced by a loaded one."""
    with torch.device("meta"):
        return VisionTransformer(cfg)
