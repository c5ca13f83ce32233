"""vitkit's CPU inference kernels: the block Linears through oneDNN instead of the BLAS ``addmm``.

On x86 CPUs PyTorch runs an fp32 ``nn.Linear`` as MKL's ``addmm`` (what timm and
transformers use), which first copies the bias into the output and then accumulates the
product onto it. oneDNN's inner-product primitive (``torch.ops.mkldnn._linear_pointwise``,
the op ``torch.compile``'s CPU back-end emits) adds the bias, and here the MLP's GELU, in
its epilogue. Which of the two is faster depends on the CPU: on the AMD EPYC (Zen 5) that
benchmarks/README.md was measured on, MKL's sgemm ran ViT-S/16's Linears at ~180 GFLOP/s
and oneDNN's at ~310-400 (it uses AVX-512 there); on an earlier machine the two were level.
So :func:`optimize_for_cpu` times both on the model's own shapes and keeps the faster.

The function is unchanged; the summation order inside the product differs, so outputs
move by float32 rounding (~1e-6 relative). Inference only, eager only: under
``torch.compile``, autograd or autocast, on another device or dtype, the module is plain
``F.linear`` (+ ``F.gelu``).
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

CPU_KERNELS = ("auto", "onednn", "aten")
TIMING_ROWS = 512  # the most tokens "auto" times the kernels on


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch has the oneDNN linear op and it runs on this CPU in ``dtype`` (a CPU without
    AVX-512 has no bf16 inner product: oneDNN cannot create the primitive there)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and _onednn_runs(dtype)


@functools.lru_cache(maxsize=None)
def _onednn_runs(dtype: torch.dtype) -> bool:
    x, w, b = torch.ones(2, 8, dtype=dtype), torch.ones(4, 8, dtype=dtype), torch.zeros(4, dtype=dtype)
    try:
        with torch.no_grad():
            torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        return True
    except RuntimeError:  # "could not create a primitive descriptor ..."
        return False


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  gelu: str | None = None) -> torch.Tensor:
    """``gelu(x @ weight.T + bias)`` by oneDNN's inner product, bias and GELU ("none" = erf, "tanh") in its
    epilogue; no GELU when ``gelu`` is None. CPU, fp32/bf16, no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none" if gelu is None else "gelu", [], gelu or "")


def aten_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                gelu: str | None = None) -> torch.Tensor:
    """The same as :func:`onednn_linear` through ``F.linear`` (+ ``F.gelu``): what timm and transformers run."""
    out = F.linear(x, weight, bias)
    return out if gelu is None else F.gelu(out, approximate=gelu)


LINEARS = {"onednn": onednn_linear, "aten": aten_linear}


class OneDNNLinear(nn.Module):
    """A Linear (optionally followed by GELU) computed by oneDNN on the CPU (fp32/bf16, no grad),
    by ``F.linear`` (+ ``F.gelu``) otherwise.

    ``gelu``: None, "none" (exact erf GELU) or "tanh": the activation fused into the
    product's epilogue, which saves one pass over the (B, N, mlp_dim) hidden tensor.
    """

    def __init__(self, linear: nn.Linear, gelu: str | None = None):
        super().__init__()
        if gelu not in (None, "none", "tanh"):
            raise ValueError(f"gelu must be None, 'none' (erf) or 'tanh', got {gelu!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameters: state dict and parameter count unchanged
        self.bias = linear.bias
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under torch.compile, inductor lowers F.linear to its own CPU kernels (this op needs frozen weights);
        # under autocast F.linear is what runs in the autocast dtype
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dtype == self.weight.dtype
                and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and onednn_available(x.dtype)):
            return onednn_linear(x, self.weight, self.bias, self.gelu)
        return aten_linear(x, self.weight, self.bias, self.gelu)

    def extra_repr(self) -> str:
        act = "" if self.gelu is None else f", fused GELU ({self.gelu})"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=oneDNN{act}"


