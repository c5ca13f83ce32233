"""Preprocessing: the resize, crop and normalisation a checkpoint expects.

A :class:`PreprocessConfig` travels with every checkpoint (``model.preprocess_cfg``);
:func:`preprocess` turns PIL images into the (B, C, H, W) float tensor the model takes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
RESIZE_MODES = ("squash", "shortest")


@dataclass
class PreprocessConfig:
    """How a checkpoint wants its pixels.

    ``resize="squash"`` resizes straight to ``size / crop_pct`` ignoring the aspect ratio, then
    centre-crops ``size`` (HF ``google/vit-*``: crop_pct 1; HF DeiT: 256 -> 224, crop_pct 0.875);
    ``resize="shortest"`` resizes the shortest edge to ``size / crop_pct`` and centre-crops
    ``size`` (timm's eval transform). Resampling is PIL's, as both libraries use for PIL inputs.
    """

    size: tuple[int, int] = (224, 224)  # (H, W) of the model input
    resize: str = "squash"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255  # pixel values 0..255 -> 0..1 before mean/std
    mode: str = "RGB"  # PIL mode the images are converted to ("RGB" or "L")

    def __post_init__(self) -> None:
        if isinstance(self.size, int):
            self.size = (self.size, self.size)
        self.size = tuple(int(s) for s in self.size)
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"PreprocessConfig.size must be (H, W) of positive ints, got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"PreprocessConfig.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"PreprocessConfig.interpolation must be one of {list(INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"PreprocessConfig.crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.mode not in ("RGB", "L"):
            raise ValueError(f"PreprocessConfig.mode must be 'RGB' or 'L', got {self.mode!r}")
        channels = 3 if self.mode == "RGB" else 1
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise ValueError(f"PreprocessConfig mean/std must have {channels} values (std > 0), "
                             f"got mean={self.mean} std={self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(size=list(self.size), mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PreprocessConfig field(s) {unknown}; accepted: {sorted(known)}")
        return cls(**d)


def scaled_size(size: int, crop_pct: float) -> int:
    """The resize target before a centre crop of ``size``: floor(size / crop_pct), as timm computes it
    (an exact integer ratio such as 224 / (224/256) is not lost to rounding)."""
    v = size / crop_pct
    return round(v) if abs(v - round(v)) < 1e-6 else math.floor(v)


def _centre_offsets(nw: int, nh: int, h: int, w: int) -> tuple[int, int]:
    # torchvision's CenterCrop offsets (round half to even of the half-difference)
    return int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))


def _centre_crop(img: Image.Image, h: int, w: int) -> Image.Image:
    left, top = _centre_offsets(*img.size, h, w)
    return img.crop((left, top, left + w, top + h))


# The shortest-edge resize is done on the whole image only while that intermediate is at most this many times
# the crop's area (aspect ratios up to ~13:1 at crop_pct 0.9): every ordinary image, pixel for pixel as timm's
# transform. Beyond it (a 1x100000 strip would make a 248 x 24.8 M intermediate, 18 GB) only the window the
# centre crop keeps is resampled, from the source pixels it reads (:func:`_resized_window`).
MAX_RESIZE_FACTOR = 16

# how far each PIL filter reaches, in source pixels at scale 1 (Pillow's Resample.c supports)
_SUPPORT = {Image.Resampling.NEAREST: 0.5, Image.Resampling.BILINEAR: 1.0, Image.Resampling.BICUBIC: 2.0,
            Image.Resampling.LANCZOS: 3.0}


def _resized_window(img: Image.Image, size: tuple[int, int], window: tuple[int, int, int, int],
                    interp: Image.Resampling) -> Image.Image:
    """The ``window`` (left, top, right, bottom) of ``img.resize(size)``, without the full resize.

    Only the source pixels the window reads (its box at the resize's scale, plus the filter's reach) are
    cropped, then resampled with ``resize(box=...)``, one axis per call so the order of the passes does not
    depend on Pillow's choice (width first, then height). The crop keeps the box offsets small, as PIL holds a
    box in float32. The pixels equal the full resize's up to rounding: a grey level or so where the filter
    rings, more only on pixel noise, where the order of the passes shows.
    """
    box, src = [], []
    for n_in, n_out, lo, hi in ((img.width, size[0], window[0], window[2]),
                                (img.height, size[1], window[1], window[3])):
        scale = n_in / n_out
        a, b = lo * scale, hi * scale  # the window in source coordinates
        reach = _SUPPORT[interp] * max(scale, 1.0) + 1
        first, last = max(0, math.floor(a - reach)), min(n_in, math.ceil(b + reach))
        src.append((first, last))
        box.append((a - first, b - first))
    (x0, x1), (y0, y1) = src
    part = img.crop((x0, y0, x1, y1))
    w, h = window[2] - window[0], window[3] - window[1]
    if interp == Image.Resampling.NEAREST:  # one affine lookup, no passes
        return part.resize((w, h), interp, box=(box[0][0], box[1][0], box[0][1], box[1][1]))
    part = part.resize((w, part.height), interp, box=(box[0][0], 0, box[0][1], part.height))
    return part.resize((w, h), interp, box=(0, box[1][0], w, box[1][1]))


def _resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    h, w = cfg.size
    interp = INTERPOLATIONS[cfg.interpolation]
    if cfg.resize == "squash" or h != w:  # timm squashes too when the target is not square
        if cfg.crop_pct >= 1:
            return img.resize((w, h), interp)
        # squash to (H, W) / crop_pct, then centre crop (H, W): DeiT's HF processor (256 -> 224)
        sh, sw = scaled_size(h, cfg.crop_pct), scaled_size(w, cfg.crop_pct)
        return _centre_crop(img.resize((sw, sh), interp), h, w)
    # shortest edge to size / crop_pct, keeping the aspect ratio (the long edge truncated, as
    # torchvision's Resize(int) does), then centre crop (H, W): timm's eval transform
    short = scaled_size(h, cfg.crop_pct)
    iw, ih = img.size
    if iw <= ih:
        nw, nh = short, max(1, int(short * ih / iw))
    else:
        nh, nw = short, max(1, int(short * iw / ih))
    if nw * nh <= MAX_RESIZE_FACTOR * h * w:
        return _centre_crop(img.resize((nw, nh), interp), h, w)
    left, top = _centre_offsets(nw, nh, h, w)  # a long strip: resample only what the crop keeps
    return _resized_window(img, (nw, nh), (left, top, left + w, top + h), interp)


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The geometric part of ``cfg`` (resize, centre crop) on a PIL image already in ``cfg.mode``: what
    training data sets use, so a model trains on pixels laid out as it will see them at inference."""
    return _resize_crop(img, cfg)


def preprocess(images: Image.Image | Sequence[Image.Image], cfg: PreprocessConfig) -> torch.Tensor:
    """PIL image(s) -> (B, C, H, W) float32, resized, cropped, rescaled and normalised."""
    if isinstance(images, Image.Image):
        images = [images]
    out = []
    for img in images:
        if not isinstance(img, Image.Image):
            raise TypeError(f"preprocess takes PIL images, got {type(img).__name__}; "
                            "open files with vitkit's image decoder first")
        img = _resize_crop(img.convert(cfg.mode), cfg)
        a = np.asarray(img, dtype=np.float32) * cfg.rescale  # (H, W, C) or (H, W)
        a = a[..., None] if a.ndim == 2 else a
        a = (a - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
        out.append(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))))
    return torch.stack(out)


def default_preprocess(size: int | tuple[int, int], channels: int, **kw: Any) -> PreprocessConfig:
    """The preprocessing of a model that carries none, or a format's default with ``kw`` changed: resize
    straight to ``size`` (bilinear), 0..1, mean = std = 0.5 (so -1..1). A 1-channel model gets grey
    images ("L") and the first mean/std value; other channel counts cannot be fed from image files."""
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels} channels; images can only be fed to 1- or 3-channel "
                         "models (give it tensors instead)")
    kw = {"resize": "squash", "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3, **kw}
    if channels == 1:
        kw.update(mode="L", mean=tuple(kw["mean"])[:1], std=tuple(kw["std"])[:1])
    return PreprocessConfig(size=size, **kw)
