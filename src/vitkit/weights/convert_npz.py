"""Google JAX/Flax ``.npz`` checkpoints (google-research/vision_transformer and big_vision) <-> vitkit.

Original vision_transformer naming (per block ``i``; ``{b}`` = ``Transformer/encoderblock_i/``):

    embedding/kernel (P, P, C, D) HWIO           -> patch_embed.proj.weight (D, C, P, P)
    cls (1, 1, D)                                -> cls_token
    Transformer/posembed_input/pos_embedding (1, 1+N, D) -> pos_embed
    {b}LayerNorm_0/{scale,bias}                  -> blocks.i.norm1
    {b}MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, heads, hd), bias (heads, hd)
                                                 -> blocks.i.attn.qkv (3D, D) = [q; k; v] of kernel.reshape(D, D).T
    {b}MultiHeadDotProductAttention_1/out/kernel (heads, hd, D) -> blocks.i.attn.proj = kernel.reshape(D, D).T
    {b}LayerNorm_2                               -> blocks.i.norm2
    {b}MlpBlock_3/Dense_{0,1}/kernel (in, out)    -> blocks.i.mlp.fc{1,2}.weight (out, in)
    Transformer/encoder_norm                     -> norm
    pre_logits/{kernel,bias}                     -> pre_logits.fc
    head/kernel (D, classes)                     -> head

big_vision (``params/`` prefix): ``pos_embedding`` (1, N, D) at the top level for
patches only (the [CLS] is joined afterwards), ``MultiHeadDotProductAttention_0``,
``LayerNorm_1``, ``MlpBlock_0``; scanned models stack every block's tensors in
``Transformer/encoderblock/...`` along a leading depth axis.

JAX's ``nn.gelu`` is the tanh approximation and flax's LayerNorm eps 1e-6: foreign
npz files load with ``act="gelu_tanh"`` unless told otherwise. Files written by
vitkit carry their exact config in a ``vitkit/config`` entry (UTF-8 JSON bytes),
which other readers ignore.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import torch

from ..config import ViTConfig, hybrid_stride
from .checks import check_state, square_side
from .npz_hybrid import npz_stem, stem_to_npz

CONFIG_KEY = "vitkit/config"
PREPROCESS_KEY = "vitkit/preprocess"  # vitkit's PreprocessConfig as JSON bytes, when the writer had one
PREFIXES = ("opt/target/", "params/img/", "params/", "")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))  # in the file's dtype: the loader casts, and says so


def npz_to_vitkit(arrays: dict[str, np.ndarray], file: str, hints: dict[str, Any] | None = None
                  ) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """(config, our state dict) from the arrays of a Google-style npz; every array must be used."""
    hints = dict(hints or {})
    own = None
    if CONFIG_KEY in arrays:
        try:
            own = ViTConfig.from_dict(json.loads(bytes(arrays[CONFIG_KEY].astype(np.uint8)).decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: entry {CONFIG_KEY!r} is not a valid vitkit config: {e}") from None
    pre = next((p for p in PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if pre is None:
        raise ValueError(f"{file}: no 'embedding/kernel' (with or without a {PREFIXES[:-1]} prefix); "
                         "not a ViT npz checkpoint")
    used = {CONFIG_KEY, PREPROCESS_KEY}

    def take(key: str, idx: int | None = None) -> np.ndarray:
        k = pre + key
        if k not in arrays:
            raise ValueError(f"{file}: required array {k!r} is missing")
        used.add(k)
        a = arrays[k]
        return a[idx] if idx is not None else a

    big_vision = pre.startswith("params/") or f"{pre}pos_embedding" in arrays
    scanned = f"{pre}Transformer/encoderblock/LayerNorm_0/scale" in arrays
    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    if any(k.startswith(f"{pre}MAPHead_0/") for k in arrays):
        raise ValueError(f"{file}: attention-pooling (MAP head) models are not plain ViTs; not supported")

    kernel = take("embedding/kernel")  # (P, P, C, D)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"{file}: embedding/kernel must be (P, P, C, D), got {kernel.shape}")
    p, _, c, d = kernel.shape
    stem, stem_state = npz_stem(arrays, pre, take)  # R50+ViT-B_16.npz: conv_root, gn_root, block{i}/unit{j}/...
    if stem:
        c = stem.pop("channels")
    s = p * hybrid_stride(stem["hybrid_layers"]) if stem else p  # pixels per token side
    if scanned:
        depth = arrays[f"{pre}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
    else:
        depth = len({int(m.group(1)) for k in arrays if (m := re.match(re.escape(pre) + r"Transformer/encoderblock_(\d+)/", k))})
    if depth == 0:
        raise ValueError(f"{file}: no encoder blocks found")
    blk = lambda i: "Transformer/encoderblock/" if scanned else f"Transformer/encoderblock_{i}/"  # noqa: E731
    idx = lambda i: i if scanned else None  # noqa: E731

    q0 = take(f"{blk(0)}{mha}/query/kernel", idx(0))  # (D, heads, hd)
    if q0.ndim != 3 or q0.shape[0] != d:
        raise ValueError(f"{file}: attention query kernel must be (D, heads, head_dim), got {q0.shape}")
    heads = q0.shape[1]
    mlp_dim = take(f"{blk(0)}{mlp}/Dense_0/kernel", idx(0)).shape[-1]
    cls = f"{pre}cls" in arrays
    pos_key = "pos_embedding" if big_vision and f"{pre}pos_embedding" in arrays else "Transformer/posembed_input/pos_embedding"
    has_pos = f"{pre}{pos_key}" in arrays
    rows = arrays[f"{pre}{pos_key}"].reshape(1, -1, d).shape[1] if has_pos else 0
    state: dict[str, torch.Tensor] = {}

    if own is not None:
        cfg = own
    else:
        prefix_rows = 1 if cls and has_pos and square_side(rows) is None else 0
        if has_pos:
            size = hints.get("image_size")  # the checkpoint's own size: settles the grid and the [CLS] row
            req = hints.get("requested_size")  # the size the caller loads at: settles non-square grids
            given = size if size is not None else req
            if given is not None and (size is not None or not (prefix_rows and square_side(rows - 1))):
                rh, rw = (given, given) if isinstance(given, int) else tuple(given)
                n = (rh // s) * (rw // s)
                if rows == n or (cls and rows == n + 1):  # e.g. 4*6 + 1 = 25 rows, also a 5x5 grid
                    size, prefix_rows = (rh, rw), rows - n
            if size is None:
                side = square_side(rows - prefix_rows)
                if side is None:
                    raise ValueError(f"{file}: position embedding has {rows} rows, not a square grid; "
                                     "pass the checkpoint's own image_size=(H, W) (CLI: --image-size H W)")
                size = side * s
        else:
            size = hints.get("image_size", 224)
        n_cls = arrays[f"{pre}head/bias"].shape[-1] if f"{pre}head/bias" in arrays else 0
        rep = arrays[f"{pre}pre_logits/bias"].shape[-1] if f"{pre}pre_logits/bias" in arrays else None
        try:
            cfg = ViTConfig(image_size=size, patch_size=p, channels=c, width=d, depth=depth, heads=heads,
                            mlp_ratio=mlp_dim / d, class_token=cls, pooling=hints.get("pooling", "cls" if cls else "gap"),
                            pos_embed="learned" if has_pos else hints.get("pos_embed", "sincos2d"),
                            pos_embed_prefix=bool(prefix_rows), fc_norm=False, num_classes=n_cls,
                            representation_size=rep, norm_eps=hints.get("norm_eps", 1e-6),
                            act=hints.get("act", "gelu_tanh"), labels=hints.get("labels"), **stem)
        except ValueError as e:
            raise ValueError(f"{file}: the arrays describe an impossible ViT: {e}") from None

    state.update(stem_state)
    state["patch_embed.proj.weight"] = _t(kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    state["patch_embed.proj.bias"] = _t(take("embedding/bias"))
    if cls:
        state["cls_token"] = _t(take("cls").reshape(1, 1, d))
    if has_pos:
        state["pos_embed"] = _t(take(pos_key).reshape(1, -1, d))
    for i in range(depth):
        b, j = blk(i), idx(i)
        o = f"blocks.{i}."
        state[o + "norm1.weight"], state[o + "norm1.bias"] = (_t(take(f"{b}LayerNorm_0/{n}", j)) for n in ("scale", "bias"))
        state[o + "norm2.weight"], state[o + "norm2.bias"] = (_t(take(f"{b}{ln2}/{n}", j)) for n in ("scale", "bias"))
        # (D, heads, hd) -> (D, D) -> transposed to torch's (out, in)
        state[o + "attn.qkv.weight"] = torch.cat([_t(take(f"{b}{mha}/{n}/kernel", j).reshape(d, d).T)
                                                  for n in ("query", "key", "value")])
        state[o + "attn.qkv.bias"] = torch.cat([_t(take(f"{b}{mha}/{n}/bias", j).reshape(d))
                                                for n in ("query", "key", "value")])
        state[o + "attn.proj.weight"] = _t(take(f"{b}{mha}/out/kernel", j).reshape(d, d).T)  # (heads, hd, D)
        state[o + "attn.proj.bias"] = _t(take(f"{b}{mha}/out/bias", j))
        for r in (0, 1):
            state[o + f"mlp.fc{r + 1}.weight"] = _t(take(f"{b}{mlp}/Dense_{r}/kernel", j).T)
            state[o + f"mlp.fc{r + 1}.bias"] = _t(take(f"{b}{mlp}/Dense_{r}/bias", j))
    if f"{pre}Transformer/encoder_norm/scale" in arrays:
        key = "fc_norm" if cfg.use_fc_norm else "norm"
        state[f"{key}.weight"] = _t(take("Transformer/encoder_norm/scale"))
        state[f"{key}.bias"] = _t(take("Transformer/encoder_norm/bias"))
    if f"{pre}pre_logits/kernel" in arrays:
        state["pre_logits.fc.weight"] = _t(take("pre_logits/kernel").T)
        state["pre_logits.fc.bias"] = _t(take("pre_logits/bias"))
    if f"{pre}head/kernel" in arrays and cfg.num_classes:
        state["head.weight"] = _t(take("head/kernel").T)  # (D, classes) -> (classes, D)
        state["head.bias"] = _t(take("head/bias"))
    if scanned:  # a stacked tensor is used once per block; count it once
        used |= {k for k in arrays if k.startswith(f"{pre}Transformer/encoderblock/")}
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(f"{file}: arrays vitkit does not know how to place: {unused[:30]}")
    check_state(state, cfg, file)
    return cfg, state


def vitkit_to_npz(state: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, np.ndarray]:
    """Arrays in the original vision_transformer naming (big_vision naming when the position embedding has no
    [CLS] row), readable by timm's npz loader; plus our config under ``vitkit/config``."""
    problems = []
    if cfg.distilled or cfg.reg_tokens:
        problems.append("distillation/register tokens")
    if cfg.layer_scale_init is not None:
        problems.append("LayerScale")
    if cfg.use_fc_norm:
        problems.append("fc_norm (the npz layout has one encoder_norm before pooling)")
    if cfg.qkv_bias_parts != "qkv" or not cfg.patch_bias:
        problems.append("missing qkv/patch biases")
    if cfg.qk_norm:
        problems.append("qk-norm")
    if cfg.norm_pre or cfg.pooling == "map":
        problems.append("norm_pre or an attention-pooling head")
    if cfg.rel_pos != "none":
        problems.append("a relative position bias")
    if problems:
        raise ValueError("the Google npz layout cannot express this model: " + "; ".join(problems)
                         + ". Save it as vitkit or timm instead.")
    big_vision = cfg.pos_embed == "learned" and not cfg.pos_embed_prefix
    pre = "params/" if big_vision else ""
    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    d, h, hd = cfg.width, cfg.heads, cfg.head_dim
    n = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    out: dict[str, np.ndarray] = {}
    out.update(stem_to_npz(state, cfg, pre))  # the hybrid's ResNet-v2, if any
    out[pre + "embedding/kernel"] = n(state["patch_embed.proj.weight"]).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    out[pre + "embedding/bias"] = n(state["patch_embed.proj.bias"])
    if cfg.class_token:
        out[pre + "cls"] = n(state["cls_token"])
    if cfg.pos_embed == "learned":
        out[pre + ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding")] = n(state["pos_embed"])
    for i in range(cfg.depth):
        b, o = f"{pre}Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[b + "LayerNorm_0/scale"], out[b + "LayerNorm_0/bias"] = n(state[o + "norm1.weight"]), n(state[o + "norm1.bias"])
        out[b + f"{ln2}/scale"], out[b + f"{ln2}/bias"] = n(state[o + "norm2.weight"]), n(state[o + "norm2.bias"])
        w, bias = n(state[o + "attn.qkv.weight"]), n(state[o + "attn.qkv.bias"])  # (3D, D), (3D,)
        for j, name in enumerate(("query", "key", "value")):
            out[b + f"{mha}/{name}/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, h, hd)  # (D, heads, hd)
            out[b + f"{mha}/{name}/bias"] = bias[j * d:(j + 1) * d].reshape(h, hd)
        out[b + f"{mha}/out/kernel"] = n(state[o + "attn.proj.weight"]).T.reshape(h, hd, d)  # (heads, hd, D)
        out[b + f"{mha}/out/bias"] = n(state[o + "attn.proj.bias"])
        for r in (0, 1):
            out[b + f"{mlp}/Dense_{r}/kernel"] = n(state[o + f"mlp.fc{r + 1}.weight"]).T  # (in, out)
            out[b + f"{mlp}/Dense_{r}/bias"] = n(state[o + f"mlp.fc{r + 1}.bias"])
    out[pre + "Transformer/encoder_norm/scale"] = n(state["norm.weight"])
    out[pre + "Transformer/encoder_norm/bias"] = n(state["norm.bias"])
    if cfg.representation_size:
        out[pre + "pre_logits/kernel"] = n(state["pre_logits.fc.weight"]).T
        out[pre + "pre_logits/bias"] = n(state["pre_logits.fc.bias"])
    if cfg.num_classes:
        out[pre + "head/kernel"] = n(state["head.weight"]).T
        out[pre + "head/bias"] = n(state["head.bias"])
    out = {k: np.ascontiguousarray(v) for k, v in out.items()}
    out[CONFIG_KEY] = np.frombuffer(json.dumps(cfg.to_dict()).encode("utf-8"), dtype=np.uint8).copy()
    return out
