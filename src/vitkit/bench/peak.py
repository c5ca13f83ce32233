"""A measured matrix-product peak, the yardstick for "% of peak" in the bench's reports."""

from __future__ import annotations

import torch

from ..inference.cpu import onednn_available, onednn_linear
from .fp8 import quantize_rows
from .timing import interleaved


def measure_matmul_peak(device: torch.device, dtype: str, n: int | None = None, iters: int = 10) -> dict:
    """TFLOP/s of an n×n×n product on this device (the fastest of ``iters``), as the bench's 100 %.

    The fastest, not the median: a peak is what the device can do, and on a shared
    machine the median mostly measures the neighbours.

    Default n: 8192 on a GPU (large enough to saturate an H100), 1024 on the CPU.
    ``dtype`` fp8 times ``torch._scaled_mm`` on e4m3 operands with row-wise scales. On the CPU
    in fp32/bf16 both BLAS (``a @ b``: MKL) and oneDNN's inner product are timed and the faster
    is the peak (``kernel`` says which): on some CPUs one runs ~2x the other (vitkit.inference.cpu).
    """
    n = n or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    if dtype == "fp8":
        (qa, sa), (qb, sb) = quantize_rows(a), quantize_rows(b)  # qb: (n, n) rows = output columns
        kw = {"use_fast_accum": True} if device.type == "cuda" else {}
        sb = sb.t().contiguous()  # (1, n)

        def step():
            return torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb,
                                    out_dtype=torch.bfloat16, **kw)
    else:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        a, b = a.to(dt), b.to(dt)

        steps = {"aten": lambda: a @ b}
        if device.type == "cpu" and dtype in ("fp32", "bf16") and onednn_available(dt):
            bt = b.t().contiguous()  # (out, in), the layout of a Linear weight
            steps["onednn"] = lambda: onednn_linear(a, bt, None)
        with torch.inference_mode():
            t = interleaved(steps, device, warmup=2, iters=iters)
        kernel = min(t, key=lambda k: min(t[k]))
        sec = min(t[kernel])
        return {"n": n, "dtype": dtype, "seconds": sec, "tflops": 2 * n**3 / sec / 1e12, "kernel": kernel}
    t = interleaved({"mm": step}, device, warmup=2, iters=iters)["mm"]
    sec = min(t)
    return {"n": n, "dtype": dtype, "seconds": sec, "tflops": 2 * n**3 / sec / 1e12, "kernel": "_scaled_mm"}
