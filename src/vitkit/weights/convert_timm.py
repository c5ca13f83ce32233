"""timm ``VisionTransformer`` and ``Beit`` state dicts <-> vitkit.

vitkit's parameter names are timm's (DESIGN.md, "Checkpoint layouts"), so the
conversion is the identity on names but for BEiT's LayerScale (timm's ``Beit``
stores ``blocks.i.gamma_1``/``gamma_2``, vitkit ``blocks.i.ls1.gamma``/``ls2.gamma``);
the work is inferring the architecture from the tensors and checking every key.
A BEiT file is told by its content: ``attn.q_bias``/``v_bias`` (q and v biases, no
k bias), ``relative_position_bias_table`` (per block, or shared at ``rel_pos_bias.``),
``gamma_1``. What a state dict cannot tell (number of heads without a relative
position table, pooling without fc_norm, eps, activation) comes from ``hints``: a
timm hub ``config.json`` (``model_args``, ``architecture``), or the caller.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import VARIANTS, ViTConfig, hybrid_stride, parse_model_name
from .checks import check_state, need, refuse_unbuilt_family, square_side

# wrappers that training scripts put around the state dict (DeiT/MAE: {'model': ...})
WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")
# keys of MAE pre-training checkpoints that belong to the decoder, not the encoder
IGNORABLE = re.compile(r"^(decoder_|decoder\.|mask_token$)")
# derived buffers that older timm and BEiT files hold: recomputed, as timm's checkpoint_filter_fn drops them
DERIVED = re.compile(r"(^|\.)relative_position_index$")
TABLE, SHARED_TABLE = "blocks.0.attn.relative_position_bias_table", "rel_pos_bias.relative_position_bias_table"
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
    refuse_unbuilt_family(state, source)  # EVA-02, SwiGLU, SigLIP, CLIP: their family named, not keys listed
    table = state.get(TABLE, state.get(SHARED_TABLE))
    if TABLE in state and SHARED_TABLE in state:
        raise ValueError(f"{source}: relative position tables both per block and shared; vitkit builds one or "
                         "the other")
    if table is not None:  # BEiT's table stores the head count
        if table.ndim != 2:
            raise ValueError(f"{source}: a relative position table must be (rows, heads), got {tuple(table.shape)}")
        if hints.get("heads") and int(hints["heads"]) != table.shape[1]:
            raise ValueError(f"{source}: heads={hints['heads']} given, but the relative position table has "
                             f"{table.shape[1]} columns, one per head")
        hints["heads"] = table.shape[1]
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
    stem = hybrid_stem(state, source)  # {} for the patch stem
    if stem:
        channels = stem.pop("channels")
    # pixels per token side: the patch, times the hybrid CNN's stride
    s = p * hybrid_stride(stem["hybrid_layers"]) if stem else p
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ValueError(f"{source}: no 'blocks.N.' tensors; not a timm ViT state dict")
    fc1 = need(state, "blocks.0.mlp.fc1.weight", source, (None, width))
    cls, dist = "cls_token" in state, "dist_token" in state
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    n_prefix = int(cls) + int(dist) + reg
    has_fc_norm = "fc_norm.weight" in state
    attn_pool = "attn_pool.latent" in state  # SigLIP's MAP head (timm's AttentionPoolLatent)
    if attn_pool and hints.get("pooling") not in (None, "map"):
        raise ValueError(f"{source}: the file has an attention-pooling head (attn_pool.); pooling="
                         f"{hints['pooling']!r} cannot read it")
    if not attn_pool and hints.get("pooling") == "map":
        raise ValueError(f"{source}: pooling='map' needs an attention-pooling head (attn_pool.* tensors, SigLIP); "
                         "this file has none")
    pooling = "map" if attn_pool else hints.get("pooling") or ("gap" if has_fc_norm or not cls else "cls")
    if "pooling" not in hints:
        notes.append(f"{source}: pooling {pooling!r} (" + ("attn_pool present" if attn_pool else "fc_norm present"
                     if has_fc_norm else "no [CLS] token" if not cls
                     else "a [CLS] token and no fc_norm, as every timm ViT that pools [CLS]") + ")")
    norm_pre = "norm_pre.weight" in state  # CLIP's vision tower: every timm CLIP tower's LayerNorms use eps 1e-5
    if norm_pre and "norm_eps" not in hints:
        notes.append(f"{source}: LayerNorm eps 1e-5 (norm_pre present: timm's CLIP towers; norm_eps= if not)")
    if "heads" not in hints and width in KNOWN_HEADS:
        notes.append(f"{source}: {KNOWN_HEADS[width]} heads, those of every published ViT of width {width} "
                     "(a state dict does not store them; heads=N if yours differ)")
    kw: dict[str, Any] = dict(
        patch_size=p, channels=channels, width=width, depth=depth, heads=_heads(width, depth, hints, source),
        mlp_ratio=fc1.shape[0] / width,
        qkv_bias="qv" if "blocks.0.attn.q_bias" in state else "blocks.0.attn.qkv.bias" in state,
        rel_pos="none" if table is None else "per_block" if TABLE in state else "shared",
        qk_norm={"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= set(state), pooling=pooling,
        class_token=cls, reg_tokens=reg, distilled=dist, patch_bias="patch_embed.proj.bias" in state,
        # the init value is not stored: timm's ViTs 1e-5, BEiT-B's 0.1 (it only matters for a fresh model)
        layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else 0.1 if "blocks.0.gamma_1" in state else None,
        fc_norm=has_fc_norm if (has_fc_norm or pooling == "gap") else None,
        representation_size=state["pre_logits.fc.weight"].shape[0] if "pre_logits.fc.weight" in state else None,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        norm_pre=norm_pre, norm_eps=hints.get("norm_eps", 1e-5 if norm_pre else 1e-6),
        act=hints.get("act", "gelu"), labels=hints.get("labels"), **stem,
    )
    if "pos_embed" in state:
        rows = state["pos_embed"].shape[1]
        size = hints.get("image_size")
        if size is not None:  # the grid is known: decide whether prefix tokens have rows
            gh, gw = (size, size) if isinstance(size, int) else tuple(size)
            n = (gh // s) * (gw // s)
            if rows not in (n, n + n_prefix):
                raise ValueError(f"{source}: pos_embed has {rows} rows; a {gh}x{gw} image at token stride {s} "
                                 f"has {n} patches (+{n_prefix} prefix tokens)")
            kw.update(image_size=(gh, gw), pos_embed_prefix=rows == n + n_prefix and n_prefix > 0)
        elif n_prefix and (side := square_side(rows - n_prefix)) is not None:
            kw.update(image_size=side * s, pos_embed_prefix=True)
        elif requested_size is not None and rows in (n := _patches(requested_size, s), n + n_prefix):
            # e.g. timm img_size=(224, 256): 14*16 + 1 = 225 rows would also read as a 15x15 grid without
            # a [CLS] row; the caller's size settles it
            kw.update(image_size=requested_size, pos_embed_prefix=rows == n + n_prefix and n_prefix > 0)
        elif (side := square_side(rows)) is not None:
            kw.update(image_size=side * s, pos_embed_prefix=False)
        else:
            raise ValueError(f"{source}: pos_embed has {rows} rows, not a square grid (+{n_prefix} prefix tokens); "
                             "pass the checkpoint's own image_size=(H, W) (CLI: --image-size H W)")
    elif table is not None:
        kw.update(pos_embed="none", image_size=_rel_pos_size(table.shape[0], s, hints.get("image_size"),
                                                              requested_size, source))
    else:
        kw.update(pos_embed="none", image_size=hints.get("image_size") or 224)
    if kw["labels"] is not None and len(kw["labels"]) != kw["num_classes"]:
        kw["labels"] = None
    try:
        return ViTConfig(**kw)
    except ValueError as e:
        if "pooling" in hints and "pooling" in str(e):  # the caller's override is what cannot be
            raise ValueError(f"{source}: pooling={hints['pooling']!r} (--pooling) does not fit this file: {e}") from None
        raise ValueError(f"{source}: the tensors describe an impossible ViT: {e}") from None


HYBRID = "patch_embed.backbone."


def hybrid_stem(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The ViTConfig fields of a hybrid's ResNet-v2 under ``patch_embed.backbone.`` (timm's
    ``vision_transformer_hybrid``), {} without one: stage depths from the ``stages.N.blocks.M`` keys, the width
    and the image channels from the root conv (``stem.conv``, or ``conv`` for a stem without stages)."""
    keys = [k[len(HYBRID):] for k in state if k.startswith(HYBRID)]
    if not keys:
        return {}
    root = HYBRID + ("stem.conv.weight" if any(k.startswith("stem.") for k in keys) else "conv.weight")
    if "stem.conv.weight" not in keys and "conv.weight" not in keys:
        shown = sorted(HYBRID + k for k in keys)
        raise ValueError(f"{source}: a checkpoint of a hybrid CNN-ViT with another CNN than ResNet-v2 (timm's "
                         f"vit_*_resnet*d_*), which vitkit does not build; the keys that show it: {shown[:3]}. "
                         "vitkit builds the ResNet-v2 hybrids (vit_*_r26/r50_*: a root conv at "
                         f"{HYBRID}stem.conv)")
    conv = need(state, root, source, (None, None, 7, 7))
    blocks: dict[int, set[int]] = {}
    for k in keys:
        if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(len(blocks.get(i, ())) for i in range(len(blocks)))
    if blocks and (sorted(blocks) != list(range(len(blocks))) or 0 in layers):
        raise ValueError(f"{source}: the hybrid's stages are not numbered 0..N-1: {sorted(blocks)}")
    return dict(stem="hybrid", hybrid_layers=layers, hybrid_width=conv.shape[0], channels=conv.shape[1])


