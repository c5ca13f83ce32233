"""Real data sets that ship inside dependencies, with a fixed stratified split.

``digits``: scikit-learn's handwritten digits, 1,797 8×8 grey images of 0–9,
pixel values 0–16; 20 % held out for validation, stratified, seed 0.

``lfw-faces``: scikit-image's ``lfw_subset``, 200 25×25 grey crops: the first 100
are faces from Labeled Faces in the Wild, the last 100 are not faces; 20 % held
out for validation, stratified, seed 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32, scaled to [0, 1]
    labels: torch.Tensor  # (N,) int64
    classes: list[str]


def _split(x: np.ndarray, y: np.ndarray, classes: list[str], val_fraction: float, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, stratify=y, random_state=seed)
    return (Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr), classes),
            Split(torch.from_numpy(x_va), torch.from_numpy(y_va), classes))


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's digits as (train, val) splits of (N, 1, 8, 8) images in [0, 1]."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..1
    y = d.target.astype(np.int64)
    return _split(x, y, [str(i) for i in range(10)], val_fraction, seed)


def load_lfw_faces(val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """scikit-image's ``lfw_subset`` as (train, val) splits of (N, 1, 25, 25) images in [0, 1];
    class 0 = "face", 1 = "non-face"."""
    from skimage.data import lfw_subset

    x = np.asarray(lfw_subset(), dtype=np.float32)[:, None]  # (200, 1, 25, 25), already in [0, 1]
    y = np.repeat(np.arange(2, dtype=np.int64), 100)  # faces first, then non-faces
    return _split(x, y, ["face", "non-face"], val_fraction, seed)


BUILTIN = {"digits": load_digits, "lfw-faces": load_lfw_faces}
