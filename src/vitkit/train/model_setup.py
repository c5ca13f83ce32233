"""The model a run trains: built from a name/config, or loaded through ``vitkit.load`` from any checkpoint it
reads, to fine-tune (head replaced for new classes, position embedding resampled for a new resolution, the
checkpoint's preprocessing kept)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import ViTConfig
from ..data.preprocess import PreprocessConfig, default_preprocess
from ..models.factory import resolve_config
from ..models.vit import VisionTransformer
from ..weights.api import is_checkpoint
from ..weights.checks import check_state

HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
HEAD_SIDE = ("pooling", "fc_norm")  # ViTConfig fields a fine-tune may change: how the head reads the tokens
BYTES_PER_TRAINED_PARAM = 16  # fp32 weights + gradients + AdamW's two moments


def preprocess_for(cfg: ViTConfig) -> PreprocessConfig:
    """How a model trained from scratch wants its pixels: squash-resize (bilinear) and mean = std = 0.5."""
    return default_preprocess(cfg.image_hw, cfg.channels)


def check_trainable(cfg: ViTConfig, source: str) -> None:
    """Refuse, before allocating anything, a model whose training state cannot fit this machine's memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    need = cfg.num_params() * BYTES_PER_TRAINED_PARAM
    if need > ram:
        raise ValueError(f"{source}: a model of {cfg.num_params() / 1e9:.1f}B parameters (width {cfg.width}, depth "
                         f"{cfg.depth}) needs about {need / 2**30:.0f} GiB to train (weights, gradients, AdamW "
                         f"state) and this machine has {ram / 2**30:.0f} GiB; refused before allocating")


def build_model(model: str, classes: list[str], data_channels: int, image_size: int | None = None,
                patch_size: int | None = None, drop_path: float = 0.0,
                overrides: dict[str, Any] | None = None, load_options: dict[str, Any] | None = None,
                architecture: str | None = None, architecture_overrides: dict[str, Any] | None = None
                ) -> tuple[VisionTransformer, list[str]]:
    """The model to train (its ``preprocess_cfg`` set) and notes on what was adapted (printed by the engine).

    ``load_options``: the overrides of :func:`vitkit.load` (heads, pooling, act) for checkpoints that do not
    say them. ``architecture`` (``--model`` beside ``--init``): a name or config the checkpoint ``model`` must
    be an instance of (its classes and head aside), checked before training."""
    notes: list[str] = []
    n = len(classes)
    if not is_checkpoint(model):
        if load_options:
            raise ValueError(f"{sorted(load_options)} are loading options, for checkpoints; {model!r} is a model "
                             "name or config (use --model-set KEY=VALUE to change its fields)")
        kw: dict[str, Any] = dict(channels=data_channels)
        kw.update(overrides or {})
        kw.update(num_classes=n, labels=list(classes), drop_path=drop_path)
        if image_size is not None:
            kw["image_size"] = image_size
        if patch_size is not None:
            kw["patch_size"] = patch_size
        cfg = resolve_config(model, **kw)
        check_trainable(cfg, model)
        m = VisionTransformer(cfg)
        m.preprocess_cfg = preprocess_for(cfg)
        return m, notes

    from ..weights.api import load

    if overrides:  # --model CHECKPOINT --model-set ...: as with --init, only the head side can change
        architecture_overrides = {**overrides, **(architecture_overrides or {})}
    # a new --patch-size resizes the checkpoint's patch kernel (FlexiViT's pseudo-inverse, layers/flexi.py)
    src = load(model, image_size=image_size, patch_size=patch_size, dtype=torch.float32, **(load_options or {}))
    old_cfg, where = src.cfg, src.load_info.get("source", model)
    notes.append(f"fine-tuning from {where} ({src.load_info['format']})")
    head_side = {k: v for k, v in (architecture_overrides or {}).items() if k in HEAD_SIDE}
    other = sorted(k for k, v in (architecture_overrides or {}).items()  # the checkpoint's own values pass
                   if k not in head_side and getattr(old_cfg, k, object()) != v)
    if architecture is not None:
        want = resolve_config(architecture, **(architecture_overrides or {}))
        # size: resampled; channels: the data's decide, checked against the checkpoint's below
        ignore = {"num_classes", "labels", "dynamic_img_size", "dynamic_img_pad", "image_size", "channels"}
        diff = [d for d in architecture_diff(want.to_dict(), old_cfg.to_dict())
                if d.split(":")[0] not in ignore and d.split(":")[0] not in head_side]
        if diff:
            raise ValueError(f"--init {model}: the checkpoint is not a {architecture!r} ({'; '.join(diff)}); "
                             "drop --model to train the checkpoint's own architecture")
    elif other:
        raise ValueError(f"--model-set {', '.join(other)}: a checkpoint's architecture is its own; only "
                         f"{', '.join(sorted(HEAD_SIDE))} (how the head reads the tokens) can change when "
                         f"fine-tuning from {model}")
    notes += src.load_info.get("notes", [])
    if old_cfg.channels != data_channels and not (data_channels == 1 and old_cfg.channels == 3):
        raise ValueError(f"the checkpoint {where} takes {old_cfg.channels}-channel images, the data has "
                         f"{data_channels} channel(s)")
    cfg = old_cfg.replace(num_classes=n, labels=list(classes), drop_path=drop_path, dynamic_img_size=False)
    state = {k: v for k, v in src.state_dict().items()}
    if any(v != getattr(old_cfg, k) for k, v in head_side.items()):
        cfg, moved = repool(cfg, state, head_side)
        notes.append(moved)
    check_trainable(cfg, where)
    new_head = old_cfg.num_classes != n or (old_cfg.labels is not None and list(old_cfg.labels) != list(classes))
    if new_head:
        for k in HEAD_KEYS:
            state.pop(k, None)
        notes.append((f"head added: {n} classes" if not old_cfg.num_classes else
                      f"head replaced: {old_cfg.num_classes} -> {n} classes")
                     + f" ({', '.join(classes[:5])}{', ...' if n > 5 else ''})")
    m = VisionTransformer(cfg)
    if new_head:  # a replaced head starts at zero, as the paper fine-tunes (and as reset_classifier does)
        state.update({k: torch.zeros_like(v) for k, v in m.state_dict().items() if k in HEAD_KEYS})
    check_state(state, cfg, str(where))
    m.load_state_dict(state, strict=True)
    pre = src.preprocess_cfg if isinstance(src.preprocess_cfg, PreprocessConfig) else preprocess_for(cfg)
    m.preprocess_cfg = pre
    notes.append(f"preprocessing kept from the checkpoint: {describe_preprocess(pre)}")
    return m, notes


