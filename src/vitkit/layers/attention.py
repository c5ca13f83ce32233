"""Multi-head self-attention with a fused (SDPA) path and a plain path that returns the weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig

ATTENTION_IMPLS = ("fused", "plain")


class Attention(nn.Module):
    """MSA with one fused qkv Linear (q, then k, then v along the output).

    Options from the config: q/k/v biases (``qkv_bias``: all three in ``qkv.bias``, or BEiT's q and v
    only, as ``q_bias``/``v_bias``), LayerNorm per head on q and k (``qk_norm``), and BEiT's per-block
    relative position table (``rel_pos="per_block"``), which the model's
    :class:`~vitkit.layers.rel_pos.RelPosBias` turns into the additive ``bias`` this module takes.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        bias = cfg.qkv_bias_parts
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=bias == "qkv")
        # BEiT: learned q and v biases, none for k (a k bias shifts every logit of a query alike: softmax ignores it)
        self.q_bias = nn.Parameter(torch.zeros(cfg.width)) if bias == "qv" else None
        self.v_bias = nn.Parameter(torch.zeros(cfg.width)) if bias == "qv" else None
        self.q_norm = nn.LayerNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        # BEiT's table for this block, (rows, heads) under timm's name; the model's RelPosBias looks it up
        self.relative_position_bias_table = (nn.Parameter(torch.zeros(cfg.rel_pos_rows, cfg.heads))
                                             if cfg.rel_pos == "per_block" else None)
        self.attn_drop = cfg.attn_dropout
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, impl: str = "fused", queries: int | None = None,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, D) -> (out (B, Q, D), attention probabilities (B, heads, Q, N) or None).

        ``impl="fused"`` runs F.scaled_dot_product_attention (flash / memory-efficient
        kernels; no (N, N) tensor is kept) and returns None for the weights.
        ``impl="plain"`` computes softmax(QKᵀ/√d + bias)V explicitly and returns the weights.
        ``queries``: only the first Q tokens ask (all N are still attended to); None = Q = N.
        ``bias``: added to the attention logits, (heads, N, N) or (heads, Q, N), the same for every
        image of the batch (BEiT's relative position bias); with ``queries`` its first Q rows are used.
        """
        B, N, D = x.shape
        qkv = self.qkv(x)  # (B, N, 3D)
        if self.q_bias is not None:
            qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = qkv.reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if queries is not None:
            q = q[:, :, :queries]  # (B, heads, Q, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)  # each (B, heads, Q or N, head_dim)
        if bias is not None:
            bias = bias[:, : q.shape[2]].to(q.dtype)  # (heads, Q, N): the rows of the tokens that ask
        p_drop = self.attn_drop if self.training else 0.0
        if impl == "fused":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop)
            weights = None
        elif impl == "plain":
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, Q, N)
            if bias is not None:
                attn = attn + bias
            weights = attn.softmax(dim=-1)
            out = F.dropout(weights, p_drop, self.training) @ v  # (B, heads, Q, head_dim)
        else:
            raise ValueError(f"unknown attention implementation {impl!r}; accepted: {ATTENTION_IMPLS}")
        out = out.transpose(1, 2).reshape(B, q.shape[2], D)
        return self.proj_drop(self.proj(out)), weights
