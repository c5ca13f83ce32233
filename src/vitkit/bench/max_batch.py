"""The largest batch that fits: double until a step runs out of memory, then bisect."""

from __future__ import annotations

import gc
from typing import Callable

import torch


def is_oom(e: BaseException) -> bool:
    """True for the allocator's out-of-memory errors (CUDA, and cuDNN/cuBLAS allocation failures)."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "cudnn_status_alloc_failed" in msg
                                            or "cublas_status_alloc_failed" in msg)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def find_max_batch(try_batch: Callable[[int], None], start: int = 1, limit: int = 4096) -> dict:
    """Largest batch ``b <= limit`` for which ``try_batch(b)`` runs without running out of memory.

    ``try_batch`` runs one full step at batch ``b`` and raises on OOM; other errors
    propagate. Returns {"max_batch": b (0 if even ``start`` fails), "tried": [(b, fits), ...],
    "hit_limit": True when ``limit`` itself fits (the real maximum may be larger)}.
    Assumes memory grows with batch size, so "fits" is monotone.
    """
    if not 1 <= start <= limit:
        raise ValueError(f"max-batch search needs 1 <= start ({start}) <= limit ({limit})")
    tried: list[tuple[int, bool]] = []

    def fits(b: int) -> bool:
        try:
            try_batch(b)
            ok = True
        except Exception as e:  # noqa: BLE001 - only OOM is swallowed; anything else re-raised
            if not is_oom(e):
                raise
            ok = False
            _release()  # drop what the failed step left behind before the next try
        tried.append((b, ok))
        return ok

    if not fits(start):
        return {"max_batch": 0, "tried": tried, "hit_limit": False}
    lo, hi = start, None  # lo fits; hi (when known) does not
    while hi is None:
        nxt = min(lo * 2, limit)
        if nxt == lo:  # lo == limit
            return {"max_batch": lo, "tried": tried, "hit_limit": True}
        if fits(nxt):
            lo = nxt
        else:
            hi = nxt
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return {"max_batch": lo, "tried": tried, "hit_limit": False}
