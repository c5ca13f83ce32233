"""Real data sets that ship inside dependencies, with a fixed stratified split.

``digits``: scikit-learn's handwritten digits, 1,797 8×8 grey images of 0–9,
pixel values 0–16; 20 % held out for validation, stratified, seed 0.
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


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's digits as (train, val) splits of (N, 1, 8, 8) images in [0, 1]."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..1
    y = d.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, stratify=y, random_state=seed)
    classes = [str(i) for i in range(10)]
    return (Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr), classes),
            Split(torch.from_numpy(x_va), torch.from_numpy(y_va), classes))
