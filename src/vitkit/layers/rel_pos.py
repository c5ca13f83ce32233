"""BEiT's relative position bias (Bao et al. 2021): a learned bias per head for every offset between two patches.

For a grid of gh x gw patches the table has (2gh-1)(2gw-1) rows, one per offset (dy, dx) with
dy in [-(gh-1), gh-1] and dx in [-(gw-1), gw-1] (row (dy+gh-1)(2gw-1) + (dx+gw-1)), and 3 more
for the [CLS] token: [CLS] asking a patch, a patch asking [CLS], and [CLS] asking itself (the
layout of timm's and BEiT's own ``relative_position_index``). Looking the table up with the index
gives the bias (heads, 1+N, 1+N) added to the attention logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ViTConfig


def rel_pos_index(grid: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(1+N, 1+N) long: the table row for query token i and key token j ([CLS] first, then patches row-major)."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    rows = (2 * gh - 1) * (2 * gw - 1)
    index = torch.empty(gh * gw + 1, gh * gw + 1, dtype=torch.long, device=device)
    index[1:, 1:] = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
    index[0, :] = rows  # [CLS] asks a patch
    index[:, 0] = rows + 1  # a patch asks [CLS]
    index[0, 0] = rows + 2  # [CLS] asks itself
    return index


def _interp_weights(src: int, dst: int) -> torch.Tensor:
    """(dst, src) weights of BEiT's resampling along one axis of a table of side ``src`` (an odd 2g-1) to ``dst``.

    The source offsets are placed on a geometric progression 0, ±1, ±(1+q), ±(1+q+q²)... with q chosen so
    the last one lands at the new largest offset: the near offsets keep (almost) their learned values and
    the stretch goes to the far ones. The new integer offsets are read off by linear interpolation on that
    uneven grid, the ends held constant (timm's ``resize_rel_pos_bias_table`` with its default
    RegularGridInterpolator; float32 coordinates as there).
    """
    left, right = 1.01, 1.5
    while True:  # bisection for q: 1 + q + ... + q^(src//2 - 1) = dst//2
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
        if right - left <= 1e-6:
            break
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    p = torch.tensor([-d for d in reversed(dis)] + [0.0] + dis)  # (src,) float32, increasing
    t = dst // 2
    x = torch.arange(-t, t + 0.1, 1.0)  # (dst,) the new offsets
    hi = torch.bucketize(x, p).clamp(max=src - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = (x - p[lo]).clamp(min=0), (p[hi] - x).clamp(min=0)
    same = (d_lo == 0) & (d_hi == 0)  # on a source point (or the single point of a 1-wide table)
    d_lo, d_hi = torch.where(same, 1.0, d_lo), torch.where(same, 1.0, d_hi)
    w = torch.zeros(dst, src)
    rows = torch.arange(dst)
    w.index_put_((rows, lo), d_hi / (d_lo + d_hi), accumulate=True)
    w.index_put_((rows, hi), d_lo / (d_lo + d_hi), accumulate=True)
    return w


def resize_rel_pos_table(table: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int]) -> torch.Tensor:
    """A table ((2gh-1)(2gw-1) + 3, heads) for ``old_grid`` resampled for ``new_grid``; the 3 [CLS] rows kept.

    Interpolation: BEiT's own (its fine-tuning code; timm's ``resize_rel_pos_bias_table``), see
    :func:`_interp_weights`. A relative bias is indexed by an offset in patches, not by a fraction of the
    image, so the uniform stretch of an absolute position embedding (bicubic on the grid; transformers'
    ``interpolate_pos_encoding`` stretches the table bilinearly) would give offset 1 the value learned for
    about half an offset at twice the resolution; the geometric placement keeps the near offsets, which
    matter most, where they were. Following timm also means a model loaded at another size gives timm's
    logits. In float32, differentiable (a linear map of the table), on the table's device.
    """
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return table
    src = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    dst = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    if table.shape[0] != src[0] * src[1] + 3:
        raise ValueError(f"relative position table has {table.shape[0]} rows, not the {src[0] * src[1] + 3} of a "
                         f"{old_grid[0]}x{old_grid[1]} grid")
    heads = table.shape[1]
    wy, wx = (_interp_weights(s, d).to(table.device) for s, d in zip(src, dst))
    grid = table[:-3].float().T.reshape(heads, src[0], src[1])
    grid = wy @ grid @ wx.T  # (heads, dst_h, dst_w)
    grid = grid.reshape(heads, dst[0] * dst[1]).T.to(table.dtype)
    return torch.cat([grid, table[-3:]])


class RelPosBias(nn.Module):
    """The model's relative position bias: ``forward(grid, table)`` -> (heads, 1+N, 1+N).

    Holds the index of the built grid (a buffer, recomputed, never saved) and, with ``rel_pos="shared"``,
    the one table every block uses (timm: ``rel_pos_bias.relative_position_bias_table``). Per-block tables
    live in each block's attention (``blocks.i.attn.relative_position_bias_table``) and are passed in. For
    another grid (``dynamic_img_size``) the table is resampled and the index recomputed per call.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.grid = cfg.grid_size
        self.register_buffer("relative_position_index", rel_pos_index(self.grid), persistent=False)
        self.relative_position_bias_table = (nn.Parameter(torch.zeros(cfg.rel_pos_rows, cfg.heads))
                                             if cfg.rel_pos == "shared" else None)

    def forward(self, grid: tuple[int, int], table: torch.Tensor | None = None) -> torch.Tensor:
        table = self.relative_position_bias_table if table is None else table
        if tuple(grid) == self.grid:
            index = self.relative_position_index
        else:
            table, index = resize_rel_pos_table(table, grid, self.grid), rel_pos_index(grid, table.device)
        t = index.shape[0]
        return table[index.view(-1)].view(t, t, -1).permute(2, 0, 1).contiguous()  # (heads, 1+N, 1+N)

    def set_grid(self, grid: tuple[int, int]) -> None:
        """Rebuild for another grid: the shared table resampled, the index recomputed."""
        grid = tuple(grid)
        if self.relative_position_bias_table is not None:
            with torch.no_grad():
                new = resize_rel_pos_table(self.relative_position_bias_table.data, grid, self.grid)
            self.relative_position_bias_table = nn.Parameter(new.contiguous())
        self.grid = grid
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the index, on ``device`` (default: where it is; after a meta-device build, a real one)."""
        self.relative_position_index = rel_pos_index(self.grid, device or self.relative_position_index.device)
