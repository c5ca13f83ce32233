"""The table of checkpoint formats: every way a model enters or leaves vitkit.

One entry per format, each the same three functions::

    sniff(path) -> bool                      decided from the content (keys, config fields, magic bytes)
    read(path, opts: LoadOptions) -> model   a ready VisionTransformer (eval mode, preprocess_cfg, load_info)
    write(model, path) -> path               (None for formats only the trainer writes)

:func:`detect` walks the table in order and returns the first entry that claims a path; a path no entry
claims gets an error listing what each entry looked for. Nothing is decided from a suffix or a name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ViTConfig
from ..data.preprocess import PreprocessConfig, default_preprocess
from ..models.vit import VisionTransformer
from .build import build_model
from .checks import check_state
from .hf_format import read_hf_folder, save_hf
from .npz_format import read_npz_file, save_npz
from .options import LoadOptions
from .safe_io import read_safetensors
from .sniff import folder_config, is_npz, is_safetensors, is_torch, is_train_checkpoint
from .timm_format import read_timm_file, read_timm_folder, save_timm
from .vitkit_format import CONFIG_NAME, WEIGHTS_NAME, read_vitkit_config, save_vitkit


@dataclass(frozen=True)
class Format:
    name: str
    looks_for: str  # what ``sniff`` checks, said when no entry claims a path
    sniff: Callable[[Path], bool]
    read: Callable[[Path, LoadOptions], VisionTransformer]
    write: Callable[[VisionTransformer, Path], Path] | None = None


# --- vitkit's own folder ----------------------------------------------------------

def _is_vitkit(path: Path) -> bool:
    meta = folder_config(path)
    return meta is not None and meta.get("format") == "vitkit"


def read_vitkit_folder(path: Path, opts: LoadOptions) -> VisionTransformer:
    cfg, pre = read_vitkit_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a vitkit checkpoint: {WEIGHTS_NAME} is missing")
    state = read_safetensors(weights)
    check_state(state, cfg, str(weights))
    info = dict(format="vitkit", source=str(path), weights=str(weights), ignored_keys=[],
                preprocess_source=str(path / CONFIG_NAME) if pre else "default (vitkit)")
    pre = PreprocessConfig.from_dict(pre) if pre else default_preprocess(cfg.image_hw, cfg.channels)
    return build_model(cfg, state, pre, info, opts)


def write_vitkit_folder(model: VisionTransformer, path: Path) -> Path:
    pre = model.preprocess_cfg
    return save_vitkit(model, path, pre.to_dict() if isinstance(pre, PreprocessConfig) else pre)


# --- training checkpoints and run folders -----------------------------------------

def read_train_checkpoint(path: Path, opts: LoadOptions) -> VisionTransformer:
    """A training checkpoint (``RUN/checkpoints/*.pt``) as the architecture it was trained as, with its class
    names and preprocessing. The weights are the EMA's when the checkpoint's last validation scored them
    higher (the rule the run's own final save follows), else the model's."""
    from ..train.checkpoint import inference_weights, load_checkpoint

    ck = load_checkpoint(path)
    try:
        cfg = ViTConfig.from_dict(ck["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the training checkpoint's model_config is not usable: {e}") from None
    if ck.get("classes") and cfg.labels is None and len(ck["classes"]) == cfg.num_classes:
        cfg = cfg.replace(labels=list(ck["classes"]))
    which, state = inference_weights(ck)
    check_state(state, cfg, str(path))
    pre = PreprocessConfig.from_dict(ck["preprocess"]) if ck.get("preprocess") else \
        default_preprocess(cfg.image_hw, cfg.channels)
    step = ck.get("progress", {}).get("global_step")
    opts.note(f"{path}: training checkpoint at step {step}, {which} weights")
    info = dict(format="train-checkpoint", source=str(path), weights=str(path), ignored_keys=[],
                weights_used=which, step=step,
                preprocess_source=str(path) if ck.get("preprocess") else "default (vitkit)")
    return build_model(cfg, state, pre, info, opts)


def _run_model(path: Path) -> Path | None:
    """What a run folder offers, best first: its saved model (``model/``), else its latest step checkpoint."""
    from ..train.checkpoint import latest_checkpoint

    if _is_vitkit(path / "model"):
        return path / "model"
    return latest_checkpoint(path)


def _is_run(path: Path) -> bool:
    return path.is_dir() and not (path / CONFIG_NAME).exists() and _run_model(path) is not None


def read_run_folder(path: Path, opts: LoadOptions) -> VisionTransformer:
    src = _run_model(path)
    model = (read_vitkit_folder if src.is_dir() else read_train_checkpoint)(src, opts)
    model.load_info.update(run=str(path), format="run", read_as=model.load_info["format"])
    return model


# --- the table --------------------------------------------------------------------

def _has(field: str) -> Callable[[Path], bool]:
    def sniff(path: Path) -> bool:
        meta = folder_config(path)
        return meta is not None and field in meta and meta.get("format") != "vitkit"
    return sniff


def _file(test: Callable[[Path], bool]) -> Callable[[Path], bool]:
    return lambda path: path.is_file() and test(path)


FORMATS: tuple[Format, ...] = (
    Format("vitkit", "a folder whose config.json says \"format\": \"vitkit\"", _is_vitkit, read_vitkit_folder,
           write_vitkit_folder),
    Format("run", "a training run folder (model/ or checkpoints/step_*.pt, no config.json)", _is_run,
           read_run_folder),
    Format("hf", "a folder whose config.json has model_type (Hugging Face transformers)", _has("model_type"),
           read_hf_folder, save_hf),
    Format("timm-folder", "a folder whose config.json has architecture (timm hub layout)", _has("architecture"),
           read_timm_folder, save_timm),
    Format("train-checkpoint", "a torch.save zip holding format \"vitkit-train\" (a training checkpoint)",
           _file(is_train_checkpoint), read_train_checkpoint),
    Format("npz", "a zip of .npy arrays (Google JAX/Flax npz)", _file(is_npz), read_npz_file, save_npz),
    Format("timm", "a safetensors file (8-byte header length, then JSON) or a PyTorch checkpoint (a zip with "
           "data.pkl, or a pickle) holding a timm-layout state dict",
           _file(lambda p: is_safetensors(p) or is_torch(p)), read_timm_file, save_timm),
)
BY_NAME = {f.name: f for f in FORMATS}
SAVE_FORMATS = ("vitkit", "hf", "timm", "npz")  # what vitkit.save / vitkit convert --to write


def detect(path: str | os.PathLike) -> Format:
    """The format entry that claims ``path`` (which exists); ValueError listing what was looked for."""
    path = Path(path)
    for fmt in FORMATS:
        if fmt.sniff(path):
            return fmt
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        why = f"its {CONFIG_NAME} has none of the fields 'format': 'vitkit', 'model_type', 'architecture'"
    elif path.is_dir():
        why = f"it has no {CONFIG_NAME}, no model/ and no checkpoints/step_*.pt"
    else:
        why = f"its first bytes are {_first_bytes(path)}"
    raise ValueError(f"{path}: not a checkpoint vitkit can read ({why}). Looked for, in order: "
                     + "; ".join(f"{f.name}: {f.looks_for}" for f in FORMATS))


def _first_bytes(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            b = f.read(8)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return repr(b) if b else "none (the file is empty)"
