"""The model a run trains: built from a name/config, or loaded from a checkpoint to fine-tune
(head replaced for new classes, position embedding resampled for a new resolution)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..config import ViTConfig
from ..data.preprocess import PreprocessConfig
from ..layers import resample_pos_embed
from ..models.factory import resolve_config
from ..models.vit import VisionTransformer
from ..weights.vitkit_format import CONFIG_NAME, WEIGHTS_NAME, read_vitkit_config
from .augment import MEAN, STD

HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def find_model_folder(src: str | os.PathLike) -> Path | None:
    """A vitkit checkpoint folder for ``src``: the folder itself, or a run folder's ``model/``."""
    p = Path(src)
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        return p
    if p.is_dir() and (p / "model" / CONFIG_NAME).is_file():
        return p / "model"
    return None


def preprocess_for(cfg: ViTConfig) -> PreprocessConfig:
    """How the trained model wants its pixels: squash-resize (bilinear) and mean = std = 0.5."""
    c = cfg.channels
    return PreprocessConfig(size=cfg.image_hw, resize="squash", interpolation="bilinear", mean=(MEAN,) * c,
                            std=(STD,) * c, mode="L" if c == 1 else "RGB")


def _pretrained(src: str) -> tuple[ViTConfig, dict[str, torch.Tensor], str] | None:
    """(config, state dict, description) when ``src`` names a checkpoint; None for names/configs."""
    folder = find_model_folder(src)
    if folder is not None:
        from safetensors.torch import load_file

        cfg, _ = read_vitkit_config(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{folder} is not a vitkit checkpoint: {WEIGHTS_NAME} is missing")
        return cfg, load_file(str(weights)), str(folder)
    if str(src).endswith(".pt"):
        from .checkpoint import load_checkpoint

        ck = load_checkpoint(src)
        return ViTConfig.from_dict(ck["model_config"]), ck["model"], str(src)
    if os.path.isdir(src):
        raise ValueError(f"--model {src!r} is a folder but not a vitkit checkpoint (no {CONFIG_NAME}, no model/)")
    return None


def build_model(model: str, classes: list[str], data_channels: int, image_size: int | None = None,
                patch_size: int | None = None, drop_path: float = 0.0,
                overrides: dict[str, Any] | None = None) -> tuple[VisionTransformer, list[str]]:
    """The model to train and notes on what was adapted (printed by the engine)."""
    notes: list[str] = []
    n = len(classes)
    pre = _pretrained(model)
    if pre is None:
        kw: dict[str, Any] = dict(channels=data_channels)
        kw.update(overrides or {})
        kw.update(num_classes=n, labels=list(classes), drop_path=drop_path)
        if image_size is not None:
            kw["image_size"] = image_size
        if patch_size is not None:
            kw["patch_size"] = patch_size
        cfg = resolve_config(model, **kw)
        return VisionTransformer(cfg), notes

    old_cfg, state, where = pre
    if patch_size is not None and patch_size != old_cfg.patch_size:
        raise ValueError(f"--patch-size {patch_size}: the checkpoint {where} has patch size {old_cfg.patch_size}, "
                         "which fine-tuning cannot change")
    if overrides:
        raise ValueError(f"model overrides {sorted(overrides)} apply to models built from a name or config, "
                         f"not to the checkpoint {where}")
    cfg = old_cfg.replace(num_classes=n, labels=list(classes), drop_path=drop_path,
                          image_size=image_size if image_size is not None else old_cfg.image_size)
    state = dict(state)
    if old_cfg.num_classes != n or (old_cfg.labels is not None and list(old_cfg.labels) != list(classes)):
        for k in HEAD_KEYS:
            state.pop(k, None)
        notes.append(f"head replaced: {old_cfg.num_classes} -> {n} classes")
    if cfg.grid_size != old_cfg.grid_size and "pos_embed" in state:
        prefix = old_cfg.num_prefix_tokens if old_cfg.pos_embed_prefix else 0
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.grid_size, old_cfg.grid_size, prefix)
        notes.append(f"position embedding resampled: grid {old_cfg.grid_size[0]}x{old_cfg.grid_size[1]} -> "
                     f"{cfg.grid_size[0]}x{cfg.grid_size[1]}")
    m = VisionTransformer(cfg)
    expected = m.state_dict()
    missing = sorted(set(expected) - set(state) - set(HEAD_KEYS))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {where} does not fit the model: missing {missing}, unexpected {unexpected}, "
                         f"wrong shape {wrong}")
    m.load_state_dict(state, strict=False)
    notes.insert(0, f"fine-tuning from {where}")
    return m, notes


def architecture_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields (other than labels and regularisation) where two ViTConfig dicts differ."""
    ignore = {"labels", "drop_path", "dropout", "attn_dropout"}
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]
