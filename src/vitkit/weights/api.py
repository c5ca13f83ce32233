"""vitkit.load and vitkit.save: one entry point whatever the checkpoint's origin."""

from __future__ import annotations

import os
from pathlib import Path

from ..data.preprocess import PreprocessConfig
from ..models.vit import VisionTransformer
from .vitkit_format import CONFIG_NAME, load_vitkit, save_vitkit

SAVE_FORMATS = ("vitkit",)


def load(src: str | os.PathLike, map_location: str = "cpu") -> VisionTransformer:
    """A ready model (eval mode) with its preprocessing in ``model.preprocess_cfg``.

    ``src``: a vitkit checkpoint folder.
    """
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist")
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        model = load_vitkit(path, map_location)
        if isinstance(model.preprocess_cfg, dict):
            model.preprocess_cfg = PreprocessConfig.from_dict(model.preprocess_cfg)
        return model
    raise ValueError(f"{str(src)!r} is not a checkpoint vitkit can read (expected a vitkit folder with {CONFIG_NAME})")


def save(model: VisionTransformer, path: str | os.PathLike, format: str = "vitkit") -> Path:
    """Write ``model`` (and its preprocessing) to ``path`` in ``format``."""
    if format not in SAVE_FORMATS:
        raise ValueError(f"unknown save format {format!r}; accepted: {SAVE_FORMATS}")
    pre = model.preprocess_cfg
    return save_vitkit(model, path, pre.to_dict() if isinstance(pre, PreprocessConfig) else pre)