def _blocks(model: nn.Module):
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("expected a vitkit VisionTransformer (a model with .blocks)")
    return blocks


def use_onednn_linears(model: nn.Module) -> int:
    """Swap the Linears inside ``model.blocks`` for :class:`OneDNNLinear` in place; return how many.

    The MLP's GELU moves into its first Linear (``mlp.act`` becomes Identity), which
    computes the same ``fc2(drop(gelu(fc1(x))))``. Returns 0 (and changes nothing)
    when this PyTorch has no oneDNN.
    """
    blocks = _blocks(model)
    if not onednn_available(next(model.parameters()).dtype):
        return 0
    count = 0
    for blk in blocks:
        for parent in (blk.attn, blk.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    gelu = None
                    if parent is blk.mlp and name == "fc1" and isinstance(getattr(parent, "act", None), nn.GELU):
                        gelu = parent.act.approximate  # "none" (erf) or "tanh"
                        parent.act = nn.Identity()
                    setattr(parent, name, OneDNNLinear(child, gelu=gelu))
                    count += 1
    return count


@torch.no_grad()
def time_block_linears(model: nn.Module, kernel: str, rows: int, repeats: int = 3) -> float:
    """Median seconds for one block's Linears (qkv, proj, fc1 + GELU, fc2) on ``rows`` tokens of the
    model's dtype, through ``kernel`` ("onednn" or "aten": ``F.linear`` as timm runs them)."""
    blk = _blocks(model)[0]
    p = blk.attn.proj.weight
    act = getattr(blk.mlp, "act", None)
    gelu = act.approximate if isinstance(act, nn.GELU) else getattr(blk.mlp.fc1, "gelu", None)
    layers = [(blk.attn.qkv, None), (blk.attn.proj, None), (blk.mlp.fc1, gelu), (blk.mlp.fc2, None)]
    xs = [torch.randn(rows, lin.in_features, dtype=p.dtype) for lin, _ in layers]

    linear = LINEARS[kernel]

    def run():
        for (lin, g), x in zip(layers, xs):
            linear(x, lin.weight, lin.bias, g)

    run()  # first-call set-up (oneDNN primitive creation, BLAS buffers)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def optimize_for_cpu(model: nn.Module, kernel: str = "auto", rows: int | None = None) -> str:
    """Put ``model``'s block Linears on the faster CPU kernel, in place; return the kernel used.

    ``kernel``: "onednn" (swap for :class:`OneDNNLinear`), "aten" (leave ``nn.Linear``), or
    "auto": time both on one block's Linears with ``rows`` tokens (default: the model's
    tokens x 8 images; at most TIMING_ROWS, so that choosing costs well under a second for
    ViT-B: the kernels' ranking is the same at that size) and keep the faster. Weights,
    state dict and the function are the same either way. Only fp32/bf16 weights on the
    CPU are changed.
    """
    if kernel not in CPU_KERNELS:
        raise ValueError(f"kernel must be one of {CPU_KERNELS}, got {kernel!r}")
    blocks = _blocks(model)
    p = next(model.parameters())
    if kernel == "aten" or p.device.type != "cpu" or p.dtype not in (torch.float32, torch.bfloat16) \
            or not onednn_available(p.dtype) or len(blocks) == 0:
        return "aten"
    if any(isinstance(m, OneDNNLinear) for m in blocks.modules()):
        return "onednn"  # already swapped
    if kernel == "auto":
        rows = min(rows or 8 * model.cfg.num_tokens, TIMING_ROWS)
        # interleaved, twice each, so a slow moment on a shared machine falls on both
        t = {"onednn": [], "aten": []}
        for _ in range(2):
            for k in t:
                t[k].append(time_block_linears(model, k, rows))
        kernel = "onednn" if min(t["onednn"]) < min(t["aten"]) else "aten"
    if kernel == "onednn":
        use_onednn_linears(model)
    return kernel
