"""Exponential moving average of a model's weights (evaluated alongside the model)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """ema = d * ema + (1 - d) * weights after every optimizer step, with a warm-up
    d_t = min(decay, (1 + t) / (10 + t)) so short runs are not dominated by the initial weights.
    Buffers are copied. The EMA model lives on the same device, in eval mode, without gradients."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = dict(model.named_parameters())
        for name, p in self.module.named_parameters():
            p.lerp_(src[name].detach().to(p.dtype), 1.0 - d)
        src_b = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            b.copy_(src_b[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay,
                "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["model"])
