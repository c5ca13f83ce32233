"""Google-style ``.npz`` files: read (vision_transformer and big_vision naming) and write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.preprocess import PreprocessConfig
from ..models.vit import VisionTransformer
from .build import build_model
from .convert_npz import PREPROCESS_KEY, npz_to_vitkit, vitkit_to_npz
from ..data.preprocess import default_preprocess
from .options import LoadOptions
from ..utils.atomic import atomic_write
from .safe_io import read_npz

# the original vision_transformer input pipeline: resize straight to the model size, bilinear, [-1, 1]
GOOGLE_DEFAULT = dict(resize="squash", crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


def read_npz_file(path: Path, opts: LoadOptions) -> VisionTransformer:
    """A vitkit model from a Google ``.npz`` (architecture inferred from the arrays)."""
    arrays = read_npz(path)
    cfg, state = npz_to_vitkit(arrays, str(path), {**opts.hints(), "requested_size": opts.image_size})
    if PREPROCESS_KEY in arrays:  # written by vitkit: the checkpoint's own preprocessing
        try:
            pre = PreprocessConfig.from_dict(json.loads(bytes(arrays[PREPROCESS_KEY].astype(np.uint8)).decode()))
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: entry {PREPROCESS_KEY!r} is not a valid vitkit preprocessing: {e}") from None
        source = f"{path} ({PREPROCESS_KEY})"
    else:
        pre = opts.default_preprocess or default_preprocess(cfg.image_hw, cfg.channels, **GOOGLE_DEFAULT)
        source = "vitkit pretrained table" if opts.default_preprocess else "default (Google ViT)"
    info = dict(format="npz", source=str(path), weights=str(path), ignored_keys=[], preprocess_source=source)
    return build_model(cfg, state, pre, info, opts)


def save_npz(model: VisionTransformer, path: str | os.PathLike) -> Path:
    """Write ``model`` as a Google-style ``.npz`` (uncompressed), which timm's npz loader reads."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: an npz checkpoint's name must end in .npz")
    arrays = vitkit_to_npz(model.state_dict(), model.cfg)
    pre = model.preprocess_cfg
    if pre is not None:  # kept beside the weights (timm's npz loader ignores vitkit/ entries)
        d = pre.to_dict() if isinstance(pre, PreprocessConfig) else dict(pre)
        arrays[PREPROCESS_KEY] = np.frombuffer(json.dumps(d).encode("utf-8"), dtype=np.uint8).copy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)
