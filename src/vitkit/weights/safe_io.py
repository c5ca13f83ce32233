"""Safe reading of checkpoint files: safetensors, PyTorch pickles (weights only), ``.npz``, sharded folders.

Nothing here ever runs code from a file:

- safetensors headers are checked by the safetensors library itself (length,
  JSON, offsets without gaps or overlaps, shape x dtype == byte span, total ==
  file size) before any tensor is read, its errors worded here; a dtype
  relabelled over float data is caught by :func:`check_tensor_dtypes`;
- PyTorch ``.pth``/``.bin`` go through ``torch.load(weights_only=True)`` only,
  never a fallback to full unpickling; TorchScript archives and legacy ``.tar``
  checkpoints are refused; foreign Python objects are named in the error;
- ``.npz`` members have their ``.npy`` headers checked (no object dtype, size
  matching the stored bytes) before ``np.load(allow_pickle=False)`` reads them;
- sharded index files may only name shards inside their own folder (a shard that
  is a symlink, as in the huggingface_hub cache, must resolve into that cache
  repository's ``blobs/`` or into the folder itself).

Every error is a ``ValueError`` (or ``FileNotFoundError``) naming the file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import pickletools
import re
import struct
import tarfile
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from safetensors import SafetensorError

from ..utils.jsonfile import read_json

# bytes per element of each safetensors dtype
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit for the JSON header (the library enforces it)
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

# The safetensors library validates a header itself (checked for safetensors 0.8.0, the version installed
# when this was written; tests/test_weights_reliability.py holds each case): the 8-byte length against the
# file size and its own 100 MB limit, UTF-8, JSON (serde_json, nesting limited to 128 levels, so
# "[" * 100000 is an error, not a RecursionError), the field types (dtype names, non-negative integer
# shapes, two offsets), shape x dtype == byte span, offsets without gaps or overlaps, and the data covering
# the file exactly (no truncation, no trailing bytes). It misses none of these, so vitkit adds no check of
# its own; it only words the library's errors for a person. Both spellings of each error are matched: the
# text of safetensors >= 0.5 ("invalid offset for tensor `b`") and the enum names older versions printed
# ("InvalidOffset(\"b\")").
_SAFETENSORS_ERRORS = (  # (pattern in the library's message, kind), tried in order
    (r"header too small|HeaderTooSmall", "small"),
    (r"header too large|HeaderTooLarge|invalid header length|InvalidHeaderLength", "length"),
    (r"recursion limit", "nested"),
    (r"unknown variant `([^`]*)`", "dtype"),
    (r"invalid UTF-8|InvalidHeader\b(?!Start|Deserialization|Length)", "utf8"),
    (r"invalid offset for tensor `([^`]*)`|InvalidOffset\(\"?([^\")]*)", "offset"),
    (r"invalid shape, data type, or offset|TensorInvalidInfo", "span"),
    (r"incomplete metadata|MetadataIncompleteBuffer", "coverage"),
    (r"overflow|ValidationOverflow", "overflow"),
    (r"expected struct HashMetadata", "not_object"),
    (r"invalid JSON in header: (.*)|InvalidHeaderDeserialization|InvalidHeaderStart", "json"),
)


def _safetensors_json(path: Path) -> tuple[int, dict] | None:
    """(header length, header) of a file whose header the library has already parsed (so it is a flat
    object nested at most 128 levels: safe for json.loads); None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return n, json.loads(f.read(n))
    except Exception:  # only used to word an error the library has already raised
        return None