def repool(cfg: ViTConfig, state: dict[str, torch.Tensor], change: dict[str, Any]) -> tuple[ViTConfig, str]:
    """``cfg`` with a new pooling / fc_norm (as MAE fine-tunes its encoder with mean pooling), and ``state``
    adapted in place: the final norm's weights move between ``norm.`` (before pooling) and ``fc_norm.`` (after
    it), so no trained weight is dropped; the encoder is unchanged."""
    if change.get("pooling", cfg.pooling) == "map" and cfg.pooling != "map":
        raise ValueError("pooling=map adds an attention-pooling head that the checkpoint does not have; fine-tune "
                         "with pooling=cls or pooling=gap")
    if cfg.pooling == "map" and change.get("pooling", "map") != "map":
        raise ValueError("the checkpoint pools with its attention-pooling head (map); dropping it would lose "
                         "trained weights, so its pooling cannot change")
    new = cfg.replace(**change)  # ViTConfig refuses pooling=cls without a class token
    was, now = ("fc_norm." if cfg.use_fc_norm else "norm."), ("fc_norm." if new.use_fc_norm else "norm.")
    if was != now:
        for k in [k for k in state if k.startswith(was)]:
            state[now + k[len(was):]] = state.pop(k)
    what = {"cls": "the [CLS] token", "gap": "the mean of the patch tokens"}
    said = [f"pooling: {what[cfg.pooling]} -> {what[new.pooling]}"] if new.pooling != cfg.pooling else []
    if was != now:
        said.append(f"the final norm moved from {was[:-1]} to {now[:-1]}")
    return new, "; ".join(said) or f"pooling: {what[new.pooling]}, unchanged"


def describe_preprocess(pre: PreprocessConfig) -> str:
    return (f"{pre.resize} resize to {pre.size[0]}x{pre.size[1]} (crop {pre.crop_pct:g}), {pre.interpolation}, "
            f"mean {tuple(round(v, 4) for v in pre.mean)}, std {tuple(round(v, 4) for v in pre.std)}")


def architecture_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields (other than labels and regularisation) where two ViTConfig dicts differ."""
    ignore = {"labels", "drop_path", "dropout", "attn_dropout", "dynamic_img_size"}  # none changes a weight
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]
