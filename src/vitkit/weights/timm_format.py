"""timm checkpoints: a state dict file (``.safetensors`` / ``.pth`` / ``.bin``) or a timm hub folder
(``config.json`` with ``architecture`` and ``pretrained_cfg``, plus ``model.safetensors``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ViTConfig
from ..data.preprocess import PreprocessConfig
from ..models.vit import VisionTransformer
from .build import build_model
from .convert_timm import infer_config, timm_model_args, timm_to_vitkit, unwrap, vitkit_to_timm
from .hf_format import read_folder_weights
from ..utils.jsonfile import read_json
from .options import LoadOptions
from .preprocess_cfg import from_timm_cfg, to_timm_cfg
from ..data.preprocess import default_preprocess
from ..utils.atomic import atomic_write
from .safe_io import SAFETENSORS_SUFFIXES, read_safetensors_metadata
from .sniff import is_safetensors, read_weights_file

META_CONFIG = "vitkit_config"  # safetensors metadata: our exact config and preprocessing (JSON)
META_PREPROCESS = "vitkit_preprocess"
# timm's default eval preprocessing for ViTs (its vision_transformer _cfg): 0.9 crop, bicubic, mean = std = 0.5
TIMM_VIT_DEFAULT = dict(resize="shortest", crop_pct=0.9, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def read_timm_file(path: Path, opts: LoadOptions) -> VisionTransformer:
    """A vitkit model from a timm-layout state dict file (safetensors or a PyTorch pickle, by content); the
    architecture comes from vitkit's own metadata when vitkit wrote it, else from the tensors' shapes."""
    hints = opts.hints()
    state = unwrap(read_weights_file(path), str(path))
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
        raise ValueError(f"{path} holds a Hugging Face transformers state dict; load its folder (with "
                         "config.json) instead of the weights file alone")
    pre = opts.default_preprocess
    pre_source = "default (timm ViT)" if pre is None else "vitkit pretrained table"
    cfg = None
    if is_safetensors(path):
        meta = read_safetensors_metadata(path)
        if META_CONFIG in meta:  # written by vitkit: the exact config, no guessing
            try:
                cfg = ViTConfig.from_dict(json.loads(meta[META_CONFIG]))
                if meta.get(META_PREPROCESS):
                    pre, pre_source = PreprocessConfig.from_dict(json.loads(meta[META_PREPROCESS])), str(path)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}: metadata {META_CONFIG!r} is not a valid vitkit config: {e}") from None
    if cfg is None:
        cfg = infer_config(state, str(path), hints, requested_size=opts.image_size, notes=opts.notes)
    ours, ignored = timm_to_vitkit(state, cfg, str(path))
    if pre is None:
        pre = default_preprocess(cfg.image_hw, cfg.channels, **TIMM_VIT_DEFAULT)
    info = dict(format="timm", source=str(path), weights=str(path), ignored_keys=ignored, preprocess_source=pre_source)
    return build_model(cfg, ours, pre, info, opts)


def read_timm_folder(folder: Path, opts: LoadOptions) -> VisionTransformer:
    """A vitkit model from a timm hub folder (``config.json`` with ``architecture``, + ``model.safetensors``)."""
    hints = opts.hints()
    meta = read_json(folder / "config.json")
    if "auto_map" in meta:
        raise ValueError(f"{folder / 'config.json'}: has 'auto_map'; vitkit never imports code from a checkpoint")
    args = meta.get("model_args") if isinstance(meta.get("model_args"), dict) else {}
    hints.setdefault("architecture", meta.get("architecture"))
    if args.get("num_heads"):  # what the file says wins; an override that contradicts it is refused by load()
        hints["heads"] = args["num_heads"]
    pool = args.get("global_pool", meta.get("global_pool"))
    if pool in ("avg", "token", "map"):
        hints["pooling"] = {"avg": "gap", "token": "cls", "map": "map"}[pool]
    if isinstance(meta.get("label_names"), list):
        hints.setdefault("labels", [str(n) for n in meta["label_names"]])
    pcfg = meta.get("pretrained_cfg")
    pre = from_timm_cfg(pcfg, str(folder / "config.json")) if isinstance(pcfg, dict) else None
    state, file = read_folder_weights(folder)
    state = unwrap(state, str(file))
    if pre is not None and "image_size" not in hints:
        hints["image_size"] = pre.size
    cfg = infer_config(state, str(file), hints, requested_size=opts.image_size, notes=opts.notes)
    ours, ignored = timm_to_vitkit(state, cfg, str(file))
    info = dict(format="timm", source=str(folder), weights=str(file), ignored_keys=ignored,
                preprocess_source=str(folder / "config.json") if pre else "default (timm ViT)")
    if pre is None:
        pre = default_preprocess(cfg.image_hw, cfg.channels, **TIMM_VIT_DEFAULT)
    return build_model(cfg, ours, pre, info, opts)


def save_timm(model: VisionTransformer, path: str | os.PathLike) -> Path:
    """Write a timm state dict: ``*.safetensors`` / ``*.pth`` / ``*.bin`` as one file, or a folder
    (any other name) in timm's hub layout (BEiT models in the layout of timm's ``Beit``) (``config.json`` + ``model.safetensors``) that
    ``timm.create_model('local-dir:PATH', pretrained=True)`` reads (without ``pretrained=True`` timm
    initialises randomly). safetensors files carry our exact config as metadata."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    state = vitkit_to_timm(model.state_dict(), model.cfg)
    pre = model.preprocess_cfg
    if isinstance(pre, dict):
        pre = PreprocessConfig.from_dict(pre)
    meta = {"format": "pt", META_CONFIG: json.dumps(model.cfg.to_dict())}
    if pre is not None:
        meta[META_PREPROCESS] = json.dumps(pre.to_dict())
    if path.suffix in SAFETENSORS_SUFFIXES:
        return atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))
    if path.suffix in (".pth", ".pt", ".bin"):
        return atomic_write(path, lambda p: torch.save(state, p))
    if path.suffix:
        raise ValueError(f"{path}: a timm checkpoint is a .safetensors/.pth/.bin file or a folder, not {path.suffix!r}")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    cfg = model.cfg
    args = timm_model_args(cfg)  # raises when timm cannot build this model
    if cfg.distilled:  # built by timm's VisionTransformerDistilled: [CLS] + dist rows in pos_embed, token pooling
        bad = [why for cond, why in ((cfg.reg_tokens, "register tokens"),
                                     (not cfg.pos_embed_prefix, "a patch-only position embedding"),
                                     (cfg.pooling != "cls", "mean pooling")) if cond]
        if bad:
            raise ValueError(f"timm's distilled DeiT cannot express a distilled model with {' and '.join(bad)}; "
                             "save it as vitkit, or as a timm .safetensors file")
    arch = _timm_name(cfg)
    pcfg = dict(to_timm_cfg(pre or default_preprocess(cfg.image_hw, cfg.channels, **TIMM_VIT_DEFAULT)),
                num_classes=cfg.num_classes, license="unknown", first_conv="patch_embed.proj", classifier="head")
    config = dict(architecture=arch, num_classes=cfg.num_classes, num_features=cfg.num_features,
                  global_pool=args["global_pool"], model_args=args, pretrained_cfg=pcfg)
    if cfg.labels:
        config["label_names"] = list(cfg.labels)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "model.safetensors", lambda p: save_file(state, str(p), metadata=meta))
    atomic_write(path / "config.json", lambda p: p.write_text(json.dumps(config, indent=2)))
    return path


