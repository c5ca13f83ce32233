"""One benchmark step for a PyTorch model: inference, or a training step (forward, backward, AdamW).

:func:`prepare_model` puts a model in the dtype / memory format a run asks for;
:func:`make_step` returns a zero-argument callable that runs one step on a fixed
batch, optionally through ``torch.compile`` and/or captured into a CUDA graph.
The same code serves vitkit and its peers, so they are timed doing the same work.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..inference.cpu import optimize_for_cpu
from .fp8 import convert_to_fp8
from .sdpa import sdpa_context

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


@dataclass
class StepSpec:
    """How to run one implementation."""

    mode: str = "infer"  # "infer" | "train"
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | fp8 (vitkit only; its non-FP8 parts run bf16)
    compile: str = "off"  # torch.compile mode, or "off"
    cuda_graphs: bool = False
    channels_last: bool = False
    sdpa: list | None = None  # SDPA kernels in priority order (vitkit.bench.sdpa), None = PyTorch's choice
    cpu_linear: str = "aten"  # CPU inference: "onednn", "aten" or "auto" (vitkit.inference.cpu.optimize_for_cpu);
    #                           prepare_model replaces "auto" with the kernel it chose


def fused_adamw(params, device: torch.device, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW with the fused (single-kernel) implementation where this PyTorch has it for the device."""
    params = [p for p in params if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True, capturable=capturable)
    except (RuntimeError, ValueError):  # no fused kernel for this device/dtype
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True, capturable=capturable)


def prepare_model(model: nn.Module, spec: StepSpec, device: torch.device, rows: int | None = None) -> nn.Module:
    """Move to ``device``; for inference cast weights to the run's dtype (training keeps fp32 master
    weights and uses autocast); fp8 swaps the block Linears for FP8 ones; the CPU Linear kernel
    (chosen on ``rows`` tokens, batch x tokens); channels-last patch kernel."""
    model = model.to(device)
    if spec.mode == "infer":
        model.eval()
        model.to(TORCH_DTYPES[spec.dtype])
        if spec.dtype == "fp8":
            convert_to_fp8(model)
        if spec.cpu_linear != "aten":
            spec.cpu_linear = optimize_for_cpu(model, spec.cpu_linear, rows)
    else:
        model.train()
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)  # only 4-D tensors change: the patch kernel
    return model


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.ndim == 2 and out.shape[-1] > 1 and y is not None:
        return F.cross_entropy(out.float(), y)
    return out.float().pow(2).mean()  # a headless model: any scalar that reaches every parameter


@dataclass
class Step:
    """A callable step plus what the memory report needs (its optimizer) and a way to read outputs."""

    run: Callable[[], object]
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, spec: StepSpec,
              device: torch.device) -> Step:
    """A callable running one step of ``model`` (already through :func:`prepare_model`) on batch ``x``.

    Inference: ``model(x)`` under inference_mode. Training: zero grads, forward under
    autocast (bf16/fp16), cross-entropy, backward, fused AdamW step; fp16 uses a GradScaler.
    CUDA graphs capture the whole step after three warm-up calls on a side stream
    (PyTorch's "whole network capture"); replays then re-run it on the same ``x``.
    """
    dt = TORCH_DTYPES[spec.dtype]
    x = x.to(device)
    x = x.to(dt) if spec.mode == "infer" else x.float()
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(device) if y is not None else None
    fn = model if spec.compile == "off" else \
        torch.compile(model, mode=None if spec.compile == "default" else spec.compile)

    if spec.mode == "infer":
        def run():
            with torch.inference_mode(), sdpa_context(spec.sdpa):
                return fn(x)
        optimizer = None
    else:
        optimizer = fused_adamw(model.parameters(), device, capturable=spec.cuda_graphs)
        amp = dt != torch.float32
        scaler = torch.amp.GradScaler(device.type) if dt == torch.float16 else None
        # autocast's weight cache must be off inside a CUDA graph capture
        autocast = (lambda: torch.autocast(device.type, dtype=dt, cache_enabled=not spec.cuda_graphs)) if amp \
            else contextlib.nullcontext

        def run():
            optimizer.zero_grad(set_to_none=not spec.cuda_graphs)
            with autocast(), sdpa_context(spec.sdpa):
                loss = _loss(fn(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            return loss

    if not spec.cuda_graphs:
        return Step(run, model, optimizer)
    if device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    if spec.mode == "train" and dt == torch.float16:
        raise ValueError("CUDA graphs cannot capture fp16 training (the loss scaler checks for inf on the host); "
                         "use bf16")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the graph: lazy inits, cuBLAS workspaces, autotuning
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)  # grads get allocated from the graph's private pool
    with torch.cuda.graph(graph):
        run()
    return Step(graph.replay, model, optimizer)
