"""One training run per run folder at a time (RELIABILITY item 36).

A run holds an exclusive ``fcntl.flock`` on ``RUN/.lock`` for its lifetime (rank 0 only:
it is the process that writes). A second ``vitkit train`` on the same ``--out`` fails at once
with :class:`RunLockedError` naming the lock file and the holder's process id. The lock
belongs to the open file, so the kernel releases it when the holder exits in any way,
kill -9 included: a ``.lock`` file left behind by a killed run does not block the next one.
The file is never deleted (deleting a flock'ed file lets two processes lock two different
files of the same name).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

LOCK_NAME = ".lock"


class RunLockedError(UserError):
    """Another process is training into this run folder."""


class RunLock:
    """``RunLock(run_dir).acquire()`` ... ``release()``; also a context manager."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None or fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EWOULDBLOCK: held by a live process
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by another vitkit train (process {holder} holds the "
                                 f"lock {self.path}); wait for it to finish, stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
