"""Drawing explanations into PNGs with matplotlib's Agg canvas (no pyplot, no global backend change).

The heat-map is upsampled from the patch grid to the image (bilinear) and rescaled to 0..1 for
display only; :class:`~vitkit.explain.explainer.Explanation` keeps the raw values.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.atomic import atomic_write
from .explainer import Explanation

CMAP = "jet"
ALPHA = 0.5  # heat-map opacity over the image


def upsample(heat: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(gh, gw) map -> (H, W), bilinear, rescaled to 0..1 (a flat map becomes all zeros)."""
    t = torch.from_numpy(np.asarray(heat, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def _overlay(ax, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.imshow(upsample(heat, image.shape[:2]), cmap=CMAP, alpha=ALPHA, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def render_explanation(expl: Explanation, path: str | os.PathLike, dpi: int = 100) -> Path:
    """One PNG, ``12 x 4`` inches at ``dpi`` (1200x400 px by default): the image, the heat-map
    overlay, and the top-k predictions as bars."""
    fig = _figure(12, 4)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.1]})
    axes[0].imshow(expl.image)
    axes[0].set_title(f"input {expl.image.shape[0]}x{expl.image.shape[1]}", fontsize=9)  # HxW, as --size
    axes[0].axis("off")
    _overlay(axes[1], expl.image, expl.heatmap, expl.describe())
    ax = axes[2]
    if expl.predictions:
        labels = [lab for lab, _ in expl.predictions][::-1]
        probs = [p for _, p in expl.predictions][::-1]
        ax.barh(range(len(probs)), probs, color="tab:blue")
        ax.set_yticks(range(len(probs)), labels=[lab[:28] for lab in labels], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("probability", fontsize=8)
        for i, p in enumerate(probs):
            ax.text(min(p + 0.02, 0.8), i, f"{p:.3f}", va="center", fontsize=8)
        ax.set_title(f"top-{len(probs)} prediction", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no classification head", ha="center", va="center")
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path, dpi)


def render_head_grid(expl: Explanation, path: str | os.PathLike, dpi: int = 100, cell_in: float = 2.5) -> Path:
    """A grid of the per-head [CLS] maps of layer ``expl.layer`` plus their average:
    ceil(sqrt(heads + 1)) columns, each cell ``cell_in`` inches square."""
    maps = list(expl.head_maps) + [expl.head_maps.mean(axis=0)]
    cols = math.ceil(math.sqrt(len(maps)))
    rows = math.ceil(len(maps) / cols)
    fig = _figure(cols * cell_in, rows * cell_in)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        if i < len(maps):
            title = f"layer {expl.layer} head {i}" if i < len(maps) - 1 else f"layer {expl.layer} mean"
            _overlay(ax, expl.image, maps[i], title)
        else:
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path, dpi)