def _explain_safetensors_error(path: Path, err: Exception) -> ValueError:
    """The library's error as a one-line ValueError naming the file and the problem in plain words."""
    lib = str(err).splitlines()[0] if str(err) else type(err).__name__
    lib = lib.removeprefix("Error while deserializing header: ")
    size = path.stat().st_size
    kind, m = "other", None
    for pattern, k in _SAFETENSORS_ERRORS:
        m = re.search(pattern, lib)
        if m:
            kind = k
            break
    if kind == "small":
        why = f"the file has only {size} bytes, too few for the 8-byte header length and a header"
    elif kind == "length":
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        why = (f"the header claims {n} bytes but the file has only {size - 8} after the length field (truncated "
               "or not a safetensors file)" if n > size - 8 else
               f"the header claims {n} bytes, more than the {MAX_HEADER_BYTES} the format allows")
    elif kind == "nested":
        why = "the header is JSON nested too deeply (not a safetensors header)"
    elif kind == "dtype":
        why = f"a tensor has unknown dtype {m.group(1)!r}"
    elif kind == "utf8":
        why = "the header is not UTF-8 text"
    elif kind == "offset":
        name = next(g for g in m.groups() if g is not None)
        why = (f"tensor {name!r} does not start where the tensor before it ends: a gap or an overlap in the data "
               "(or offsets outside it)")
    elif kind == "span":
        why = "a tensor's shape x dtype does not match the byte span of its data_offsets"
        parsed = _safetensors_json(path)
        for name, info in (parsed[1] if parsed else {}).items():  # name the first such tensor
            if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") not in SAFETENSORS_DTYPES:
                continue
            want = math.prod(info["shape"]) * SAFETENSORS_DTYPES[info["dtype"]]
            a, b = info["data_offsets"]
            if b - a != want:
                why = (f"tensor {name!r} of shape {info['shape']} and dtype {info['dtype']} needs {want} bytes "
                       f"but its data_offsets {[a, b]} span {b - a}")
                break
    elif kind == "coverage":
        why = "the tensors do not cover the data exactly"
        parsed = _safetensors_json(path)
        if parsed:
            n, header = parsed
            end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"
                       and isinstance(t, dict)], default=0)
            have = size - 8 - n
            why = (f"the tensors need {end} data bytes but the file holds {have} (truncated)" if end > have else
                   f"{have - end} bytes after the last tensor are not described by the header")
    elif kind == "overflow":
        why = "a tensor's shape is too large (its byte size overflows)"
    elif kind == "not_object":
        why = "the header is not a JSON object of tensors"
    elif kind == "json":
        why = "the header is not valid safetensors JSON" + (f": {m.group(1)}" if m.groups() and m.group(1) else "")
    else:
        why = "it could not be read"
    return ValueError(f"{path}: not a valid safetensors file: {why} (safetensors: {lib[:200]})")


