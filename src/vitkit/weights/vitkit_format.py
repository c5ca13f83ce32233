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

import torch
from safetensors.torch import load_file, save_file

from ..config import ViTConfig
from ..models.vit import VisionTransformer
from ..utils.atomic import atomic_write, atomic_write_text

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
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not a vitkit config (its 'format' field is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: unsupported format_version {meta.get('format_version')!r} "
                         f"(this vitkit reads {FORMAT_VERSION})")
    return ViTConfig.from_dict(meta["model"]), meta.get("preprocess")


def load_vitkit(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VisionTransformer:
    """Build the model described by a vitkit folder and load its weights (strict: every key must match)."""
    folder = Path(path)
    cfg, preprocess = read_vitkit_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} is not a vitkit checkpoint: {WEIGHTS_NAME} is missing")
    state = load_file(str(weights), device=str(map_location))
    model = VisionTransformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {keys}" for what, keys in
                           (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong]))
                           if keys)
        raise ValueError(f"{weights} does not match its config: {detail}")
    model.load_state_dict(state)
    model.preprocess_cfg = preprocess
    return model.eval()
