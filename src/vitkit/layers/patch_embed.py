"""Patch embedding: cut the image into P×P patches and project each to width D."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig


class PatchEmbed(nn.Module):
    """A strided conv, which is the same as flatten-each-patch + Linear."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.channels = cfg.channels
        self.image_hw = cfg.image_hw
        self.grid_size = cfg.grid_size
        self.dynamic_img_size = cfg.dynamic_img_size
        self.dynamic_img_pad = cfg.dynamic_img_pad
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.channels, cfg.width, kernel_size=p, stride=p, bias=cfg.patch_bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that names the problem for a batch this model cannot take."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image batch tensor (B, C, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got a tensor of shape {tuple(x.shape)}"
                             + ("; add a batch dimension with x[None]" if x.ndim == 3 else ""))
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image tensor, got {x.dtype}; "
                             "convert and normalise images first (vitkit.preprocess)")
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} input channels (B, {self.channels}, H, W), "
                             f"got {x.shape[1]} in a tensor of shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if not self.dynamic_img_size and (h, w) != self.image_hw:
            raise ValueError(f"input size {h}x{w} does not match the model's image size "
                             f"{self.image_hw[0]}x{self.image_hw[1]}; build the model at that size "
                             "(image_size=...) or with dynamic_img_size=True")
        if not self.dynamic_img_pad and (h % p or w % p):
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {p}; use a multiple "
                             f"of {p} (e.g. {max(p, h // p * p)}x{max(p, w // p * p)}) or dynamic_img_pad=True")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, gh*gw, D) and the grid (gh, gw)."""
        self.check_input(x)
        if self.dynamic_img_pad:
            p = self.patch_size
            pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros on the right and bottom
        x = self.proj(x)  # (B, D, gh, gw)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, gh*gw, D)
