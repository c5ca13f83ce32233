"""vitkit's own checkpoint format: a folder with ``config.json`` and ``model.safetensors``.

config.json::

    {"format": "vitkit", "format_version": 1,
     "model": {...ViTConfig fields, labels included...},
     "preprocess": {...} or null}

The weights are the model's state dict as stored by safetensors (no pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..config import ViTConfig
from ..models.vit import VisionTransformer
from ..utils.atomic import atomic_write, atomic_write_text
from ..utils.jsonfile import read_json

FORMAT = "vitkit"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_vitkit(model: VisionTransformer, path: str | os.PathLike, preprocess: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created if needed); returns the folder.

    Each file is written to a temporary name and renamed, so an interrupted save
    leaves any earlier checkpoint in the folder intact.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; vitkit checkpoints are folders")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict(),
            "preprocess": preprocess}
    atomic_write_text(out / CONFIG_NAME, json.dumps(meta, indent=2))
    return out


def read_vitkit_config(path: str | os.PathLike) -> tuple[ViTConfig, dict[str, Any] | None]:
    """The (ViTConfig, preprocess dict) of a vitkit checkpoint folder."""
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a vitkit checkpoint: {CONFIG_NAME} is missing")
    meta = read_json(cfg_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not a vitkit config (its 'format' field is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: unsupported format_version {meta.get('format_version')!r} "
                         f"(this vitkit reads {FORMAT_VERSION})")
    return ViTConfig.from_dict(meta["model"]), meta.get("preprocess")
