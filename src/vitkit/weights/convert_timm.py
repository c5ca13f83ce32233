"""timm ``VisionTransformer`` state dicts <-> vitkit.

vitkit's parameter names are timm's (DESIGN.md, "Checkpoint layouts"), so the
conversion is the identity on names; the work is inferring the architecture
from the tensors and checking every key. What a state dict cannot tell (number
of heads, pooling without fc_norm, eps, activation) comes from ``hints``: a
timm hub ``config.json`` (``model_args``, ``architecture``), or the caller.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import VARIANTS, ViTConfig, parse_model_name
from .checks import check_state, need, square_side

# wrappers that training scripts put around the state dict (DeiT/MAE: {'model': ...})
WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")
# keys of MAE pre-training checkpoints that belong to the decoder, not the encoder
IGNORABLE = re.compile(r"^(decoder_|decoder\.|mask_token$)")
# width -> heads of the published ViT sizes a bare state dict may come from: the paper's and DeiT's (VARIANTS),
# and timm's other registered sizes (medium 512, betwixt 640, giant 1408, gigantic 1664). Every timm ViT of one of
# these widths has that head count, whatever its depth. A state dict stores no head count; these are the only
# widths where its shapes decide it.
KNOWN_HEADS = {**{v["width"]: v["heads"] for v in VARIANTS.values()}, 512: 8, 640: 10, 1408: 16, 1664: 16}


def unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} inside a checkpoint ({'model': sd} and DDP 'module.' prefixes removed)."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                raise ValueError(f"{source}: no tensors found; top-level keys are {sorted(obj)[:20]} "
                                 f"(vitkit looks inside {list(WRAPPER_KEYS)})")
            obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict, found {type(obj).__name__}")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"{source}: entries that are not tensors: {bad[:20]}")
    for prefix in ("module.", "backbone.", "encoder."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _heads(width: int, depth: int, hints: dict[str, Any], source: str) -> int:
    if hints.get("heads"):
        return int(hints["heads"])
    if width in KNOWN_HEADS:
        return KNOWN_HEADS[width]
    choices = [h for h in range(1, width + 1) if width % h == 0 and width // h >= 16][-6:]
    raise ValueError(f"{source}: a timm state dict does not store its number of attention heads, and width "
                     f"{width} is no published ViT width that would decide it; pass heads=N "
                     f"(CLI: --heads N); width {width} allows e.g. "
                     + ", ".join(f"{h} (head width {width // h})" for h in choices))


def infer_config(state: dict[str, torch.Tensor], source: str, hints: dict[str, Any] | None = None,
                 requested_size: int | tuple[int, int] | None = None, notes: list[str] | None = None) -> ViTConfig:
    """The ViTConfig a timm-layout state dict describes; ``hints`` fill in what tensors cannot say.

    hints: heads, image_size, pooling, fc_norm, norm_eps, act, labels, architecture (a timm model name).
    ``requested_size``: the size the caller will load at; taken as the checkpoint's own when the
    position embedding is not a square grid plus prefix rows but fits that size (non-square models).
    ``notes``: what the shapes decided (head count from a published size, the pooling) is appended here.
    """
    notes = notes if notes is not None else []
    hints = dict(hints or {})
    arch = hints.pop("architecture", None)
    if arch and "heads" not in hints:
        try:
            hints["heads"] = parse_model_name(arch).heads
        except ValueError:
            pass
    w = need(state, "patch_embed.proj.weight", source, (None, None, None, None))
    width, channels, p, p2 = w.shape
    if p != p2:
        raise ValueError(f"{source}: non-square patch kernel {tuple(w.shape)} is not supported")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ValueError(f"{source}: no 'blocks.N.' tensors; not a timm ViT state dict")
    fc1 = need(state, "blocks.0.mlp.fc1.weight", source, (None, width))
    cls, dist = "cls_token" in state, "dist_token" in state
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    n_prefix = int(cls) + int(dist) + reg
    has_fc_norm = "fc_norm.weight" in state
    pooling = hints.get("pooling") or ("gap" if has_fc_norm or not cls else "cls")
    if "pooling" not in hints:
        notes.append(f"{source}: pooling {pooling!r} (" + ("fc_norm present" if has_fc_norm else "no [CLS] token"
                     if not cls else "a [CLS] token and no fc_norm, as every timm ViT that pools [CLS]") + ")")
    if "heads" not in hints and width in KNOWN_HEADS:
        notes.append(f"{source}: {KNOWN_HEADS[width]} heads, those of every published ViT of width {width} "
                     "(a state dict does not store them; heads=N if yours differ)")
    kw: dict[str, Any] = dict(
        patch_size=p, channels=channels, width=width, depth=depth, heads=_heads(width, depth, hints, source),
        mlp_ratio=fc1.shape[0] / width, qkv_bias="blocks.0.attn.qkv.bias" in state,
        qk_norm={"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= set(state), pooling=pooling,
        class_token=cls, reg_tokens=reg, distilled=dist, patch_bias="patch_embed.proj.bias" in state,
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        fc_norm=has_fc_norm if (has_fc_norm or pooling == "gap") else None,
        representation_size=state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        norm_eps=hints.get("norm_eps", 1e-6), act=hints.get("act", "gelu"), labels=hints.get("labels"),
    )
    if "pos_embed" in state:
        rows = state["pos_embed"].shape[1]
        size = hints.get("image_size")
        if size is not None:  # the grid is known: decide whether prefix tokens have rows
            gh, gw = (size, size) if isinstance(size, int) else tuple(size)
            n = (gh // p) * (gw // p)
            if rows not in (n, n + n_prefix):
                raise ValueError(f"{source}: pos_embed has {rows} rows; a {gh}x{gw} image at patch {p} "
                                 f"has {n} patches (+{n_prefix} prefix tokens)")
            kw.update(image_size=(gh, gw), pos_embed_prefix=rows == n + n_prefix and n_prefix > 0)
        elif n_prefix and (side := square_side(rows - n_prefix)) is not None:
            kw.update(image_size=side * p, pos_embed_prefix=True)
        elif requested_size is not None and rows in (n := _patches(requested_size, p), n + n_prefix):
            # e.g. timm img_size=(224, 256): 14*16 + 1 = 225 rows would also read as a 15x15 grid without
            # a [CLS] row; the caller's size settles it
            kw.update(image_size=requested_size, pos_embed_prefix=rows == n + n_prefix and n_prefix > 0)
        elif (side := square_side(rows)) is not None:
            kw.update(image_size=side * p, pos_embed_prefix=False)
        else:
            raise ValueError(f"{source}: pos_embed has {rows} rows, not a square grid (+{n_prefix} prefix tokens); "
                             "pass the checkpoint's own image_size=(H, W) (CLI: --image-size H W)")
    else:
        kw.update(pos_embed="none", image_size=hints.get("image_size") or 224)
    if kw["labels"] is not None and len(kw["labels"]) != kw["num_classes"]:
        kw["labels"] = None
    try:
        return ViTConfig(**kw)
    except ValueError as e:
        raise ValueError(f"{source}: the tensors describe an impossible ViT: {e}") from None


def _patches(size: int | tuple[int, int], p: int) -> int:
    h, w = (size, size) if isinstance(size, int) else size
    return (h // p) * (w // p)


def timm_to_vitkit(state: dict[str, torch.Tensor], cfg: ViTConfig, source: str) -> tuple[dict, list[str]]:
    """(our state dict, ignored keys). Names are shared; MAE decoder keys are ignored, anything else must match."""
    ignored = sorted(k for k in state if IGNORABLE.match(k))
    out = {k: v for k, v in state.items() if k not in ignored}
    check_state(out, cfg, source)
    return out, ignored


def vitkit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in timm's layout: the same names and shapes (contiguous CPU copies)."""
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def timm_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """Keyword arguments of ``timm.models.vision_transformer.VisionTransformer`` that rebuild ``cfg``."""
    if cfg.pos_embed == "sincos2d":
        raise ValueError("timm's VisionTransformer has no fixed sin-cos position embedding; cannot express this model")
    args = dict(img_size=cfg.image_size if isinstance(cfg.image_size, int) else list(cfg.image_size),
                patch_size=cfg.patch_size, in_chans=cfg.channels, num_classes=cfg.num_classes,
                embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, class_token=cfg.class_token, reg_tokens=cfg.reg_tokens,
                no_embed_class=not cfg.pos_embed_prefix, global_pool="avg" if cfg.pooling == "gap" else "token",
                fc_norm=cfg.use_fc_norm, init_values=cfg.layer_scale_init,
                pos_embed="none" if cfg.pos_embed == "none" else "learn")
    if cfg.qkv_bias_parts == "qv":
        raise ValueError("timm's VisionTransformer has biases on all of q, k and v or on none; cannot express "
                         "qkv_bias='qv'")
    if not cfg.patch_bias:
        raise ValueError("timm's VisionTransformer always has a patch-embedding bias; cannot express patch_bias=False")
    if cfg.representation_size:
        raise ValueError("timm's VisionTransformer no longer builds a pre-logits layer; cannot express "
                         "representation_size")
    if cfg.act != "gelu" or cfg.norm_eps != 1e-6:
        raise ValueError(f"timm's VisionTransformer uses exact GELU and LayerNorm eps 1e-6 by name; this model has "
                         f"act={cfg.act!r}, norm_eps={cfg.norm_eps}: save as vitkit or hf instead")
    return args
