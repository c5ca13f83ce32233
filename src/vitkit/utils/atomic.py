"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A write that fails (full disk, read-only file system, no permission) raises
:class:`OutputWriteError`, whose message is one line naming the file and the cause,
``could not write PATH: the disk is full; the previous version is kept``; the CLI prints it
as ``vitkit: error: ...`` (RELIABILITY items 22 and 38).
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Callable, Sequence

from .names import printable

# what a user should read for the errors a writer meets; any other errno keeps the system's wording
_WHY = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied",
        getattr(errno, "EDQUOT", -1): "the disk quota is exceeded"}


class OutputWriteError(OSError):
    """An output could not be written (disk full, read-only, no permission...); a file already at
    that path is kept. ``str()`` is the one-line message (no ``[Errno N]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


def reason(e: OSError) -> str:
    """Why a write failed, in words: 'the disk is full', 'the file system is read-only'..."""
    return _WHY.get(e.errno) or e.strerror or str(e)


def write_error(path: str | os.PathLike, e: OSError) -> OutputWriteError:
    """The :class:`OutputWriteError` for ``e``, raised while writing ``path``."""
    if isinstance(e, OutputWriteError):
        return e
    why = reason(e)
    kept = "; the previous version is kept" if os.path.lexists(path) else ""
    return OutputWriteError(e.errno, f"could not write {printable(os.fspath(path))}: {why}{kept}")


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...] = ()) -> Path:
    """Fail early (before any work) for an output that could not be written: a folder, a missing
    or read-only parent folder, or a name without one of ``suffixes``."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"output {printable(str(path))!r}: give a name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise IsADirectoryError(f"output {printable(str(path))!r} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {printable(str(folder))!r} does not exist")
    if not os.access(folder, os.W_OK):  # as root this is always true: the write itself still reports
        raise PermissionError(f"output folder {printable(str(folder))!r} is not writable")
    return path


def _tmp_name(path: Path) -> Path:
    # a fresh name beside the target (same file system, so the rename is atomic); it keeps the
    # suffix, so np.save and savefig see the right extension
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}"


def atomic_write_all(items: Sequence[tuple[str | os.PathLike, Callable[[Path], None]]]) -> list[Path]:
    """Write several files that belong together (e.g. an array and its sidecar): every
    ``write(tmp_path)`` runs and is fsync'ed first, and only then are the files renamed into
    place, so a full disk or an error part-way leaves all the previous files untouched."""
    paths = [check_output_path(p) for p, _ in items]
    tmps: list[Path] = []
    try:
        for path, (_, write) in zip(paths, items):
            tmp = _tmp_name(path)
            try:
                # created with the usual permissions (umask), which mkstemp's 0600 would not give
                open(tmp, "xb").close()
                tmps.append(tmp)
                write(tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            except OSError as e:
                raise write_error(path, e) from None
        for path, tmp in list(zip(paths, tmps)):
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise write_error(path, e) from None
            tmps.remove(tmp)
    finally:
        for tmp in tmps:  # left only by a failure
            try:
                tmp.unlink()
            except OSError:
                pass
    return paths


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    The temporary file sits beside ``path`` and keeps its suffix. Used by every writer in
    vitkit except the training checkpoints (train/checkpoint.py also fsyncs the folder).
    A failure (or a kill) part-way leaves any existing file at ``path`` untouched; an
    ``OSError`` becomes :class:`OutputWriteError`.
    """
    return atomic_write_all([(path, write)])[0]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return atomic_write(path, write)
