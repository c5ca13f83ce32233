"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) with soft targets, and the soft-target loss.

Both draw from an explicit ``torch.Generator`` (seeded per step by the engine), so a resumed
run mixes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def smooth_one_hot(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Labels (B,) -> soft targets (B, classes): 1 - s + s/K on the label, s/K elsewhere."""
    off = smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, device=y.device)
    return t.scatter_(1, y[:, None], 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k; logits (B, K), target (B, K)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Mixer:
    """Mixes a batch with its reverse (timm's convention): x' = lam x + (1 - lam) x.flip(0).

    ``mixup``/``cutmix`` are Beta alphas (0 = off); ``prob`` is the chance a batch is mixed;
    ``switch_prob`` the chance of CutMix when both are on. CutMix pastes a box whose area is
    1 - lam (clipped to the image) and corrects lam to the pasted area.
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1):
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, smoothing

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def _beta(self, alpha: float, g: torch.Generator) -> float:
        # Beta(a, a) from two Gammas, drawn with the generator (torch.distributions has no generator arg)
        a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=g)
        return float(a[0] / a.sum())

    def __call__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W), labels (B,) -> mixed images and soft targets (B, classes)."""
        target = smooth_one_hot(y, self.num_classes, self.smoothing)
        if not self.active or float(torch.rand((), generator=g)) >= self.prob:
            return x, target
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or float(torch.rand((), generator=g)) < self.switch_prob)
        lam = self._beta(self.cutmix if use_cutmix else self.mixup, g)
        if use_cutmix:
            H, W = x.shape[-2:]
            ratio = math.sqrt(1 - lam)
            bh, bw = int(H * ratio), int(W * ratio)
            cy, cx = int(torch.randint(0, H, (), generator=g)), int(torch.randint(0, W, (), generator=g))
            y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, H)
            x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, W)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
        else:
            x = x * lam + x.flip(0) * (1 - lam)
        return x, target * lam + target.flip(0) * (1 - lam)