def check_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Validate a safetensors file's header (by the safetensors library); returns {name: {dtype, shape,
    data_offsets}}."""
    from safetensors import safe_open

    path = _check_file(Path(path))
    try:
        with safe_open(str(path), framework="pt", device="cpu"):
            pass
    except (SafetensorError, OSError) as e:
        raise _explain_safetensors_error(path, e) from None
    parsed = _safetensors_json(path)  # validated above
    if parsed is None:
        raise ValueError(f"{path}: could not read the safetensors header")
    return {k: v for k, v in parsed[1].items() if k != "__metadata__"}


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; the library checks the header before reading any data."""
    from safetensors.torch import load_file

    path = _check_file(Path(path))
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise _explain_safetensors_error(path, e) from None
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a dtype this torch build lacks
        raise ValueError(f"{path}: could not read safetensors data: {str(e).splitlines()[0][:300]}") from None


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file (header checked by the library)."""
    from safetensors import safe_open

    path = _check_file(Path(path))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata()
    except (SafetensorError, OSError) as e:
        raise _explain_safetensors_error(path, e) from None
    return dict(meta) if isinstance(meta, dict) else {}


def check_tensor_dtypes(state: Mapping[str, object], source: str | os.PathLike,
                        float_keys: Iterable[str] | None = None) -> None:
    """Refuse integer, boolean or complex tensors where floating-point weights are expected; never casts.

    ``float_keys``: the keys that must be floating point (default: every tensor in ``state``); keys absent
    from ``state`` are left to the missing-keys check. A safetensors header whose dtype was relabelled
    (I32 over F32 data: the byte span is the same, so the format's own checks pass) is caught here.
    """
    keys = list(state) if float_keys is None else [k for k in float_keys if k in state]
    bad = [(k, state[k].dtype) for k in keys
           if isinstance(state[k], torch.Tensor) and not state[k].is_floating_point()]
    if bad:
        shown = ", ".join(f"{k!r} ({str(d).removeprefix('torch.')})" for k, d in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(f"{source}: {len(bad)} tensor(s) that must hold floating-point weights are stored as "
                         f"{'/'.join(sorted({str(d).removeprefix('torch.') for _, d in bad}))}: {shown}{more} "
                         "(a relabelled dtype in the file, or not model weights); refused, not cast")


# --- PyTorch pickles --------------------------------------------------------------

_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING")


def _py3_global(module: str, name: str = "") -> str:
    """``module.name`` as Python 3 imports it (protocol <= 2 pickles say ``__builtin__``, ``copy_reg``...),
    the mapping ``pickle`` itself applies."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _pickle_stream_globals(f) -> tuple[list[str], bool]:
    """The globals one pickle in ``f`` refers to, read from its opcodes (nothing is unpickled); leaves ``f``
    just after the pickle's STOP. Returns (names, whether the pickle ended with STOP)."""
    names: list[str] = []
    pushed: list[object] = []  # what each opcode pushed: a string, or None for anything else
    memo: dict[int, object] = {}
    try:
        for op, arg, _ in pickletools.genops(f):
            name = op.name
            if name in _STRING_OPS:
                pushed.append(arg)
            elif name == "MEMOIZE":  # protocol 4: memo[len(memo)] = top of the stack
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))
            elif name in ("GLOBAL", "INST"):
                names.append(_py3_global(*str(arg).split(" ", 1)))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                module, qualname = (pushed[-2:] + [None, None])[:2] if len(pushed) >= 2 else (None, None)
                if isinstance(module, str) and isinstance(qualname, str):
                    names.append(f"{module}.{qualname}")
                pushed.append(None)
            elif name == "STOP":
                return names, True
            elif name != "FRAME":
                pushed.append(None)
    except Exception:  # a damaged stream: report what was found so far
        pass
    return names, False