# (size, patch, resolution) that timm registers under vit_{size}_patch{P}_{res}
_TIMM_REGISTERED = {(s, p, r) for s in ("tiny", "small", "base", "large") for p, r in ((16, 224), (16, 384), (32, 224))}


def _timm_name(cfg: ViTConfig) -> str:
    """A timm model name for the folder's ``architecture``: the matching registered name when there is one,
    else ``vit_base_patch16_224`` (``model_args`` carry every size either way, and override the name's).
    Distilled models need a DeiT distilled name: timm builds them with another class (``dist_token``)."""
    from ..config import VARIANTS

    if cfg.is_beit:  # timm's Beit models: beit_base_patch16_{224,384}, beit_large_patch16_{224,384,512}
        for name, res in (("base", 224), ("base", 384), ("large", 224), ("large", 384), ("large", 512)):
            v = VARIANTS[name]
            if (v["width"], v["depth"], v["heads"], 16, (res, res)) == \
                    (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.image_hw):
                return f"beit_{name}_patch16_{res}"
        return "beit_base_patch16_224"
    if cfg.distilled:
        for name in ("tiny", "small", "base"):
            v = VARIANTS[name]
            if (v["width"], v["depth"], v["heads"], cfg.patch_size, cfg.image_hw) == \
                    (cfg.width, cfg.depth, cfg.heads, 16, (224, 224)):
                return f"deit_{name}_distilled_patch16_224"
        return "deit_base_distilled_patch16_224"
    if cfg.norm_pre:  # the name carries the CLIP towers' LayerNorm eps 1e-5 (model_args cannot)
        return "vit_base_patch16_clip_224"
    if cfg.pooling == "map":
        return "vit_base_patch16_siglip_224"
    for name, v in VARIANTS.items():
        key = (name, cfg.patch_size, cfg.image_hw[0])
        if (v["width"], v["depth"], v["heads"]) == (cfg.width, cfg.depth, cfg.heads) and key in _TIMM_REGISTERED \
                and cfg.image_hw[0] == cfg.image_hw[1]:
            return f"vit_{name}_patch{cfg.patch_size}_{cfg.image_hw[0]}"
    return "vit_base_patch16_224"
