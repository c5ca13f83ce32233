"""Distributed set-up: torchrun's environment -> process group, device, DDP or FSDP wrapping,
full (unsharded) state dicts for rank-0 checkpointing, and small collective helpers.

Run under ``torchrun --nproc_per_node N`` (several nodes: ``--nnodes``, ``--node_rank`` and a
rendezvous endpoint); without torchrun everything here is a no-op for one process.
Backend: NCCL when the processes use CUDA devices, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# The label of the padding items that even out the validation batches across processes (Trainer.val_batches):
# below every class label (>= 0) and below the -1 of an unlabelled image (data/unlabelled.py), so a task can
# drop the padding and keep unlabelled images.
PAD_LABEL = -2


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK, pick the device and start the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "auto":
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here")
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, fsdp: bool) -> nn.Module:
    """DDP over the processes, or FSDP2 (``fully_shard`` per block, then the root). One process: as is."""
    if fsdp:
        if not info.enabled:
            return model  # one process: nothing to shard
        from torch.distributed.fsdp import fully_shard

        for blk in getattr(model, "blocks", []):
            fully_shard(blk)
        return fully_shard(model)
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The VisionTransformer under DDP / torch.compile wrappers (FSDP2 modifies the module in place)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def is_sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(unwrap(model), FSDPModule)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU, whichever way the model is wrapped (collective under FSDP:
    every rank must call it; the result is complete on rank 0)."""
    m = unwrap(model)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    m = unwrap(model)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(m, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    else:
        m.load_state_dict(state)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state, complete and keyed by parameter name (``blocks.0.attn.qkv.weight``), the
    same whether the run was one process, DDP or FSDP (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(model)))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # A parameter that has not taken a step yet (DINO's last layer, frozen in the first epoch) has no optimizer
    # state in the checkpoint, as in the run that wrote it. torch initialises missing states with a zero-gradient
    # step (Adam's step count 1), so those states are removed again: its first real step is then the same.
    saved = set((state or {}).get("state", {}))
    set_optimizer_state_dict(unwrap(model), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False, strict=False))
    if saved:
        for name, p in unwrap(model).named_parameters():
            if name not in saved and p in optimizer.state:
                del optimizer.state[p]


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
