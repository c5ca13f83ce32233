"""Key-by-key checks shared by the converters: the exact set of missing, unexpected and misshaped tensors."""

from __future__ import annotations

import torch

from ..config import ViTConfig


def expected_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of ``VisionTransformer(cfg)``, from the sizes alone (nothing allocated,
    so a hostile config is refused before any memory is spent; tests hold it equal to the built model's)."""
    d, c, p, m, f = cfg.width, cfg.channels, cfg.patch_size, cfg.mlp_dim, cfg.num_features
    s: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (d, c, p, p)}
    if cfg.patch_bias:
        s["patch_embed.proj.bias"] = (d,)
    if cfg.class_token:
        s["cls_token"] = (1, 1, d)
    if cfg.distilled:
        s["dist_token"] = (1, 1, d)
    if cfg.reg_tokens:
        s["reg_token"] = (1, cfg.reg_tokens, d)
    if cfg.pos_embed == "learned":
        s["pos_embed"] = (1, (cfg.num_prefix_tokens if cfg.pos_embed_prefix else 0) + cfg.num_patches, d)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            s[b + n + ".weight"] = s[b + n + ".bias"] = (d,)
        s[b + "attn.qkv.weight"] = (3 * d, d)
        if cfg.qkv_bias_parts == "qkv":
            s[b + "attn.qkv.bias"] = (3 * d,)
        if cfg.qkv_bias_parts == "qv":
            s[b + "attn.q_bias"] = s[b + "attn.v_bias"] = (d,)
        if cfg.qk_norm:
            for n in ("attn.q_norm", "attn.k_norm"):
                s[b + n + ".weight"] = s[b + n + ".bias"] = (cfg.head_dim,)
        if cfg.rel_pos == "per_block":
            s[b + "attn.relative_position_bias_table"] = (cfg.rel_pos_rows, cfg.heads)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = (d, d), (d,)
        if cfg.layer_scale_init is not None:
            s[b + "ls1.gamma"] = s[b + "ls2.gamma"] = (d,)
        s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = (m, d), (m,)
        s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = (d, m), (d,)
    if cfg.rel_pos == "shared":
        s["rel_pos_bias.relative_position_bias_table"] = (cfg.rel_pos_rows, cfg.heads)
    norm = "fc_norm" if cfg.use_fc_norm else "norm"
    s[norm + ".weight"] = s[norm + ".bias"] = (d,)
    if cfg.representation_size:
        s["pre_logits.fc.weight"], s["pre_logits.fc.bias"] = (cfg.representation_size, d), (cfg.representation_size,)
    if cfg.num_classes:
        for h in ("head", "head_dist") if cfg.distilled else ("head",):
            s[h + ".weight"], s[h + ".bias"] = (cfg.num_classes, f), (cfg.num_classes,)
    return s


def check_state(state: dict[str, torch.Tensor], cfg: ViTConfig, source: str) -> None:
    """Raise ValueError listing every missing, unexpected or wrongly shaped key of ``state`` for ``cfg``."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)} != model {want[k]}"
                   for k in set(want) & set(state) if tuple(state[k].shape) != want[k])
    if missing or unexpected or wrong:
        parts = [f"{what} {keys}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                      ("wrong shapes", wrong)) if keys]
        raise ValueError(f"{source}: the weights do not fit the model they describe: " + "; ".join(parts))


def need(state: dict, key: str, source: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``state[key]``, with a clear error when it is absent or not of ``shape`` (None entries match anything)."""
    if key not in state:
        raise ValueError(f"{source}: required tensor {key!r} is missing")
    t = state[key]
    if shape is not None and (t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape))):
        raise ValueError(f"{source}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def square_side(n: int) -> int | None:
    """The side of an n = s*s grid, or None."""
    s = int(round(n ** 0.5))
    return s if s * s == n else None