def _rel_pos_size(rows: int, p: int, size: int | tuple[int, int] | None,
                  requested: int | tuple[int, int] | None, source: str) -> int | tuple[int, int]:
    """The image size of a relative position table of ``rows`` = (2gh-1)(2gw-1) + 3: the checkpoint's own
    ``size`` when it says (checked), a square grid, or else the ``requested`` size when the table fits it."""
    def fits(size: int | tuple[int, int]) -> bool:
        gh, gw = (size, size) if isinstance(size, int) else tuple(size)
        return (2 * (gh // p) - 1) * (2 * (gw // p) - 1) + 3 == rows

    if size is not None:
        if not fits(size):
            raise ValueError(f"{source}: the relative position table has {rows} rows, not those of a {size} image "
                             f"at patch {p}")
        return size
    side = square_side(rows - 3)
    if side is not None and side % 2:
        return (side + 1) // 2 * p
    if requested is not None and fits(requested):
        return requested
    raise ValueError(f"{source}: the relative position table has {rows} rows, not (2g-1)² + 3 for a square grid; "
                     "pass the checkpoint's own image_size=(H, W) (CLI: --image-size H W)")


def _patches(size: int | tuple[int, int], p: int) -> int:
    h, w = (size, size) if isinstance(size, int) else size
    return (h // p) * (w // p)


def timm_to_vitkit(state: dict[str, torch.Tensor], cfg: ViTConfig, source: str) -> tuple[dict, list[str]]:
    """(our state dict, ignored keys). Names are shared but BEiT's gamma_1/gamma_2; MAE decoder keys and stored
    relative position indices are ignored, anything else must match."""
    ignored = sorted(k for k in state if IGNORABLE.match(k) or DERIVED.search(k))
    out = {re.sub(r"^(blocks\.\d+\.)gamma_([12])$", r"\1ls\2.gamma", k): v for k, v in state.items()
           if k not in ignored}
    check_state(out, cfg, source)
    return out, ignored


def vitkit_to_timm(state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Our state dict in timm's layout (contiguous CPU copies): the same names and shapes, LayerScale as
    ``gamma_1``/``gamma_2`` for BEiT blocks (``cfg.is_beit``: timm builds them as ``Beit``)."""
    rename = (lambda k: re.sub(r"^(blocks\.\d+\.)ls([12])\.gamma$", r"\1gamma_\2", k)) if cfg.is_beit else str
    return {rename(k): v.detach().cpu().contiguous() for k, v in state.items()}


def timm_model_args(cfg: ViTConfig) -> dict[str, Any]:
    """Keyword arguments of the timm class that rebuilds ``cfg``: ``timm.models.beit.Beit`` for BEiT blocks
    (``cfg.is_beit``), else ``timm.models.vision_transformer.VisionTransformer``; ValueError naming what timm
    cannot express."""
    beit = cfg.is_beit
    name = "Beit" if beit else "VisionTransformer"
    problems = [why for bad, why in (
        (cfg.pos_embed == "sincos2d", "a fixed sin-cos position embedding"),
        (cfg.patch_bias == cfg.norm_pre, f"patch_bias={cfg.patch_bias} with norm_pre={cfg.norm_pre} (timm has a "
                                         "patch-embedding bias exactly when it has no norm_pre)"),
        (cfg.representation_size, "representation_size (timm no longer builds a pre-logits layer)"),
        (cfg.act != "gelu" or cfg.norm_eps != (1e-5 if cfg.norm_pre else 1e-6),
         f"act={cfg.act!r}, norm_eps={cfg.norm_eps} (timm uses exact GELU and LayerNorm eps 1e-6 by name, "
         "1e-5 for its CLIP towers)"),
        (beit and (cfg.norm_pre or cfg.pooling == "map"), "norm_pre or an attention pool in BEiT's blocks"),
        (not beit and cfg.qkv_bias_parts == "qv", "qkv_bias='qv'"),
        (beit and cfg.qkv_bias_parts == "qkv", "a k bias (Beit has q and v biases, or none)"),
        (beit and (not cfg.class_token or cfg.reg_tokens or cfg.distilled), "prefix tokens other than one [CLS]"),
        (beit and cfg.pos_embed == "learned" and not cfg.pos_embed_prefix, "a patch-only position embedding"),
        (beit and cfg.qk_norm, "qk-norm"),
        (cfg.stem == "hybrid", "a hybrid CNN stem in a hub folder (timm builds the ResNet in code, from the "
                               "architecture name alone: save a .safetensors or .pth file instead)")) if bad]
    if problems:
        raise ValueError(f"timm's {name} cannot express {'; '.join(problems)}; save it as vitkit instead")
    args = dict(img_size=cfg.image_size if isinstance(cfg.image_size, int) else list(cfg.image_size),
                patch_size=cfg.patch_size, in_chans=cfg.channels, num_classes=cfg.num_classes,
                embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                global_pool={"gap": "avg", "map": "map"}.get(cfg.pooling, "token"), init_values=cfg.layer_scale_init)
    if beit:
        return dict(args, qkv_bias=cfg.qkv_bias_parts == "qv", use_abs_pos_emb=cfg.pos_embed == "learned",
                    use_rel_pos_bias=cfg.rel_pos == "per_block", use_shared_rel_pos_bias=cfg.rel_pos == "shared",
                    use_fc_norm=cfg.use_fc_norm)
    return dict(args, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, class_token=cfg.class_token,
                reg_tokens=cfg.reg_tokens, no_embed_class=not cfg.pos_embed_prefix, fc_norm=cfg.use_fc_norm,
                pos_embed="none" if cfg.pos_embed == "none" else "learn", pre_norm=cfg.norm_pre)
