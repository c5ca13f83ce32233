"""Peak memory of one step: the CUDA allocator's high-water mark, or a tensor tracker on the CPU."""

from __future__ import annotations

import weakref
from typing import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by these tensors, each storage counted once."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        s = t.untyped_storage()
        key = (s.data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += s.nbytes()
    return total


def resident_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Parameters, buffers, gradients and optimizer state: what stays allocated between steps."""
    ts = list(model.parameters()) + list(model.buffers())
    ts += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        for st in optimizer.state.values():
            ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(ts)


class _LiveTensors(TorchDispatchMode):
    """Counts bytes of storages created by ops while active, freeing them when Python drops them."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # storages the inputs already had: an output on one of them is a view or in-place result
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == "cpu"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                s = t.untyped_storage()
                key = id(s) if s.data_ptr() == 0 else s.data_ptr()
                if key in self.seen or key in inputs:
                    continue  # a view, or an in-place result: no new memory
                self.seen.add(key)
                n = s.nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(s, self._free, key, n)
        return out


def cpu_step_peak_bytes(step: Callable[[], object]) -> int:
    """Largest number of bytes of new tensors alive at once during one eager call of ``step`` (CPU)."""
    mode = _LiveTensors()
    with mode:
        step()
    return mode.peak


def cuda_step_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """The allocator's high-water mark during one call of ``step``, above what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
