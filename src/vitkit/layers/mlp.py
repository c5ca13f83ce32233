"""The transformer MLP: Linear -> GELU -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ViTConfig


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        # exact erf GELU in the PyTorch ports; the JAX original uses the tanh approximation
        self.act = nn.GELU(approximate="tanh" if cfg.act == "gelu_tanh" else "none")
        self.drop1 = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)
        self.drop2 = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
