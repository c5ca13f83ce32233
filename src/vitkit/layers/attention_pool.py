"""SigLIP's attention-pooling head (big_vision's MAP head, timm's ``AttentionPoolLatent``): one learned query
attends over the patch tokens, then a residual MLP on its pre-norm.

Parameter names are timm's (``attn_pool.latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp.fc1``/``fc2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig
from .mlp import Mlp


class AttentionPool(nn.Module):
    """Tokens (B, N, D) -> (B, D): softmax(q(latent)·k(x)ᵀ/√d)·v(x), projected, then + MLP(LN(·))."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.width
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, d))  # the learned query (timm: latent_len 1)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)  # k, then v along the output
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self.q(self.latent).reshape(1, 1, self.heads, self.head_dim).transpose(1, 2)  # (1, heads, 1, hd)
        k, v = self.kv(x).reshape(B, N, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q.expand(B, -1, -1, -1), k, v)  # (B, heads, 1, head_dim)
        out = self.proj(out.transpose(1, 2).reshape(B, 1, D))
        out = out + self.mlp(self.norm(out))
        return out[:, 0]  # (B, D)