def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` of every class/function a pickle refers to, read without unpickling it."""
    import io

    return sorted(set(_pickle_stream_globals(io.BytesIO(data))[0]))


def _allowed_globals() -> set[str] | None:
    """What ``torch.load(weights_only=True)`` accepts (torch's own allow-list), or None if unknown."""
    try:
        from torch import _weights_only_unpickler as wou  # private, so guarded: a prefix rule stands in

        return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:
        return None


# globals a plain state dict is made of, when torch's own list is not available (only the error's wording
# depends on it: the refusal itself is torch.load's)
_PLAIN_GLOBALS_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                           "builtins.bytearray", "_codecs.encode")


def _payload_globals(path: Path) -> list[str]:
    """Globals in a checkpoint's pickles that weights-only loading refuses (``module.qualname``).

    A zip checkpoint has one pickle (``*/data.pkl``); a legacy one (``_use_new_zipfile_serialization=False``)
    is several pickles in a row (magic number, protocol, system info, the object, storage keys) and then the
    raw storages: the pickles are read one after another until one is not a pickle.
    """
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
                if pkl:
                    with z.open(pkl[0]) as f:
                        found = _pickle_stream_globals(f)[0]
        else:
            with open(path, "rb") as f:
                for _ in range(5):
                    names, complete = _pickle_stream_globals(f)
                    found += names
                    if not complete:
                        break
    except Exception:
        pass
    allowed = _allowed_globals()
    unsafe = {g for g in found if (g not in allowed if allowed is not None else
                                   not g.startswith(_PLAIN_GLOBALS_PREFIXES))}
    return sorted(unsafe)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _unpickling_reason(e: Exception) -> str:
    """The specific line of torch's weights-only refusal, without its advice to load unsafely or ANSI codes."""
    text = _ANSI.sub("", str(e))
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return m.group(1)
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    line = m.group(1) if m else (text.strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"[^.]*weights_only[^.]*\.?", "", line).strip()[:200] or type(e).__name__


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
        found = _payload_globals(path)
        what = (f"Python objects other than tensors and plain containers: {', '.join(found)}" if found else
                f"something weights-only loading does not accept ({_unpickling_reason(e)})")
        raise ValueError(f"{path}: refused to load: the pickle holds {what}. vitkit only loads with "
                         "torch.load(weights_only=True) and never unpickles anything else; save a plain state "
                         "dict (torch.save(model.state_dict(), ...)) or safetensors instead.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{_ANSI.sub('', str(e)).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
    return obj


# --- npz -------------------------------------------------------------------------

# what numpy raises for a malformed .npy header: its own ValueError, and what its header parser lets escape
# (ast.literal_eval's SyntaxError, tokenize's TokenError for unbalanced quotes or brackets, ...)
_NPY_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, OverflowError, TypeError, KeyError, MemoryError,
                      RecursionError, EOFError, UnicodeDecodeError, struct.error)


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, header length) of one ``.npy`` member, or a ValueError naming the file and member."""
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except _NPY_HEADER_ERRORS as e:
            msg = " ".join(str(e).split())[:200] or type(e).__name__
            raise ValueError(f"{path}: member {info.filename!r}: its .npy header is not valid "
                             f"({type(e).__name__}: {msg})") from None
        return shape, dtype, f.tell()


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file; object arrays and inconsistent headers are refused before reading data."""
    path = _check_file(Path(path))
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"{path}: member {info.filename!r} is not a .npy array")
                shape, dtype, header_len = _npy_header(z, info, path)
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
    except (zipfile.BadZipFile, OSError, OverflowError, EOFError, SyntaxError, struct.error, MemoryError,
            tokenize.TokenError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable .npz file (corrupt or truncated): {type(e).__name__}: {e}") from None


# --- folders with shards ----------------------------------------------------------------

def _hub_blobs(folder: Path) -> Path | None:
    """For a huggingface_hub snapshot folder ``<repo>/snapshots/<rev>`` (resolved), its ``<repo>/blobs``."""
    blobs = folder.parent.parent / "blobs"
    if folder.parent.name == "snapshots" and blobs.is_dir() and not blobs.is_symlink():
        return blobs
    return None


def _check_shard_name(index_path: Path, folder: Path, shard: str) -> Path:
    """The path of one shard named by an index: a plain file name in the index's folder; a symlink must
    resolve into the folder itself or, in a huggingface_hub cache snapshot, into its repository's blobs/."""
    if (not shard or shard in (".", "..") or "/" in shard or "\\" in shard or "\0" in shard
            or Path(shard).is_absolute()):
        raise ValueError(f"{index_path}: shard name {shard!r} points outside the checkpoint folder; refused "
                         "(a shard must be a plain file name next to the index)")
    entry = folder / shard
    if entry.is_symlink():
        target = entry.resolve()
        roots = [folder] + [b for b in [_hub_blobs(folder)] if b is not None]
        if not any(target.is_relative_to(r) for r in roots):
            raise ValueError(f"{index_path}: shard {shard!r} is a symlink to {str(target)!r}, outside the "
                             f"checkpoint folder{' and its hub cache blobs/' if len(roots) > 1 else ''}; refused")
    return entry


def read_sharded(index_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint (``*.index.json`` with a ``weight_map``); shards must lie in its folder
    (as symlinks into the repository's ``blobs/`` in a huggingface_hub cache)."""
    index_path = _check_file(Path(index_path))
    index = read_json(index_path, max_bytes=MAX_INDEX_BYTES)
    wmap = index.get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise ValueError(f"{index_path}: no 'weight_map' of tensor name -> shard file name")
    folder = index_path.parent.resolve()
    shards = sorted(set(wmap.values()))
    paths = [_check_shard_name(index_path, folder, shard) for shard in shards]
    state: dict[str, torch.Tensor] = {}
    for p in paths:
        part = read_state_file(p)
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
