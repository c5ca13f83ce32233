"""Optimizer parameter groups (no decay on norms/biases/tokens, layer-wise lr decay) and the
warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 = embeddings, tokens and a shared relative position
    table (as timm groups BEiT's), i+1 = block i, depth+1 = final norm and head(s)."""
    if name.startswith(("patch_embed.", "cls_token", "dist_token", "reg_token", "pos_embed", "rel_pos_bias.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW/SGD groups: weight decay only on matrices that are not tokens/position embeddings;
    with ``layer_decay`` d, block i's lr is scaled by d**(depth - i) and the embeddings' by d**(depth+1).

    Each group carries ``lr_scale`` (applied by :class:`WarmupCosine`) and the parameter ``names``.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or name.split(".")[0] in skip
        lid = layer_id(name, depth) if layer_decay is not None else 0
        scale = layer_decay ** (depth + 1 - lid) if layer_decay is not None else 1.0
        key = (lid, no_decay)
        g = groups.setdefault(key, {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                    "lr_scale": scale})
        g["params"].append(p)
        g["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, layer_decay: float | None = None,
                    momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with Nesterov momentum over :func:`param_groups`."""
    groups = param_groups(model, weight_decay, layer_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}; accepted: adamw, sgd")


class WarmupCosine:
    """lr(step) = peak * (step+1)/warmup during warm-up, then a cosine from peak to ``min_lr`` at
    ``total`` steps. Stateless apart from the step counter (``state_dict`` holds it), so a
    resumed run gets exactly the same learning rates."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak: float, total: int, warmup: int, min_lr: float = 0.0):
        self.optimizer, self.peak, self.total, self.min_lr = optimizer, peak, max(1, total), min_lr
        self.warmup = max(0, min(warmup, self.total))
        self.step_count = 0
        self.apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))

    def apply(self) -> float:
        lr = self.lr_at(self.step_count)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def step(self) -> float:
        """Advance one optimizer step and set the groups' lr for the next one."""
        self.step_count += 1
        return self.apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "peak": self.peak, "total": self.total, "warmup": self.warmup,
                "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.apply()
