"""Dynamic batching on one worker thread: a bounded queue of jobs, grouped by shape.

A job waits at most ``max_delay_s`` for company: the worker takes the group whose oldest job is
oldest, and runs it as soon as the group reaches its cap (``cap(key)``: images and tokens) or its
oldest job has waited ``max_delay_s``. Only the worker thread runs the model; callers get a
``concurrent.futures.Future`` (``asyncio.wrap_future`` it on an event loop). A job whose future was
cancelled before its batch started (the request timed out) is dropped, not run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence


class QueueFull(Exception):
    """The batcher holds ``max_queue`` jobs already."""


class ShuttingDown(Exception):
    """The batcher is stopping and takes no new jobs."""


@dataclass
class Job:
    key: Hashable  # jobs share a batch only with the same key
    payload: Any
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # when its batch started (perf_counter)
    batch_size: int = 0  # how many jobs its batch held


class DynamicBatcher:
    """``run(key, payloads) -> results`` (one per payload, in order) is called on the worker thread
    with up to ``cap(key)`` payloads of one key. ``on_batch(key, jobs, seconds, error)`` is called after each
    batch (metrics). ``run`` raising fails every job of that batch with the exception; the next batch runs."""

    def __init__(self, run: Callable[[Hashable, list], Sequence], cap: Callable[[Hashable], int], *,
                 max_delay_s: float = 0.01, max_queue: int = 128,
                 on_batch: Callable[[Hashable, list[Job], float, BaseException | None], None] | None = None,
                 name: str = "vitkit-batcher"):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self._run, self._cap, self._on_batch = run, cap, on_batch
        self.max_delay_s, self.max_queue = max_delay_s, max_queue
        self._groups: OrderedDict[Hashable, deque[Job]] = OrderedDict()
        self._depth = 0
        self._cond = threading.Condition()
        self._stopping = False
        self.batches_run = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet in a running batch)."""
        return self._depth

    def submit(self, key: Hashable, payload: Any) -> Job:
        """Queue one job; raises :class:`QueueFull` at once when ``max_queue`` jobs wait."""
        job = Job(key, payload)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the service is shutting down")
            if self._depth >= self.max_queue:
                raise QueueFull(f"{self._depth} requests are queued (the limit, --max-queue {self.max_queue})")
            self._groups.setdefault(key, deque()).append(job)
            self._depth += 1
            self._cond.notify()
        return job

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the queued jobs, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the worker ------------------------------------------------------------------------------
    def _next_batch(self) -> tuple[Hashable, list[Job]] | None:
        with self._cond:
            while True:
                # drop groups emptied by cancellations
                for k in [k for k, q in self._groups.items() if not q]:
                    del self._groups[k]
                if not self._groups:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                now = time.perf_counter()
                key, q = min(self._groups.items(), key=lambda kv: kv[1][0].enqueued)
                cap = self._cap(key)
                due = q[0].enqueued + self.max_delay_s
                full = [k for k, g in self._groups.items() if len(g) >= self._cap(k)]
                if full and len(q) < cap:
                    key, q = full[0], self._groups[full[0]]
                    cap = self._cap(key)
                if len(q) >= cap or now >= due or self._stopping:
                    jobs = [q.popleft() for _ in range(min(cap, len(q)))]
                    self._depth -= len(jobs)
                    return key, jobs
                self._cond.wait(timeout=due - now)

    def _loop(self) -> None:
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            key, jobs = nxt
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # timed-out requests: dropped
            if not jobs:
                continue
            t0 = time.perf_counter()
            for j in jobs:
                j.started, j.batch_size = t0, len(jobs)
            error: BaseException | None = None
            try:
                results = list(self._run(key, [j.payload for j in jobs]))
                if len(results) != len(jobs):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(jobs)} jobs")
            except BaseException as e:  # noqa: BLE001 - the batch fails, the worker goes on
                error = e
            seconds = time.perf_counter() - t0
            self.batches_run += 1
            for i, j in enumerate(jobs):
                if error is None:
                    j.future.set_result(results[i])
                else:
                    j.future.set_exception(error)
            if self._on_batch is not None:
                try:
                    self._on_batch(key, jobs, seconds, error)
                except Exception:  # noqa: BLE001 - metrics never stop the worker
                    pass
