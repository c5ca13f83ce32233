"""Safe reading of checkpoint files: safetensors, PyTorch pickles (weights only), ``.npz``, sharded folders.

Nothing here ever runs code from a file:

- safetensors headers are parsed and checked (length, offsets without gaps or
  overlaps, shape x dtype == byte span, total == file size) before any tensor
  is read;
- PyTorch ``.pth``/``.bin`` go through ``torch.load(weights_only=True)`` only,
  never a fallback to full unpickling; TorchScript archives and legacy ``.tar``
  checkpoints are refused; foreign Python objects are named in the error;
- ``.npz`` members have their ``.npy`` headers checked (no object dtype, size
  matching the stored bytes) before ``np.load(allow_pickle=False)`` reads them;
- sharded index files may only name shards inside their own folder.

Every error is a ``ValueError`` (or ``FileNotFoundError``) naming the file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

# bytes per element of each safetensors dtype
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit for the JSON header
MAX_INDEX_BYTES = 50 * 1024 * 1024  # a sharded index is a small JSON file

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")  # ".pth.tar": torch.save zips, named so by old scripts


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    return path


# --- safetensors ---------------------------------------------------------------

def check_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Validate a safetensors file's header against its size; returns {name: {dtype, shape, data_offsets}}."""
    path = _check_file(Path(path))
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (only {size} bytes; the 8-byte header length is missing)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: safetensors header claims {n} bytes but the file has only {size - 8} "
                             "after the length field (truncated or not a safetensors file)")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {n} bytes is larger than the {MAX_HEADER_BYTES} allowed")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    data_len = size - 8 - n
    spans = []
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ValueError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets in the header")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise ValueError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise ValueError(f"{path}: tensor {name!r} has invalid data_offsets {offs!r}")
        want = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if offs[1] - offs[0] != want:
            raise ValueError(f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} needs {want} bytes "
                             f"but its data_offsets {offs} span {offs[1] - offs[0]}")
        spans.append((offs[0], offs[1], name))
        tensors[name] = info
    pos = 0
    for start, end, name in sorted(spans):
        if start != pos:
            what = "a gap" if start > pos else "an overlap"
            raise ValueError(f"{path}: {what} in the data before tensor {name!r} (offset {start}, expected {pos})")
        pos = end
    if pos != data_len:
        if pos > data_len:
            raise ValueError(f"{path}: tensors need {pos} data bytes but the file holds {data_len} (truncated)")
        raise ValueError(f"{path}: {data_len - pos} bytes after the last tensor are not described by the header")
    return tensors


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (header checked first), on the CPU."""
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # the header was valid, so this is an I/O or format error
        raise ValueError(f"{path}: could not read safetensors data: {e}") from None


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file (after the header check)."""
    check_safetensors_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


# --- PyTorch pickles --------------------------------------------------------------

def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` of every class/function a pickle refers to, read without unpickling it."""
    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a damaged stream: report what was found so far
        pass
    return sorted(set(names))


# globals a plain state dict (what weights_only=True accepts) is made of
_PLAIN_GLOBALS_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                           "builtins.bytearray", "_codecs.encode")


def _payload_globals(path: Path) -> list[str]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
                data = z.read(pkl[0]) if pkl else b""
        else:
            data = path.read_bytes()
    except Exception:
        return []
    return [g for g in pickle_globals(data) if not g.startswith(_PLAIN_GLOBALS_PREFIXES)]


def read_torch(path: str | os.PathLike) -> dict:
    """A PyTorch checkpoint read with ``torch.load(weights_only=True)``; never unpickles anything else."""
    path = _check_file(Path(path))
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{path}: corrupt zip archive ({e})") from None
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise ValueError(f"{path} is a TorchScript archive (torch.jit.save), not a state dict; vitkit does not "
                             "run TorchScript code. Save the weights with torch.save(model.state_dict(), ...) "
                             "or safetensors.")
    elif tarfile.is_tarfile(path):
        raise ValueError(f"{path} is a legacy tar checkpoint (PyTorch < 0.4 format); vitkit refuses it. "
                         "Re-save the state dict with a current PyTorch or as safetensors.")
    try:
        with open(path, "rb") as f:  # a file object: torch.load would pick a reader from a path's suffix
            obj = torch.load(f, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        found = _payload_globals(path) or [str(e).splitlines()[0][:200]]
        raise ValueError(f"{path}: refused to load: the pickle holds Python objects other than tensors and plain "
                         f"containers: {found}. vitkit only loads with torch.load(weights_only=True) and never "
                         "falls back to unsafe unpickling; save a plain state dict or safetensors instead.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{str(e).splitlines()[0][:300]}") from None
    return obj


# --- npz -------------------------------------------------------------------------

def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; object arrays and inconsistent headers are refused before reading data."""
    path = _check_file(Path(path))
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"{path}: member {info.filename!r} is not a .npy array")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version in ((2, 0), (3, 0)):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    header_len = f.tell()
                name = info.filename[: -len(".npy")]
                if dtype.hasobject:
                    raise ValueError(f"{path}: array {name!r} holds Python objects (dtype {dtype}); "
                                     "refused (vitkit reads .npz with allow_pickle=False)")
                need = math.prod(shape) * dtype.itemsize
                if need != info.file_size - header_len:
                    raise ValueError(f"{path}: array {name!r} declares shape {shape} ({need} bytes) but stores "
                                     f"{info.file_size - header_len} bytes")
            out = {}
            with np.load(path, allow_pickle=False) as npz:
                for k in npz.files:
                    out[k] = npz[k]
            return out
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: corrupt .npz: {msg}") from None
    except (zipfile.BadZipFile, OSError, OverflowError, EOFError, SyntaxError, struct.error, MemoryError) as e:
        raise ValueError(f"{path}: not a readable .npz file (corrupt or truncated): {type(e).__name__}: {e}") from None


# --- folders with shards ----------------------------------------------------------------

def read_sharded(index_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint (``*.index.json`` with a ``weight_map``); shards must lie in its folder."""
    index_path = _check_file(Path(index_path))
    if index_path.stat().st_size > MAX_INDEX_BYTES:
        raise ValueError(f"{index_path}: index file is larger than {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{index_path} is not valid JSON: {e}") from None
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise ValueError(f"{index_path}: no 'weight_map' of tensor name -> shard file name")
    folder = index_path.parent.resolve()
    shards = sorted(set(wmap.values()))
    for shard in shards:
        p = Path(shard)
        if p.is_absolute() or p.name != shard or shard in (".", "..") or (folder / shard).resolve().parent != folder:
            raise ValueError(f"{index_path}: shard name {shard!r} points outside the checkpoint folder; refused")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = read_state_file(folder / shard)
        state.update(part)
    missing = sorted(set(wmap) - set(state))
    if missing:
        raise ValueError(f"{index_path}: tensors listed in the index are missing from the shards: {missing[:20]}")
    return state


def read_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a safetensors or PyTorch file (a {'model': ...} wrapper is not unwrapped here)."""
    path = Path(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        return read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        obj = read_torch(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        return obj
    if path.suffix == ".npz":
        return {k: torch.from_numpy(v) for k, v in read_npz(path).items()}
    raise ValueError(f"{path}: unknown weights file type {path.suffix!r} "
                     f"(accepted: {SAFETENSORS_SUFFIXES + TORCH_SUFFIXES + ('.npz',)})")
