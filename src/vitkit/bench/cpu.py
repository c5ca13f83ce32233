"""vitkit's CPU inference kernels: the block Linears through oneDNN instead of the BLAS ``addmm``.

On x86 CPUs PyTorch runs an fp32 ``nn.Linear`` as MKL's ``addmm``, which first
copies the bias into the output and then accumulates the product onto it. oneDNN's
inner-product primitive (``torch.ops.mkldnn._linear_pointwise``, the op that
``torch.compile``'s CPU back-end emits) adds the bias in its epilogue. The end-to-end
effect is what benchmarks/README.md records (the `vitkit` rows, `--cpu-linear auto`);
no separate micro-benchmark is recorded. The function is unchanged; the summation order inside the
product differs, so outputs move by float32 rounding (~1e-6 relative).

Inference only, eager only (under ``torch.compile`` the module is plain ``F.linear``):
:func:`use_onednn_linears` swaps modules in place,
sharing the same weight tensors; anything the op cannot take (no oneDNN build,
autograd, another device or dtype) falls back to ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    """Whether this PyTorch has the oneDNN linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


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
        # under torch.compile, inductor lowers F.linear to its own CPU kernels (this op needs frozen weights)
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dtype == self.weight.dtype
                and not torch.compiler.is_compiling()
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            if self.gelu is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu", [], self.gelu)
        out = F.linear(x, self.weight, self.bias)
        return out if self.gelu is None else F.gelu(out, approximate=self.gelu)

    def extra_repr(self) -> str:
        act = "" if self.gelu is None else f", fused GELU ({self.gelu})"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel=oneDNN{act}"


def use_onednn_linears(model: nn.Module) -> int:
    """Swap the Linears inside ``model.blocks`` for :class:`OneDNNLinear` in place; return how many.

    The MLP's GELU moves into its first Linear (``mlp.act`` becomes Identity), which
    computes the same ``fc2(drop(gelu(fc1(x))))``. Returns 0 (and changes nothing)
    when this PyTorch has no oneDNN.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("use_onednn_linears expects a vitkit VisionTransformer (a model with .blocks)")
    if not onednn_available():
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
