"""Choosing the scaled-dot-product-attention kernel (flash, cuDNN, memory-efficient, math).

PyTorch picks a kernel per call from the inputs; vitkit's bench may state its own
order. On Hopper, for bf16/fp16 and head_dim <= 128, cuDNN's kernel was the fastest
of the three at ViT shapes (issue 6: 0.21 ms vs 0.29 ms flash vs 0.47 ms efficient at
197 tokens, 12 heads of 64, batch 256), so "auto" puts it first and falls back in order.
None of these materialise the (B, heads, N, N) matrix; only "math" does.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def choose_sdpa_backends(choice: str, device_type: str, dtype: torch.dtype, head_dim: int) -> list[SDPBackend] | None:
    """The kernels to allow, in priority order, or None for PyTorch's own dispatch.

    ``choice``: "auto" or one of cudnn / flash / efficient / math. A named kernel is the
    only one allowed, so a case it cannot take fails loudly instead of falling back.
    """
    if choice != "auto":
        if choice not in BACKENDS:
            raise ValueError(f"unknown SDPA kernel {choice!r}; accepted: auto, {', '.join(BACKENDS)}")
        if device_type != "cuda" and choice in ("cudnn", "efficient"):
            raise ValueError(f"SDPA kernel {choice!r} runs on CUDA only; on {device_type} use flash or math")
        return [BACKENDS[choice]]
    if device_type != "cuda":
        return None  # the CPU has one fused kernel (flash-style); PyTorch picks it
    if dtype in (torch.bfloat16, torch.float16) and head_dim % 8 == 0 and head_dim <= 128:
        return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]
    if dtype in (torch.bfloat16, torch.float16) and head_dim % 8 == 0 and head_dim <= 256:
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return None  # fp32 or odd head sizes: the memory-efficient kernel, PyTorch's default


@contextlib.contextmanager
def sdpa_context(backends: list[SDPBackend] | None) -> Iterator[None]:
    """Run the body with these SDPA kernels in this priority order (no-op for None)."""
    if backends is None:
        yield
        return
    with sdpa_kernel(backends, set_priority=True):
        yield


def backend_names(backends: list[SDPBackend] | None) -> list[str] | None:
    if backends is None:
        return None
    names = {v: k for k, v in BACKENDS.items()}
    return [names[b] for b in backends]
