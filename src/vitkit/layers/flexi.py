"""FlexiViT (Beyer et al. 2023): the patch-embedding kernel resized to another patch size by the pseudo-inverse.

A patch x of side p resized to side q is B·x, with B the (q², p²) matrix of the resize. The kernel w that
gives the same embedding on the resized patch solves <B·x, ŵ> = <x, w> for every x: ŵ = pinv(Bᵀ)·w. For
q ≥ p (B has full column rank) this is exact; for q < p it is the least-squares best (the paper's PI-resize).

B is built with bicubic interpolation, antialiased (torch's ``F.interpolate(mode="bicubic", antialias=True)``,
``align_corners=False``): timm's ``resample_patch_embed`` default, and vitkit's choice for the position
embedding too, so a timm user's numbers and vitkit's agree. big_vision builds B bilinearly; pass
``interpolation="bilinear"`` to follow it (the pseudo-inverse argument holds for any linear resize).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH_RESIZE_MODES = ("bicubic", "bilinear")


def resize_matrix(old: tuple[int, int], new: tuple[int, int], interpolation: str = "bicubic",
                  antialias: bool = True) -> torch.Tensor:
    """The (new_h*new_w, old_h*old_w) matrix B of the image resize: column i is basis image i, resized."""
    if interpolation not in PATCH_RESIZE_MODES:
        raise ValueError(f"interpolation must be one of {PATCH_RESIZE_MODES}, got {interpolation!r}")
    n = old[0] * old[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *old)  # float64: pinv of a small matrix, exact
    out = F.interpolate(basis, size=new, mode=interpolation, antialias=antialias, align_corners=False)
    return out.reshape(n, new[0] * new[1]).T  # (new², old²)


def resize_patch_kernel(w: torch.Tensor, new_size: int | tuple[int, int], interpolation: str = "bicubic",
                        antialias: bool = True) -> torch.Tensor:
    """Kernel (D, C, p, p) -> (D, C, q, q), such that for a patch x, ``<x, w> == <resize(x, q), result>``
    (exact when q ≥ p, least squares when q < p); computed in float64, returned in ``w``'s dtype."""
    if w.ndim != 4:
        raise ValueError(f"a patch-embedding kernel is (D, C, p, p), got shape {tuple(w.shape)}")
    new = (new_size, new_size) if isinstance(new_size, int) else (int(new_size[0]), int(new_size[1]))
    if min(new) < 1:
        raise ValueError(f"patch size must be positive, got {new_size!r}")
    old = (w.shape[-2], w.shape[-1])
    if old == new:
        return w
    pinv = torch.linalg.pinv(resize_matrix(old, new, interpolation, antialias))  # (old², new²)
    d, c = w.shape[:2]
    out = w.detach().to(torch.float64, copy=True).reshape(d, c, -1).cpu() @ pinv  # (D, C, new²)
    return out.reshape(d, c, *new).to(device=w.device, dtype=w.dtype)
