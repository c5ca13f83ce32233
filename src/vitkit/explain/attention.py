"""Where the model looked: the [CLS] token's attention over patches, and attention rollout.

Inputs are the per-layer attention probabilities of ``model.get_attention_maps(x)``: a list of
(B, heads, T, T) tensors, rows = queries, columns = keys, each row summing to 1, tokens ordered
[CLS], distillation, registers, then the gh*gw patches row by row. Maps keep only the patch
columns, so prefix tokens (registers included) never appear in a map. Models without a [CLS]
token (mean-pooled) use the mean over the patch queries instead of the [CLS] row.
"""

from __future__ import annotations

import torch

METHODS = ("last", "rollout")


def _query_row(attn: torch.Tensor, num_prefix_tokens: int, has_cls: bool) -> torch.Tensor:
    """(..., T, T) -> (..., T): the [CLS] row, or the mean patch-query row without a [CLS]."""
    if has_cls:
        return attn[..., 0, :]
    return attn[..., num_prefix_tokens:, :].mean(dim=-2)


def cls_attention(attn: torch.Tensor, num_prefix_tokens: int, has_cls: bool = True) -> torch.Tensor:
    """One layer's attention (B, heads, T, T) -> the [CLS] row over the patches, (B, heads, N).

    Not renormalised: for each head the map sums to the [CLS] row's mass on patch tokens
    (1 minus what it gives to [CLS], distillation and register tokens).
    """
    return _query_row(attn, num_prefix_tokens, has_cls)[..., num_prefix_tokens:]


def attention_rollout(maps: list[torch.Tensor], num_prefix_tokens: int, has_cls: bool = True,
                      residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): per layer, average the heads, add the identity
    for the residual connection (0.5 A + 0.5 I), renormalise rows, and multiply the layers
    (R = Ã_L ... Ã_1). Returns the [CLS] row of R over the patch columns, (B, N).

    Every token (registers included) takes part in the flow; only the map leaves them out.
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one layer's attention")
    B, _, T, _ = maps[0].shape
    eye = torch.eye(T, dtype=torch.float64, device=maps[0].device)
    rollout = eye.expand(B, T, T)
    for attn in maps:
        a = attn.double().mean(dim=1)  # (B, T, T): heads averaged
        if residual:
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout  # layers compose from the input upwards
    return _query_row(rollout, num_prefix_tokens, has_cls)[..., num_prefix_tokens:].float()


def to_grid(flat: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., N) patch values -> (..., gh, gw), patches in row-major order as the patch embedding lays them."""
    gh, gw = grid
    if flat.shape[-1] != gh * gw:
        raise ValueError(f"{flat.shape[-1]} patch values do not fill a {gh}x{gw} grid")
    return flat.reshape(*flat.shape[:-1], gh, gw)
