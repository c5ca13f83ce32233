"""Training checkpoints: atomic writes, last-k and best, random-number-generator states.

A checkpoint is one ``torch.save`` file read back with ``torch.load(weights_only=True)``
(tensors, numbers, strings, lists and dicts only: no pickled objects). It is written to a
temporary file in the same folder, flushed and fsync'ed, then renamed over the target
(``os.replace`` is atomic), and the folder is fsync'ed: a kill -9 or a full disk during a
write leaves the previous checkpoint intact (RELIABILITY items 19 and 22).

Layout in a run folder::

    checkpoints/step_00000120.pt   the last ``keep_last`` step checkpoints
    checkpoints/best.pt            the best validation top-1 so far
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.atomic import OutputWriteError, write_error

FORMAT = "vitkit-train"
FORMAT_VERSION = 1
STEP_RE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(OutputWriteError):
    """A checkpoint (or another file of the run folder) could not be written (disk full,
    read-only, permissions...); the previous one is kept. ``str()`` is the one-line message."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(e.errno, write_error(path, e).strerror) from None
    _fsync_dir(path.parent)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Serialise ``state`` and write it atomically (see the module docstring)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``); clear errors for missing or bad files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"{path} holds no training checkpoint (looked for checkpoints/step_*.pt)")
        path = latest
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, not a torch file...
        raise ValueError(f"{path} is not a readable vitkit training checkpoint: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vitkit training checkpoint (no format={FORMAT!r} field)")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format_version {state.get('format_version')!r}")
    state["_path"] = str(path)
    return state


def prefers_ema(last_val: dict[str, Any] | None, has_ema: bool) -> bool:
    """Whether a run's weights for inference are the EMA's: when its last validation scored them higher.
    The one rule behind ``RUN/model`` and a checkpoint given to ``vitkit.load``."""
    last_val = last_val or {}
    return has_ema and (last_val.get("ema_top1") or -1) > (last_val.get("top1") if last_val.get("top1") is not None
                                                            else -1)


def inference_weights(state: dict[str, Any]) -> tuple[str, dict[str, torch.Tensor]]:
    """("ema" | "model" | "encoder" | "teacher", state dict) of a training checkpoint: the weights its run would
    save as its model. A pre-training task names where its ViT lives (``task.inference``: a dotted key of the
    checkpoint and a key prefix): MAE's encoder inside the model, DINO's teacher backbone in the task state."""
    src = (state.get("task") or {}).get("inference")
    if src:
        holder: Any = state
        for part in src["key"].split("."):
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            raise ValueError(f"{state.get('_path', 'checkpoint')}: holds no {src['key']} state dict")
        prefix = src["prefix"]
        return src.get("which", "model"), {k[len(prefix):]: v for k, v in holder.items() if k.startswith(prefix)}
    ema = state.get("ema")
    if prefers_ema(state.get("progress", {}).get("last_val"), bool(ema)):
        return "ema", ema["model"]
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{state.get('_path', 'checkpoint')}: holds no model state dict")
    return "model", state["model"]


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints of a run folder (or of a checkpoints folder), oldest first."""
    d = Path(run_dir)
    if (d / "checkpoints").is_dir():
        d = d / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := STEP_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1][1] if found else None


def checkpoint_to_resume(run_dir: str | os.PathLike) -> Path:
    """The newest step checkpoint of a run folder (``--resume`` without a path), or a FileNotFoundError saying
    there is none."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"nothing to resume: {run_dir} holds no checkpoint (checkpoints/step_*.pt)")
    return latest


def prune(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete step checkpoints beyond the newest ``keep_last`` (after the new one is in place)."""
    for _, p in step_checkpoints(run_dir)[:-keep_last]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# --- random-number-generator states --------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as weights_only-loadable values."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state = {"python": [py_version, list(py_internal), py_gauss],
             "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                       "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
