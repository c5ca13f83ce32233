"""DINO's multi-crop views (Caron et al. 2021): 2 global crops + n local crops of one image, each at its own size.

Per crop, in DINO's order (``DataAugmentationDINO`` in facebookresearch/dino ``main_dino.py``): random
resized crop (bicubic) -> horizontal flip (p 0.5) -> colour jitter (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, in a random order, p 0.8) -> grayscale (p 0.2) -> gaussian blur (p 1.0 for
the first global crop, 0.1 for the second, 0.5 for the locals; sigma uniform in (0.1, 2.0), PIL's
radius) -> solarisation (p 0.2, second global crop only) -> normalise.

Every random number is drawn from the ``torch.Generator`` given to the call, and the image operations
are torchvision's deterministic ``transforms.v2.functional`` kernels, so the crops are a pure function
of (image, generator state): the global RNG is never read, and a resumed run sees the same views.
The draws do not depend on the image's channel count; 1-channel images skip saturation, hue and
grayscale (they need 3 channels) but still consume their draws.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ..train.augment import MEAN, STD, normalize, random_resized_crop_params

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range (torchvision's and DINO's default)
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (DINO)
P_JITTER, P_GRAY, P_FLIP, P_SOLARIZE = 0.8, 0.2, 0.5, 0.2
P_BLUR = (1.0, 0.1, 0.5)  # first global, second global, every local crop
BLUR_SIGMA = (0.1, 2.0)  # DINO's GaussianBlur radius range, in pixels of the crop (set for 224 px crops)


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 1 for v in hw):
        raise ValueError(f"MultiCrop {what} must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def _scale(scale: Sequence[float], what: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"MultiCrop {what} must be (lo, hi) with 0 < lo <= hi <= 1, got {tuple(scale)!r}")
    return lo, hi


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


# RandomResizedCrop's box (top, left, h, w), every draw from a generator: the one rule of vitkit's views
crop_box = random_resized_crop_params


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    # kernel out to 3 sigma (odd), but the reflect padding must stay inside the crop
    k = 2 * math.ceil(3 * sigma) + 1
    limit = 2 * min(x.shape[-2:]) - 1
    k = min(k, limit if limit % 2 else limit - 1)
    return TF.gaussian_blur(x, [k, k], [sigma, sigma]) if k >= 3 else x


class MultiCrop:
    """``(img (C, H, W) float in [0, 1], generator | seed) -> [2 global crops, n_local local crops]``,
    each normalised (C, h, w): the globals at ``global_size``, the locals at ``local_size``.

    ``colour=False`` turns off jitter, grayscale and solarisation (flip, crop and blur stay).
    ``blur_sigma``: the blur's sigma range in pixels; DINO's (0.1, 2.0) is meant for 224 px crops.
    ``hflip``: the flip's probability (DINO 0.5; 0 for digits and text, as ``vitkit train``'s default).
    ``n_global``: 2 as DINO (1 is accepted for a single global view).
    A seed (int) is turned into ``torch.Generator().manual_seed(seed)``: the ``transform(x, seed)``
    form that ``vitkit.data.datasets.AugmentedView`` calls with its per-sample seed.
    """

    def __init__(self, global_size: int | Sequence[int], local_size: int | Sequence[int], n_local: int,
                 global_scale: Sequence[float] = (0.4, 1.0), local_scale: Sequence[float] = (0.05, 0.4),
                 mean: float | Sequence[float] = MEAN, std: float | Sequence[float] = STD, colour: bool = True,
                 blur_sigma: Sequence[float] = BLUR_SIGMA, hflip: float = P_FLIP, n_global: int = 2):
        self.global_size = _pair(global_size, "global_size")
        self.local_size = _pair(local_size, "local_size")
        if not isinstance(n_local, int) or n_local < 0:
            raise ValueError(f"MultiCrop n_local must be an integer >= 0, got {n_local!r}")
        if n_global not in (1, 2):
            raise ValueError(f"MultiCrop n_global must be 1 or 2 (DINO's two global views), got {n_global!r}")
        self.n_local, self.n_global = n_local, n_global
        self.global_scale = _scale(global_scale, "global_scale")
        self.local_scale = _scale(local_scale, "local_scale")
        self.mean = tuple(mean) if isinstance(mean, Sequence) else (float(mean),)
        self.std = tuple(std) if isinstance(std, Sequence) else (float(std),)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"MultiCrop std must be positive, got {self.std}")
        self.colour = bool(colour)
        lo, hi = (float(v) for v in blur_sigma)
        if not 0 < lo <= hi:
            raise ValueError(f"MultiCrop blur_sigma must be (lo, hi) with 0 < lo <= hi, got {tuple(blur_sigma)!r}")
        self.blur_sigma = (lo, hi)
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"MultiCrop hflip must be a probability in [0, 1], got {hflip!r}")
        self.hflip = float(hflip)

    @property
    def n_crops(self) -> int:
        return self.n_global + self.n_local

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(h, w) of every crop, in the order ``__call__`` returns them."""
        return [self.global_size] * self.n_global + [self.local_size] * self.n_local

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        rgb = x.shape[0] == 3
        order = torch.randperm(4, generator=g).tolist()  # ColorJitter applies its 4 ops in a random order
        b, c, s, h = JITTER
        factors = [_uniform(g, max(0.0, 1 - b), 1 + b), _uniform(g, max(0.0, 1 - c), 1 + c),
                   _uniform(g, max(0.0, 1 - s), 1 + s), _uniform(g, -h, h)]
        for i in order:
            if i == 0:
                x = TF.adjust_brightness(x, factors[0])
            elif i == 1:
                x = TF.adjust_contrast(x, factors[1])
            elif i == 2 and rgb:
                x = TF.adjust_saturation(x, factors[2])
            elif i == 3 and rgb:
                x = TF.adjust_hue(x, factors[3])
        return x

    def _view(self, img: torch.Tensor, g: torch.Generator, size: tuple[int, int], scale: tuple[float, float],
              p_blur: float, p_solarize: float) -> torch.Tensor:
        top, left, h, w = crop_box(img.shape[-2], img.shape[-1], scale, g)
        x = TF.resized_crop(img, top, left, h, w, list(size), interpolation=InterpolationMode.BICUBIC,
                            antialias=True).clamp(0, 1)  # bicubic overshoots [0, 1]
        # every probability is drawn whether or not its op can run, so the stream is the same for any input
        if float(torch.rand((), generator=g)) < self.hflip:
            x = TF.hflip(x)
        jitter = float(torch.rand((), generator=g)) < P_JITTER
        if self.colour and jitter:
            x = self._jitter(x, g)
        gray = float(torch.rand((), generator=g)) < P_GRAY
        if self.colour and gray and x.shape[0] == 3:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        blur = float(torch.rand((), generator=g)) < p_blur  # DINO: random() <= p; equal for p in {0, 1}
        if blur:
            x = _blur(x, _uniform(g, *self.blur_sigma))
        if p_solarize and float(torch.rand((), generator=g)) < p_solarize and self.colour:
            x = TF.solarize(x, 0.5)  # PIL's threshold 128 of 255: pixels >= 0.5 inverted
        return normalize(x, self.mean, self.std)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | int) -> list[torch.Tensor]:
        """The crops of one image: [global 1, (global 2,) local 1, ..., local n_local], each (C, h, w)."""
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or not img.is_floating_point():
            raise ValueError("MultiCrop takes one float image tensor (C, H, W) in [0, 1], got "
                             + (f"shape {tuple(img.shape)}, {img.dtype}" if isinstance(img, torch.Tensor)
                                else type(img).__name__))
        if img.shape[0] not in (1, 3):
            raise ValueError(f"MultiCrop takes 1- or 3-channel images, got {img.shape[0]} channels")
        if len(self.mean) not in (1, img.shape[0]) or len(self.std) not in (1, img.shape[0]):
            raise ValueError(f"MultiCrop mean/std have {len(self.mean)}/{len(self.std)} values for a "
                             f"{img.shape[0]}-channel image")
        g = torch.Generator().manual_seed(int(generator)) if isinstance(generator, int) else generator
        if not isinstance(g, torch.Generator):
            raise ValueError(f"MultiCrop needs a torch.Generator or an int seed, got {type(generator).__name__}")
        crops = [self._view(img, g, self.global_size, self.global_scale, P_BLUR[0], 0.0)]
        if self.n_global == 2:
            crops.append(self._view(img, g, self.global_size, self.global_scale, P_BLUR[1], P_SOLARIZE))
        crops += [self._view(img, g, self.local_size, self.local_scale, P_BLUR[2], 0.0) for _ in range(self.n_local)]
        return crops


def collate_crops(samples: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-image crop lists -> one batch per crop position: [(B, C, h, w) for each crop]."""
    if not samples:
        raise ValueError("collate_crops got no samples")
    n = len(samples[0])
    if any(len(s) != n for s in samples):
        raise ValueError("collate_crops: every sample must have the same number of crops")
    return [torch.stack([s[i] for s in samples]) for i in range(n)]
