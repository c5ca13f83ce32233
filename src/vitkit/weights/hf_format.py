"""Hugging Face folders: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, sharded or not),
with ``preprocessor_config.json`` when present."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.preprocess import PreprocessConfig
from ..models.vit import VisionTransformer
from .build import build_model
from .convert_hf import hf_to_vitkit, vitkit_to_hf
from .preprocess_cfg import from_hf_processor, to_hf_processor
from ..data.preprocess import default_preprocess
from ..utils.jsonfile import read_json
from .options import LoadOptions
from ..utils.atomic import atomic_write
from .safe_io import read_sharded, read_state_file

# weights files in the order they are preferred: safetensors first, pickles only when nothing else is there
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
VITKIT_KEY = "vitkit"  # our own extras inside config.json (preprocessing), ignored by transformers


def read_folder_weights(folder: Path) -> tuple[dict, Path]:
    """The state dict of a folder's weights, safetensors preferred; (state, file read)."""
    for name in WEIGHT_FILES:
        p = folder / name
        if p.is_file():
            return (read_sharded(p) if name.endswith(".index.json") else read_state_file(p)), p
    raise FileNotFoundError(f"{folder}: no weights file; looked for {list(WEIGHT_FILES)}")


def read_hf_folder(folder: Path, opts: LoadOptions) -> VisionTransformer:
    """A vitkit model from a transformers folder (``config.json`` with ``model_type``, + weights)."""
    from .convert_hf import config_from_hf

    hf_cfg = read_json(folder / "config.json")
    config_from_hf(hf_cfg, str(folder / "config.json"))  # refuse bad configs before reading any weights
    state, file = read_folder_weights(folder)
    cfg, ours, ignored = hf_to_vitkit(state, hf_cfg, str(file))
    pre, source = folder_preprocess(folder, hf_cfg, cfg, opts)
    if opts.act is not None and opts.act != cfg.act:
        raise ValueError(f"{folder / 'config.json'} says hidden_act gives act={cfg.act!r}; act={opts.act!r} is "
                         "for files that do not say")
    info = dict(format="hf", source=str(folder), weights=str(file), model_type=hf_cfg["model_type"],
                ignored_keys=ignored, preprocess_source=source)
    return build_model(cfg, ours, pre, info, opts)


def folder_preprocess(folder: Path, hf_cfg: dict, cfg, opts: LoadOptions) -> tuple[PreprocessConfig, str]:
    """(the preprocessing of a transformers folder, where it came from): vitkit's own entry in config.json,
    else ``preprocessor_config.json``, else the pretrained table's (``opts``), else ViTImageProcessor's default."""
    extra = hf_cfg.get(VITKIT_KEY) if isinstance(hf_cfg.get(VITKIT_KEY), dict) else {}
    pre_file = folder / "preprocessor_config.json"
    if extra.get("preprocess"):
        return PreprocessConfig.from_dict(extra["preprocess"]), "config.json (vitkit)"
    if pre_file.is_file():
        return from_hf_processor(read_json(pre_file), str(pre_file)), str(pre_file)
    return ((opts.default_preprocess, "vitkit pretrained table") if opts.default_preprocess else
            (default_preprocess(cfg.image_hw, cfg.channels), "default (ViTImageProcessor)"))


def save_hf(model: VisionTransformer, folder: str | os.PathLike) -> Path:
    """Write a folder that ``transformers.ViTForImageClassification.from_pretrained`` (or DeiT's
    ``...WithTeacher`` for distilled models, ``ViTModel`` without a head) loads."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; a Hugging Face checkpoint is a folder")
    state, hf_cfg = vitkit_to_hf(model.state_dict(), model.cfg)  # raises before anything is written
    return write_hf_folder(out, state, hf_cfg, model.preprocess_cfg)


def write_hf_folder(out: Path, state: dict, hf_cfg: dict, pre: PreprocessConfig | dict | None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (with vitkit's preprocessing inside) and, with a
    preprocessing, ``preprocessor_config.json`` into the folder ``out``, each file atomically."""
    from safetensors.torch import save_file

    if isinstance(pre, dict):
        pre = PreprocessConfig.from_dict(pre)
    if pre is not None:
        hf_cfg[VITKIT_KEY] = {"preprocess": pre.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(hf_cfg, indent=2)))
    if pre is not None:
        proc = to_hf_processor(pre)
        atomic_write(out / "preprocessor_config.json", lambda p: p.write_text(json.dumps(proc, indent=2)))
    return out
