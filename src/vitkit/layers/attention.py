"""Multi-head self-attention with a fused (SDPA) path and a plain path that returns the weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig

ATTENTION_IMPLS = ("fused", "plain")


class Attention(nn.Module):
    """MSA with one fused qkv Linear (q, then k, then v along the output)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.attn_drop = cfg.attn_dropout
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.proj_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, impl: str = "fused",
                queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, D) -> (out (B, Q, D), attention probabilities (B, heads, Q, N) or None).

        ``impl="fused"`` runs F.scaled_dot_product_attention (flash / memory-efficient
        kernels; no (N, N) tensor is kept) and returns None for the weights.
        ``impl="plain"`` computes softmax(QKᵀ/√d)V explicitly and returns the weights.
        ``queries``: only the first Q tokens ask (all N are still attended to); None = Q = N.
        """
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if queries is not None:
            q = q[:, :, :queries]  # (B, heads, Q, head_dim)
        p_drop = self.attn_drop if self.training else 0.0
        if impl == "fused":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop)
            weights = None
        elif impl == "plain":
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, Q, N)
            weights = attn.softmax(dim=-1)
            out = F.dropout(weights, p_drop, self.training) @ v  # (B, heads, Q, head_dim)
        else:
            raise ValueError(f"unknown attention implementation {impl!r}; accepted: {ATTENTION_IMPLS}")
        out = out.transpose(1, 2).reshape(B, q.shape[2], D)
        return self.proj_drop(self.proj(out)), weights
