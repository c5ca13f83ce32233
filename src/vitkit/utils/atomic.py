"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> Path:
    """Fail early (before any work) for an output that could not be written: a folder, a missing
    parent folder, or a name without one of ``suffixes``."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"output {str(path)!r}: give a name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise IsADirectoryError(f"output {str(path)!r} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {str(folder)!r} does not exist")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    The temporary file sits beside ``path`` and keeps its suffix (so ``np.save`` and
    ``savefig`` see the right extension). Used by every writer in vitkit except the
    training checkpoints (train/checkpoint.py also fsyncs the folder and reports a full disk).

    A failure (or a kill) part-way leaves any existing file at ``path`` untouched.
    """
    path = check_output_path(path)
    folder = path.parent
    # a fresh name beside the target (same file system, so the rename is atomic); created with
    # the usual permissions (umask), which mkstemp's 0600 would not give
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}"
    open(tmp, "xb").close()
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return atomic_write(path, write)
