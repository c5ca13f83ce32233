"""Position embeddings: resampling a learned grid, and fixed 2-D sin-cos."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample (1, prefix + gh*gw, D) to (1, prefix + new_h*new_w, D).

    The prefix rows ([CLS], distillation, registers) are kept as they are; the
    patch rows are reshaped to their 2-D grid and interpolated in float32
    (timm's convention: bicubic, antialias when downsampling; Google used bilinear).
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"position embedding must be (1, N, D), got {tuple(pos_embed.shape)}")
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"position embedding has {n} patch rows, not a square grid; pass old_grid=(H, W)")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"position embedding has {n} patch rows, not the {old_grid[0]}x{old_grid[1]} grid given")
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim, dtype = pos_embed.shape[-1], pos_embed.dtype
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    # align_corners left at None: False for the interpolating modes, and "nearest"/"area" refuse any value
    grid = F.interpolate(grid, size=new_grid, mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)


def sincos_2d_pos_embed(grid: tuple[int, int], dim: int, temperature: float = 10000.0,
                        device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (1, gh*gw, D) as in big_vision's ``posemb_sincos_2d``.

    Channels are [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)], each D/4 wide, with
    ω_i = temperature^(-i / (D/4 - 1)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2-D position embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float32, device=device),
                          torch.arange(gw, dtype=torch.float32, device=device), indexing="ij")
    q = dim // 4
    omega = torch.arange(q, dtype=torch.float32, device=device) / max(q - 1, 1)
    omega = 1.0 / temperature**omega  # (D/4,)
    y = y.flatten()[:, None] * omega[None, :]  # (gh*gw, D/4)
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]  # (1, gh*gw, D)
