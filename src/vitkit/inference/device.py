"""Where and in which precision inference runs: ``cpu``, ``cuda``, ``mps`` or ``auto``; fp32, bf16, fp16."""

from __future__ import annotations

import contextlib

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available (clear error if not)."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"unknown device {name!r}; accepted: {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but MPS (Apple GPU) is not available here; "
                         "use --device cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere; bf16 on cpu, mps and bf16-capable cuda; fp16 on cuda and mps."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; accepted: {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 inference needs a cuda or mps device; on the CPU use auto (bf16 where the CPU has "
                         "AMX or AVX512-BF16, else fp32) or fp32")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA device does not support bf16; use fp16 or fp32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """A mixed-precision context for ``dtype`` (nothing for fp32). The model's weights stay as they are."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
