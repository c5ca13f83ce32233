"""FP8 matrix products for inference: vitkit's low-precision mode.

Each Linear inside the encoder blocks (qkv, proj, fc1, fc2) becomes an
:class:`Fp8Linear`: the weight is stored in float8 e4m3 with one scale per output
row, each activation row is scaled to e4m3's range on the fly, and
``torch._scaled_mm`` multiplies them with the scales applied in its epilogue,
adding the bias and writing bf16. Patch embedding, norms, attention and the head
stay in bf16. On Hopper this uses the FP8 tensor cores; PyTorch also implements
``torch._scaled_mm`` on the CPU, which is how the tests check this code.

This changes the numbers (it is a quantisation): validate with
:func:`top1_agreement` against the bf16 model before trusting it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
_TINY = 1e-12  # keeps an all-zero row from dividing by zero


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (M, K) e4m3 and (M, 1) float32 scales with x ≈ q * scale (per-row absmax scaling)."""
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=_TINY) / E4M3_MAX  # (M, 1)
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(nn.Module):
    """A Linear whose product runs in FP8 (e4m3, row-wise scales) and returns ``out_dtype``."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.bfloat16, fast_accum: bool = True):
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"FP8 matrix products need sizes divisible by 16; this Linear is "
                             f"{linear.in_features} -> {linear.out_features}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = out_dtype
        self.fast_accum = fast_accum  # Hopper's faster FP8 accumulation (CUDA only)
        w_q, w_scale = quantize_rows(linear.weight.detach())  # (out, in), (out, 1)
        self.register_buffer("weight_fp8", w_q)
        self.register_buffer("weight_scale", w_scale.t().contiguous())  # (1, out): scale_b of _scaled_mm
        bias = linear.bias.detach().to(out_dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x_q, x_scale = quantize_rows(x.reshape(-1, self.in_features))  # (M, in) e4m3, (M, 1)
        kw = {"use_fast_accum": self.fast_accum} if x.is_cuda else {}
        # weight_fp8.t() is (in, out) column-major, the layout _scaled_mm wants for its second operand
        out = torch._scaled_mm(x_q, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                               bias=self.bias, out_dtype=self.out_dtype, **kw)
        return out.reshape(*lead, self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the FP8 product actually uses, (out, in) float32 (for tests and error analysis)."""
        return self.weight_fp8.float() * self.weight_scale.t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 row-wise"


def emulate_fp8_linear(layer: Fp8Linear, x: torch.Tensor) -> torch.Tensor:
    """What :class:`Fp8Linear` computes, written with float32 ops only (quantise, dequantise, F.linear)."""
    x_q, x_scale = quantize_rows(x.reshape(-1, layer.in_features))
    out = F.linear(x_q.float() * x_scale, layer.dequantized_weight(),
                   None if layer.bias is None else layer.bias.float())
    return out.to(layer.out_dtype).reshape(*x.shape[:-1], layer.out_features)


def convert_to_fp8(model: nn.Module, out_dtype: torch.dtype = torch.bfloat16, fast_accum: bool = True,
                   skip_blocks: tuple[int, ...] = ()) -> int:
    """Replace the Linears inside ``model.blocks`` by :class:`Fp8Linear` in place; return how many.

    The rest of the model should already be in ``out_dtype`` (``model.to(torch.bfloat16)``):
    patch embedding, norms, attention and head are left as they are. ``skip_blocks``:
    block indices (negative from the end) kept in ``out_dtype``, e.g. ``(0, -1)`` for
    the first and last, which are the most sensitive to quantisation.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("convert_to_fp8 expects a vitkit VisionTransformer (a model with .blocks)")
    depth = len(blocks)
    for i in skip_blocks:
        if not -depth <= i < depth:
            raise ValueError(f"skip_blocks: block {i} out of range for a model of depth {depth}")
    skip = {i % depth for i in skip_blocks}
    count = 0
    for bi, blk in enumerate(blocks):
        if bi in skip:
            continue
        for parent in (blk.attn, blk.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Fp8Linear(child, out_dtype=out_dtype, fast_accum=fast_accum))
                    count += 1
    return count


@torch.no_grad()
def top1_agreement(reference: nn.Module, candidate: nn.Module, images: torch.Tensor, batch_size: int = 64,
                   dtype: torch.dtype | None = None) -> float:
    """Fraction of images on which both models predict the same class (the FP8 acceptance check).

    ``images`` (N, C, H, W) are fed in batches, cast to ``dtype`` when given.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    same = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        if dtype is not None:
            x = x.to(dtype)
        same += (reference(x).argmax(-1) == candidate(x).argmax(-1)).sum().item()
    return same / len(images)
