"""vitkit.load and vitkit.save: the one door through which a model enters or leaves vitkit.

``load`` takes a path or a hub id. A path's format is decided from its content by the table in
:mod:`vitkit.weights.formats` (vitkit folder, run folder, Hugging Face folder, timm folder, training
checkpoint, Google npz, timm state dict file); anything else that looks like ``org/name`` (or a name
in the pretrained table) is downloaded through huggingface_hub into its cache (offline: read from it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.vit import VisionTransformer
from .formats import BY_NAME, FORMATS, SAVE_FORMATS, detect
from .hub import download, looks_like_repo_id
from .options import LoadOptions
from .pretrained import find_pretrained

__all__ = ["SAVE_FORMATS", "is_checkpoint", "load", "save"]


def load(src: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None, heads: int | None = None,
         pooling: str | None = None, act: str | None = None, dynamic_img_size: bool | None = None,
         patch_size: int | None = None, dtype: str | torch.dtype | None = None, revision: str | None = None,
         cache_dir: str | os.PathLike | None = None, map_location: str | torch.device = "cpu") -> VisionTransformer:
    """A ready model (eval mode) with its preprocessing in ``model.preprocess_cfg`` and what was read in
    ``model.load_info`` (format, files, ignored keys, where the preprocessing came from, notes).

    ``src``: a vitkit / Hugging Face / timm folder, a training run folder or checkpoint (``.pt``), a timm
    state-dict file, a Google ``.npz``, or a hub id / pretrained name.
    ``image_size``: load at another resolution, resampling the position embedding (bicubic, antialiased);
    without it a checkpoint loads at its own size. ``patch_size``: run at another patch size (FlexiViT: the
    patch kernel resized by the pseudo-inverse, bicubic; the position embedding resampled to the new grid of
    the same image size). ``heads``, ``pooling``, ``act``: for files that do not
    say (a timm state dict stores no head count; a JAX npz no GELU form); one that contradicts the file is
    refused. ``dynamic_img_size``: accept other input sizes at run time. ``dtype``: of the parameters,
    float32 unless asked; half-precision files are cast (said in one line).
    """
    opts = LoadOptions(image_size=image_size, heads=heads, pooling=pooling, act=act,
                       dynamic_img_size=dynamic_img_size, patch_size=patch_size, dtype=dtype,
                       map_location=map_location)
    path = Path(src)
    if not path.exists():
        name = str(src)
        entry = find_pretrained(name)
        if entry is None and not looks_like_repo_id(name):
            raise FileNotFoundError(f"checkpoint {name!r} does not exist, and is not a Hugging Face hub id "
                                    "('org/name') or a known pretrained name (vitkit.weights.list_pretrained())")
        try:
            path = download(entry.repo_id if entry else name, revision=revision, cache_dir=cache_dir)
        except FileNotFoundError as e:
            if entry is not None:
                raise
            # 'models/vit' may be a mistyped local folder as well as a hub id: say that it was looked for
            raise FileNotFoundError(f"no local file or folder {name!r}; as a hub id: {e}") from None
        if entry is not None:
            opts.default_preprocess = entry.preprocess_cfg()
    model = detect(path).read(path, opts)
    _check_overrides(model, opts, path)
    return model


def is_checkpoint(src: str | os.PathLike) -> bool:
    """Whether ``src`` names a checkpoint ``load`` reads (a path some format claims, a hub id, a pretrained
    name) rather than a model name or config file. A model name wins over a hub id ("B/16" is both)."""
    from ..models.factory import resolve_config

    p = Path(src)
    if p.exists():
        return any(f.sniff(p) for f in FORMATS)
    try:
        resolve_config(str(src))
        return False
    except (ValueError, FileNotFoundError):
        return find_pretrained(str(src)) is not None or looks_like_repo_id(str(src))


def _check_overrides(model: VisionTransformer, opts: LoadOptions, path: Path) -> None:
    """An override the file contradicts (it says heads=12, the caller heads=6) is refused, not applied."""
    for field, want in opts.hints().items():
        have = getattr(model.cfg, field)
        if have != want:
            raise ValueError(f"{path}: the checkpoint says {field}={have!r}; the {field}={want!r} override is for "
                             f"files that do not say (drop it, or convert the weights)")


def save(model: VisionTransformer, path: str | os.PathLike, format: str = "vitkit") -> Path:
    """Write ``model`` (and its preprocessing) to ``path`` in ``format``:

    ``vitkit`` (folder), ``hf`` (folder for transformers' ``from_pretrained``), ``timm`` (a
    ``.safetensors``/``.pth`` state dict, or a timm hub folder) or ``npz`` (Google layout).
    A format that cannot express the model raises ValueError before anything is written.
    """
    if format not in SAVE_FORMATS:
        raise ValueError(f"unknown save format {format!r}; accepted: {SAVE_FORMATS}")
    return BY_NAME[format].write(model, Path(path))
