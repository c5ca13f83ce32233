"""vitkit.load and vitkit.save: one entry point whatever the checkpoint's origin.

The reader is picked from what the path holds, never from its name:

- a folder whose ``config.json`` says ``"format": "vitkit"``   -> vitkit's own folder
- a folder whose ``config.json`` has ``model_type``            -> Hugging Face transformers
- a folder whose ``config.json`` has ``architecture``          -> timm hub folder
- a ``.npz`` file                                             -> Google JAX/Flax
- a ``.safetensors`` / ``.pth`` / ``.bin`` file                -> timm-layout state dict
  (a transformers state dict without its config.json is refused with a hint)
- anything else that looks like ``org/name`` (or a name in the pretrained table) ->
  downloaded through huggingface_hub into its cache (offline: read from the cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data.preprocess import PreprocessConfig
from ..models.vit import VisionTransformer
from .hf_format import load_hf_folder, read_json, save_hf
from .hub import download, looks_like_repo_id
from .npz_format import load_npz, save_npz
from .pretrained import find_pretrained
from .safe_io import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from .timm_format import load_timm_folder, load_timm_state, save_timm
from .build import build_model
from .checks import check_state
from .safe_io import read_safetensors
from .vitkit_format import CONFIG_NAME, WEIGHTS_NAME, read_vitkit_config, save_vitkit

SAVE_FORMATS = ("vitkit", "hf", "timm", "npz")


def load(src: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None, heads: int | None = None,
         act: str | None = None, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
         map_location: str = "cpu") -> VisionTransformer:
    """A ready model (eval mode) with its preprocessing in ``model.preprocess_cfg`` and what was read
    in ``model.load_info`` (format, files, ignored keys, where the preprocessing came from).

    ``src``: a vitkit / Hugging Face / timm folder, a timm state-dict file, a Google ``.npz``, or a hub id.
    ``image_size``: load at another resolution, resampling the position embedding (bicubic, antialiased);
    without it a checkpoint loads at its own size. ``heads``/``act``: for files that cannot say
    (timm state dicts carry no head count; JAX npz files default to tanh GELU).
    """
    hints: dict[str, Any] = {k: v for k, v in (("heads", heads), ("act", act)) if v is not None}
    path = Path(src)
    if path.exists():
        return _load_path(path, hints, image_size, map_location)
    name = str(src)
    entry = find_pretrained(name)
    if entry is None and not looks_like_repo_id(name):
        raise FileNotFoundError(f"checkpoint {name!r} does not exist, and is not a Hugging Face hub id "
                                "('org/name') or a known pretrained name (vitkit.weights.list_pretrained())")
    try:
        folder = download(entry.repo_id if entry else name, revision=revision, cache_dir=cache_dir)
    except FileNotFoundError as e:
        if entry is not None:
            raise
        # 'models/vit' may be a mistyped local folder as well as a hub id: say that it was looked for
        raise FileNotFoundError(f"no local file or folder {name!r}; as a hub id: {e}") from None
    return _load_path(folder, hints, image_size, map_location, entry.preprocess_cfg() if entry else None)


def _load_path(path: Path, hints: dict, image_size, map_location, default_pre: PreprocessConfig | None = None):
    if path.is_dir():
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path}: a checkpoint folder needs a {CONFIG_NAME}; none found")
        meta = read_json(cfg_file)
        if meta.get("format") == "vitkit":
            cfg, pre = read_vitkit_config(path)
            weights = path / WEIGHTS_NAME
            if not weights.is_file():
                raise FileNotFoundError(f"{path} is not a vitkit checkpoint: {WEIGHTS_NAME} is missing")
            state = read_safetensors(weights)
            check_state(state, cfg, str(weights))
            info = dict(format="vitkit", source=str(path), weights=str(weights), ignored_keys=[],
                        preprocess_source=str(cfg_file) if pre else "none")
            return build_model(cfg, state, PreprocessConfig.from_dict(pre) if pre else None, info, image_size,
                               map_location)
        if "model_type" in meta or "auto_map" in meta:
            return load_hf_folder(path, meta, image_size, map_location, default_pre)
        if "architecture" in meta:
            return load_timm_folder(path, meta, hints, image_size, map_location)
        raise ValueError(f"{cfg_file}: not a vitkit, Hugging Face (model_type) or timm (architecture) config")
    if path.suffix == ".npz":
        return load_npz(path, hints, image_size, map_location, default_pre)
    if path.suffix in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES:
        return load_timm_state(path, hints, image_size, map_location, default_pre)
    raise ValueError(f"{path}: not a checkpoint vitkit can read (a vitkit/HF/timm folder, or a "
                     f".npz/{'/'.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)} file)")


def save(model: VisionTransformer, path: str | os.PathLike, format: str = "vitkit") -> Path:
    """Write ``model`` (and its preprocessing) to ``path`` in ``format``:

    ``vitkit`` (folder), ``hf`` (folder for transformers' ``from_pretrained``), ``timm`` (a
    ``.safetensors``/``.pth`` state dict, or a timm hub folder) or ``npz`` (Google layout).
    A format that cannot express the model raises ValueError before anything is written.
    """
    if format not in SAVE_FORMATS:
        raise ValueError(f"unknown save format {format!r}; accepted: {SAVE_FORMATS}")
    if format == "hf":
        return save_hf(model, path)
    if format == "timm":
        return save_timm(model, path)
    if format == "npz":
        return save_npz(model, path)
    pre = model.preprocess_cfg
    return save_vitkit(model, path, pre.to_dict() if isinstance(pre, PreprocessConfig) else pre)
