"""Per-image training augmentation and the evaluation transform.

Each training image is transformed with its own seed (``vitkit.data.datasets.sample_seed``:
run seed, epoch, index), so the result is the same whatever the worker count, the batch
position or a resumption. Order: random affine (rotation, shift, zoom) -> horizontal flip ->
torchvision RandAugment -> normalise -> torchvision RandomErasing. torchvision's transforms
draw from torch's global generator; they run inside ``torch.random.fork_rng`` seeded per
image, so the training loop's generator (dropout, stochastic depth) is left untouched.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import TrainConfig, parse_randaugment

MEAN, STD = 0.5, 0.5  # from-scratch default: inputs in [0, 1] -> [-1, 1]; saved with the model's PreprocessConfig


def normalize(x: torch.Tensor, mean: float | Sequence[float] = MEAN, std: float | Sequence[float] = STD) -> torch.Tensor:
    """(x - mean) / std per channel of a (..., C, H, W) tensor in [0, 1] (the model's PreprocessConfig values;
    a fine-tuned checkpoint keeps its own, e.g. ImageNet's)."""
    if not isinstance(mean, (int, float)):
        if len(set(mean)) == 1 and len(set(std)) == 1:  # one value for every channel: the scalar form
            mean, std = mean[0], std[0]
        else:
            mean = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
            std = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def random_affine(x: torch.Tensor, g: torch.Generator, rotate: float, translate: float, scale: float) -> torch.Tensor:
    """One (C, H, W) image rotated by up to ±``rotate`` degrees, shifted by up to ±``translate`` of
    its side and zoomed by 1 ± ``scale``; outside pixels are 0 (black)."""
    angle = (float(torch.rand((), generator=g)) * 2 - 1) * math.radians(rotate)
    zoom = 1 + (float(torch.rand((), generator=g)) * 2 - 1) * scale
    tx, ty = ((torch.rand(2, generator=g) * 2 - 1) * 2 * translate).tolist()  # grid spans [-1, 1]: side = 2
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[c, -s, tx], [s, c, ty]]], dtype=x.dtype)  # output -> input coordinates
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None], grid, align_corners=False, padding_mode="zeros")[0]


def random_resized_crop_params(height: int, width: int, scale: tuple[float, float], g: torch.Generator,
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with an aspect ratio in ``ratio``
    (log-uniform), drawn from ``g``: torchvision's RandomResizedCrop rule (10 tries, then the centre crop
    of the nearest allowed ratio), with an explicit generator so a resumed run crops the same."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + float(torch.rand((), generator=g)) * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + float(torch.rand((), generator=g)) * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
                        g: torch.Generator) -> torch.Tensor:
    """A (C, H, W) image cropped as :func:`random_resized_crop_params` draws and resized (bilinear,
    antialiased) to ``size``."""
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = random_resized_crop_params(x.shape[-2], x.shape[-1], scale, g)
    return TF.resized_crop(x, top, left, h, w, list(size), antialias=True)


class CropFlipTransform:
    """MAE's view: ``(x (C, H, W) in [0, 1], seed) -> normalised`` random resized crop (area ``scale``) back to
    ``size``, and a horizontal flip with probability ``hflip`` (0 for digits and text)."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], hflip: float,
                 mean: Sequence[float] = (MEAN,), std: Sequence[float] = (STD,)):
        self.size, self.scale, self.hflip = tuple(size), tuple(scale), hflip
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = random_resized_crop(x, self.size, self.scale, g)
        if self.hflip and float(torch.rand((), generator=g)) < self.hflip:
            x = x.flip(-1)
        return normalize(x.clamp(0, 1), self.mean, self.std)


class TrainTransform:
    """``(x (C, H, W) in [0, 1], seed) -> normalised augmented (C, H, W)`` as set by a TrainConfig."""

    def __init__(self, cfg: TrainConfig, mean: Sequence[float] = (MEAN,), std: Sequence[float] = (STD,)):
        self.mean, self.std = tuple(mean), tuple(std)
        self.rotate, self.translate, self.scale, self.hflip = cfg.rotate, cfg.translate, cfg.scale, cfg.hflip
        self.randaugment = None
        if cfg.randaugment:
            from torchvision.transforms import v2

            n, m = parse_randaugment(cfg.randaugment)
            self.randaugment = v2.RandAugment(num_ops=n, magnitude=m)
        self.erasing = None
        if cfg.random_erasing > 0:
            from torchvision.transforms import v2

            self.erasing = v2.RandomErasing(p=cfg.random_erasing, value="random")

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.rotate or self.translate or self.scale:
            x = random_affine(x, g, self.rotate, self.translate, self.scale)
        if self.hflip and float(torch.rand((), generator=g)) < self.hflip:
            x = x.flip(-1)
        if self.randaugment is not None or self.erasing is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if self.randaugment is not None:  # works on uint8 images
                    x = self.randaugment((x * 255).round().clamp(0, 255).to(torch.uint8)).float() / 255
                x = normalize(x, self.mean, self.std)
                if self.erasing is not None:
                    x = self.erasing(x)
            return x
        return normalize(x, self.mean, self.std)


class EvalTransform:
    """``(x (C, H, W) in [0, 1], seed) -> normalised (C, H, W)``: no augmentation."""

    def __init__(self, mean: Sequence[float] = (MEAN,), std: Sequence[float] = (STD,)):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        return normalize(x, self.mean, self.std)
