"""Pre-training data: every source of ``vitkit train --data``, and also a plain folder of images.

Which kind a folder is, decided from what it holds (hidden entries, names starting with ".", and
files that are not images are ignored):

- images directly in it and no sub-folder holding images: a *plain* (unlabelled) folder; its
  top-level images are the data, each with label -1, ``classes == []``, and no validation part
  (unless ``val_source`` is given);
- sub-folders holding images and no images at its top level: a class folder, as for ``vitkit train``
  (labelled; a stratified part is held out for validation);
- a ``train/`` sub-folder: the ``train/<class>/``, ``val/<class>/`` layout, as for ``vitkit train``;
- both loose images and sub-folders with images: refused (is it a class folder with stray files, or
  unlabelled images in nested folders? the user moves the loose files or points at the sub-folder).

Built-in sets and CSV files are labelled sources, read by :func:`~vitkit.data.datasets.load_source`.
Unreadable files are skipped and reported as in every vitkit data set.
"""

from __future__ import annotations

import os
from pathlib import Path

from .builtin import BUILTIN
from .datasets import (IMAGE_EXTENSIONS, DataSpec, FileImageDataset, ImageDataset, _check_exists, load_eval_source,
                       load_source)


class UnlabelledImageDataset(FileImageDataset):
    """Image files without labels: items ``(image, -1)``, ``classes == []``."""

    def __init__(self, paths, image_size, channels, name, strict=False, preprocess=None):
        super().__init__(paths, [-1] * len(paths), [], image_size, channels, name, strict, preprocess)

    def describe(self) -> str:
        return f"{self.name}: {len(self)} images, unlabelled"


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _has_images(d: Path) -> bool:
    return any(_is_image(f) for f in d.rglob("*"))


def plain_folder_images(folder: str | Path) -> list[str] | None:
    """The sorted image paths of a plain (unlabelled) folder, or None when ``folder`` is not a plain folder but a
    class folder or a train/val layout (see the module docstring); a clear ValueError for an empty folder, one
    without images, or one that mixes loose images with sub-folders of images."""
    root = Path(folder)
    if not root.is_dir():
        return None
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise ValueError(f"the data folder {root} is empty")
    if (root / "train").is_dir():
        return None  # the train/<class>/, val/<class>/ layout
    loose = sorted(str(p) for p in entries if _is_image(p))
    image_dirs = sorted(p.name for p in entries if p.is_dir() and _has_images(p))
    if loose and image_dirs:
        raise ValueError(f"the data folder {root} has {len(loose)} image(s) at its top level and sub-folder(s) "
                         f"holding images {image_dirs[:5]}: it is either a folder of images (move the sub-folders "
                         "out) or a folder of class folders (move the loose images into class folders)")
    if image_dirs:
        return None  # a class folder
    if not loose:
        raise ValueError(f"no images found in the data folder {root} (looked for files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)}, at its top level and in sub-folders)")
    return loose


def _plain_dataset(paths: list[str], spec: DataSpec, name: str) -> UnlabelledImageDataset:
    return UnlabelledImageDataset(paths, spec.image_size, spec.channels, name, spec.strict, spec.preprocess)


def check_pretrain_source(source: str) -> None:
    """A source pre-training can read exists and is of a kind it reads (the messages name the plain folder)."""
    _check_exists(source, plain=True)
    if source not in BUILTIN and os.path.isfile(source) and not source.lower().endswith(".csv"):
        raise ValueError(f"data source {source!r}: expected a folder of images, a folder of class folders or a "
                         ".csv file")


def load_pretrain_source(source: str, spec: DataSpec,
                         val_source: str | None = None) -> tuple[ImageDataset, ImageDataset | None, bool]:
    """(train data set, validation data set or None, labelled) for pre-training.

    A labelled source (built-in, class folder, train/val layout, CSV) gives what ``vitkit train`` uses
    (:func:`~vitkit.data.datasets.load_source`, with its validation part), ``labelled=True``. A plain folder of
    images gives an unlabelled data set (labels -1, ``classes == []``) and no validation part, ``labelled=False``;
    with ``val_source`` that part is read from there: a plain folder (unlabelled), or anything ``vitkit eval``
    reads (a built-in's validation split, a class folder, a layout's ``val/``, a CSV).
    """
    check_pretrain_source(source)
    if val_source:
        _check_exists(val_source, plain=True)
    paths = plain_folder_images(source) if source not in BUILTIN else None
    if paths is None:
        train, val = load_source(source, spec, val_source)
        return train, val, True
    train = _plain_dataset(paths, spec, source)
    if not val_source:
        return train, None, False
    vpaths = plain_folder_images(val_source) if val_source not in BUILTIN else None
    val = _plain_dataset(vpaths, spec, val_source) if vpaths is not None else load_eval_source(val_source, spec)
    return train, val, False
