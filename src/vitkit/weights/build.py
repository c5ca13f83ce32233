"""From (config, converted state dict) to a ready model: optional position-embedding resampling,
strict loading, preprocessing and class names attached."""

from __future__ import annotations

from typing import Any

import torch

from ..config import ViTConfig
from ..data.imagenet import imagenet1k_classes
from ..data.preprocess import PreprocessConfig
from ..layers import resample_pos_embed, sincos_2d_pos_embed
from ..models.vit import VisionTransformer


def resize_state(cfg: ViTConfig, state: dict[str, torch.Tensor], image_size: int | tuple[int, int],
                 interpolation: str = "bicubic", antialias: bool = True) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """The config and state dict for another input size: the learned position embedding's patch grid
    is resampled (prefix rows kept), as timm's ``resample_abs_pos_embed`` does."""
    new = cfg.replace(image_size=image_size)
    if new.grid_size != cfg.grid_size and "pos_embed" in state:
        state = dict(state)
        prefix = cfg.num_prefix_tokens if cfg.pos_embed_prefix else 0
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], new.grid_size, cfg.grid_size, prefix,
                                                interpolation=interpolation, antialias=antialias)
    return new, state


def build_model(cfg: ViTConfig, state: dict[str, torch.Tensor], preprocess: PreprocessConfig | None,
                info: dict[str, Any], image_size: int | tuple[int, int] | None = None,
                map_location: str | torch.device = "cpu") -> VisionTransformer:
    """A model in eval mode with ``preprocess_cfg`` and ``load_info`` ({format, source, ignored_keys, ...}).

    ``image_size``: load at another resolution, resampling the position embedding (only when asked).
    """
    if image_size is not None:
        cfg, state = resize_state(cfg, state, image_size)
        if preprocess is not None:
            preprocess = PreprocessConfig(**{**preprocess.to_dict(), "size": cfg.image_hw})
    if cfg.labels is None and cfg.num_classes == 1000:
        cfg = cfg.replace(labels=imagenet1k_classes())  # every 1k-class ViT uses the ImageNet-1k order
        info["labels"] = "imagenet-1k (shipped with vitkit)"
    model = _empty_model(cfg)
    model.load_state_dict(state, strict=True, assign=True)  # the loaded tensors become the parameters
    if cfg.pos_embed == "sincos2d":  # a fixed buffer, not in the state dict: compute it
        model.register_buffer("pos_embed", sincos_2d_pos_embed(cfg.grid_size, cfg.width), persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"vitkit bug: tensors {left} were not loaded")
    model.preprocess_cfg = preprocess
    model.load_info = info
    return model.to(map_location).eval()


def _empty_model(cfg: ViTConfig) -> VisionTransformer:
    """The model's structure on the meta device: no memory and no random initialisation (which costs
    seconds at ViT-B size), since every tensor is replaced by a loaded one."""
    with torch.device("meta"):
        return VisionTransformer(cfg)
