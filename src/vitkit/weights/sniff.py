"""What a file is, decided from its content (magic bytes, archive members, config fields), never its name.

Each test reads at most a few KB (a zip's directory, a pickle's first bytes) and never unpickles anything.
"""

from __future__ import annotations

import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..utils.jsonfile import read_json

PICKLE_PROTO = 0x80  # every pickle of protocol >= 2 starts with PROTO; torch's legacy format uses protocol 2
TRAIN_FORMAT = b"vitkit-train"  # the 'format' value of a training checkpoint (train/checkpoint.py)


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def is_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header length, then a JSON object."""
    head = _head(path, 9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= n


def _zip_names(path: Path) -> list[str] | None:
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def is_npz(path: Path) -> bool:
    """A zip archive whose members are all ``.npy`` arrays (what ``np.savez`` writes)."""
    names = _zip_names(path)
    return bool(names) and all(n.endswith(".npy") for n in names)


def is_torch(path: Path) -> bool:
    """A ``torch.save`` file: a zip with ``data.pkl`` (or a TorchScript archive, refused by the reader), a
    legacy pickle stream, or a legacy tar checkpoint (also refused by the reader, with the reason)."""
    names = _zip_names(path)
    if names is not None:
        return any(n.endswith(("data.pkl", "constants.pkl")) for n in names)
    head = _head(path, 2)
    if len(head) == 2 and head[0] == PICKLE_PROTO and 2 <= head[1] <= 5:
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def is_train_checkpoint(path: Path) -> bool:
    """A ``torch.save`` zip whose pickle holds ``format: "vitkit-train"`` (looked for in the pickle's bytes)."""
    names = _zip_names(path)
    if not names:
        return False
    pkl = [n for n in names if n.endswith("data.pkl")]
    if not pkl:
        return False
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(pkl[0])
            if info.file_size > 64 * 1024 * 1024:
                return False
            return TRAIN_FORMAT in z.read(pkl[0])
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def folder_config(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` of a folder as a dict (None when there is none). A file that is not valid JSON
    raises, naming it: a folder that means to be a checkpoint should not be passed over silently."""
    f = path / "config.json"
    if not (path.is_dir() and f.is_file()):
        return None
    return read_json(f)


def read_weights_file(path: Path) -> dict[str, torch.Tensor] | Any:
    """The content of a weights file, safetensors or PyTorch pickle, by its bytes."""
    from .safe_io import read_safetensors, read_torch

    if is_safetensors(path):
        return read_safetensors(path)
    if is_torch(path):
        return read_torch(path)
    raise ValueError(f"{path}: neither a safetensors file (an 8-byte header length, then JSON) nor a PyTorch "
                     "checkpoint (a zip with data.pkl, or a pickle)")

