"""Data sets for training and evaluation: built-ins, image folders and CSV files.

A *source* is one of:

- ``digits`` or ``lfw-faces``: the built-in sets (:mod:`vitkit.data.builtin`), fixed stratified split;
- a folder in the usual layout ``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg``
  (without ``val/``, or with class folders directly in ``DIR``, a stratified split is held out);
- a CSV file with a header ``path,label`` (relative paths are relative to the CSV's folder);
  a stratified split is held out unless a separate validation source is given.

Every data set yields ``(image, label)`` with the image a (C, H, W) float32 tensor in [0, 1],
already resized to the model's input size ("squash", bilinear: the same as the
:class:`~vitkit.data.preprocess.PreprocessConfig` saved with the model) and converted to the
model's channel count (grey repeated to RGB, RGB to grey by PIL's "L" formula).

Unreadable files (RELIABILITY item 17): by default a file that cannot be decoded is
*skipped and reported* (its index yields ``(None, SkippedFile)``, the collate function drops
it, and the training engine prints and records its path and reason once); with ``strict=True``
the first unreadable file stops the run with :class:`UnreadableImage` naming it. In a
``DataLoader`` worker process the strict error is not raised there (the loader would re-raise
it wrapped in the worker's traceback): the item comes back marked ``strict`` and the consumer
in the main process raises it (:func:`raise_if_strict`), so ``--workers 0`` and ``--workers 4``
give the same one-line error.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.names import printable
from .builtin import BUILTIN
from .decode import open_image
from .preprocess import PreprocessConfig, resize_crop

# the one set of image suffixes a folder is searched for (case-insensitive), by data sets and by predict/features
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


class UnreadableImage(ValueError):
    """A file of a data set that could not be decoded (raised only in strict mode)."""


class SkippedFile(str):
    """Why a file was skipped, as the str ``"PATH: reason"`` (printable: a name that is not UTF-8
    shows its bytes as ``\\xNN``), with the file's own ``path`` and whether the data set was
    ``strict`` (then the consumer raises :meth:`error`)."""

    path: str
    why: str
    strict: bool

    def __new__(cls, path: str, why: str, strict: bool = False) -> "SkippedFile":
        self = super().__new__(cls, printable(f"{path}: {why}"))
        self.path, self.why, self.strict = path, why, strict
        return self

    def __reduce__(self):  # crosses from loader workers to the main process
        return SkippedFile, (self.path, self.why, self.strict)

    def error(self) -> UnreadableImage:
        return UnreadableImage(f"unreadable image {self} (run without --strict-data to skip such files)")


def raise_if_strict(skipped: Sequence[str]) -> None:
    """Raise the strict error of the first file of ``skipped`` read by a strict data set."""
    for s in skipped:
        if getattr(s, "strict", False):
            raise s.error()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W), bilinear; antialiased when shrinking (as PIL does)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink).clamp_(0, 1)


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, c, H, W) with c in {1, 3} -> (N, channels, H, W)."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:  # ITU-R 601-2 luma, PIL's "L" conversion
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot turn {c}-channel images into {channels}-channel model input")


class ImageDataset(torch.utils.data.Dataset):
    """Base class: ``classes`` (names in label order), ``targets`` (one int per item), ``name``."""

    classes: list[str]
    targets: list[int]
    name: str

    def __len__(self) -> int:
        return len(self.targets)

    def describe(self) -> str:
        return f"{self.name}: {len(self)} images, {len(self.classes)} classes"


class TensorImageDataset(ImageDataset):
    """Images held in memory as one (N, C, h, w) tensor in [0, 1] (the built-in sets)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int], classes: list[str],
                 image_size: tuple[int, int], channels: int, name: str = "tensors"):
        if images.ndim != 4:
            raise ValueError(f"{name}: images must be (N, C, H, W), got shape {tuple(images.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(labels) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        # resized once, up front: (N, channels, H, W)
        self.images = _to_channels(_resize(images.float(), tuple(image_size)), channels).contiguous()
        self.targets = labels.tolist()
        self.classes = list(classes)
        self.name = name

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.targets[i]


class FileImageDataset(ImageDataset):
    """Images read from files with vitkit's safe decoder, one per item."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], classes: list[str],
                 image_size: tuple[int, int], channels: int, name: str, strict: bool = False,
                 preprocess: PreprocessConfig | None = None):
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.size = tuple(image_size)
        self.mode = "L" if channels == 1 else "RGB"
        if channels not in (1, 3):
            raise ValueError(f"image files give 1- or 3-channel input; the model wants {channels} channels")
        self.name = name
        self.strict = strict
        # resize (and crop) as the model's preprocessing does; without one: squash, bilinear
        self.geometry = PreprocessConfig(size=self.size, mode=self.mode, mean=(0.5,) * channels, std=(0.5,) * channels,
                                         resize=preprocess.resize, crop_pct=preprocess.crop_pct,
                                         interpolation=preprocess.interpolation) if preprocess else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[None, str]:
        path = self.paths[i]
        try:
            img = open_image(path)
        except (ValueError, OSError) as e:  # ImageDecodeError, FileNotFoundError, PermissionError...
            why = str(e)
            if why.startswith(path + ": "):  # the decoder's messages start with the name already
                why = why[len(path) + 2:]
            skipped = SkippedFile(path, why, self.strict)
            if self.strict and torch.utils.data.get_worker_info() is None:
                raise skipped.error() from None
            return None, skipped
        img = img.convert(self.mode)
        if self.geometry is not None:
            img = resize_crop(img, self.geometry)
        else:
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(a)), self.targets[i]


@dataclass
class DataSpec:
    """How to turn a source into model input."""

    image_size: tuple[int, int]
    channels: int
    val_fraction: float = 0.2  # held out when the source has no validation part
    seed: int = 0  # of that split
    strict: bool = False  # stop at the first unreadable file instead of skipping it
    preprocess: PreprocessConfig | None = None  # the model's: its resize / crop / interpolation for image files


def _sort_classes(names: set[str]) -> list[str]:
    """Class names in label order: numerically when they are all integers, else alphabetically."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _scan_class_folders(root: Path) -> dict[str, list[str]]:
    """``root/<class>/**/image`` -> {class: sorted paths}; only files with an image extension."""
    out: dict[str, list[str]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(str(f) for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        out[d.name] = files
    return out


def _stratified_split(n_targets: Sequence[int], fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """Indices (train, val) holding out ``fraction`` of each class (at least one item per class)."""
    if not 0 < fraction < 1:
        raise ValueError(f"{what}: the validation fraction must be in (0, 1), got {fraction}")
    targets = np.asarray(n_targets)
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        if len(idx) < 2:
            raise ValueError(f"{what}: class index {c} has only {len(idx)} image; a train/validation split "
                             "needs at least 2 per class (or give separate validation data)")
        idx = idx[rng.permutation(len(idx))]
        k = max(1, int(round(len(idx) * fraction)))
        va += idx[:k].tolist()
        tr += idx[k:].tolist()
    return sorted(tr), sorted(va)


def _subset(paths: list[str], targets: list[int], idx: list[int]) -> tuple[list[str], list[int]]:
    return [paths[i] for i in idx], [targets[i] for i in idx]


def _folder_items(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    found = _scan_class_folders(root)
    if not found:
        raise ValueError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    if classes is None:
        classes = _sort_classes(set(found))
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"{root} has class folder(s) {extra} that the training classes {classes} do not have")
    paths, targets = [], []
    for name, files in found.items():
        paths += files
        targets += [classes.index(name)] * len(files)
    if not paths:
        raise ValueError(f"no images found in {root} (looked in its class folders for files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    return paths, targets, classes


def _csv_items(path: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text CSV file: {e}") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["path", "label"]:
        raise ValueError(f"{path}: the first line must be the header 'path,label', got {rows[0] if rows else 'nothing'}")
    items = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{path} line {n}: expected 'path,label', got {row}")
        p = Path(row[0].strip())
        items.append((str(p if p.is_absolute() else path.parent / p), row[1].strip()))
    if not items:
        raise ValueError(f"{path} lists no images (only a header)")
    names = {lab for _, lab in items}
    if classes is None:
        classes = _sort_classes(names)
    elif names - set(classes):
        raise ValueError(f"{path} has label(s) {sorted(names - set(classes))} that the training classes "
                         f"{classes} do not have")
    return [p for p, _ in items], [classes.index(lab) for _, lab in items], classes


def _file_items(source: str, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    p = Path(source)
    if p.is_dir():
        return _folder_items(p, classes)
    if p.suffix.lower() == ".csv":
        return _csv_items(p, classes)
    raise ValueError(f"data source {source!r}: expected a folder of class folders or a .csv file")


def _check_exists(source: str, plain: bool = False) -> None:
    """``plain``: the caller (pre-training) also reads a plain folder of images, and the message says so."""
    if source in BUILTIN:
        return
    if not os.path.exists(source):
        raise FileNotFoundError(f"data source {source!r} does not exist (built-in sets: {', '.join(BUILTIN)}; "
                                "or a folder train/<class>/..., val/<class>/..., or a CSV of path,label"
                                + ("; or a plain folder of images)" if plain else ")"))


def has_validation_part(source: str) -> bool:
    """Whether a source brings its own validation part (a built-in's fixed split, a folder's ``val/``), so that
    training does not hold out a fraction of it."""
    return source in BUILTIN or (Path(source).is_dir() and (Path(source) / "val").is_dir())


def load_source(source: str, spec: DataSpec, val_source: str | None = None) -> tuple[ImageDataset, ImageDataset]:
    """(train, val) data sets for a source name, folder or CSV; see the module docstring."""
    _check_exists(source)
    if val_source:
        _check_exists(val_source)
    if source in BUILTIN:
        if val_source:
            raise ValueError(f"the built-in set {source!r} has its own fixed validation split; drop --val-data")
        tr, va = BUILTIN[source]()
        mk = lambda s, part: TensorImageDataset(s.images, s.labels, s.classes, spec.image_size, spec.channels,
                                                f"{source}/{part}")
        return mk(tr, "train"), mk(va, "val")
    p = Path(source)
    if p.is_dir() and (p / "train").is_dir():
        paths, targets, classes = _folder_items(p / "train")
        if val_source is None and (p / "val").is_dir():
            val_source = str(p / "val")
        name = str(p / "train")
    else:
        paths, targets, classes = _file_items(source)
        name = source
    mk = lambda ps, ts, nm: FileImageDataset(ps, ts, classes, spec.image_size, spec.channels, nm, spec.strict,
                                         spec.preprocess)
    if val_source:
        vpaths, vtargets, _ = _file_items(val_source, classes)
        return mk(paths, targets, name), mk(vpaths, vtargets, val_source)
    tr_idx, va_idx = _stratified_split(targets, spec.val_fraction, spec.seed, source)
    return (mk(*_subset(paths, targets, tr_idx), f"{name} (train part)"),
            mk(*_subset(paths, targets, va_idx), f"{name} (held-out {spec.val_fraction:.0%})"))


def source_classes(source: str) -> list[str]:
    """Class names (label order) of a training source, without decoding any image."""
    _check_exists(source)
    if source in BUILTIN:
        return BUILTIN[source]()[0].classes
    p = Path(source)
    if p.is_dir() and (p / "train").is_dir():
        return _folder_items(p / "train")[2]
    return _file_items(source)[2]


def load_eval_source(source: str, spec: DataSpec, classes: list[str] | None = None) -> ImageDataset:
    """The data set ``vitkit eval`` scores: a built-in's validation split, a layout folder's ``val/``,
    a folder of class folders, or a whole CSV. ``classes`` (the model's labels) fixes the label order."""
    _check_exists(source)
    if source in BUILTIN:
        _, va = BUILTIN[source]()
        return TensorImageDataset(va.images, va.labels, va.classes, spec.image_size, spec.channels, f"{source}/val")
    p = Path(source)
    if p.is_dir() and (p / "val").is_dir():
        p = p / "val"
    paths, targets, found = _file_items(str(p), classes)
    return FileImageDataset(paths, targets, found, spec.image_size, spec.channels, str(p), spec.strict,
                            spec.preprocess)


# --- turning items into training / evaluation batches -------------------------------

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a pure function of (run seed, epoch, index), so the
    augmentation does not depend on worker count, batch position or resumption."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63 - 1)


class AugmentedView(torch.utils.data.Dataset):
    """Wraps a data set: item ``(index, epoch)`` -> (transformed image, label), or (None, reason)
    for an unreadable file. ``transform(x, seed)`` is called with :func:`sample_seed`."""

    def __init__(self, base: ImageDataset, transform: Callable[[torch.Tensor, int], torch.Tensor], seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        x, y = self.base[index]
        if x is None:
            return None, y
        return self.transform(x, sample_seed(self.seed, epoch, index)), y


def collate_skipping(items: list) -> tuple[Any, torch.Tensor | None, list[str]]:
    """Stack (image, label) pairs, dropping unreadable ones: -> (x (B, C, H, W), y (B,), skipped reasons).
    Items whose image is a list of views (DINO's crops) give a list of stacks, one per view."""
    good = [(x, y) for x, y in items if x is not None]
    skipped = [y for x, y in items if x is None]
    if not good:
        return None, None, skipped
    y = torch.tensor([y for _, y in good], dtype=torch.int64)
    if isinstance(good[0][0], (list, tuple)):
        return [torch.stack([x[v] for x, _ in good]) for v in range(len(good[0][0]))], y, skipped
    return torch.stack([x for x, _ in good]), y, skipped
