"""The hybrid's ResNet-v2 in the original vision_transformer npz naming (``R50+ViT-B_16.npz``) <-> vitkit.

    conv_root/kernel (7, 7, C, W) HWIO         -> patch_embed.backbone.stem.conv.weight (W, C, 7, 7)
    gn_root/{scale,bias}                       -> patch_embed.backbone.stem.norm.{weight,bias}
    block{i+1}/unit{j+1}/conv{r}/kernel        -> patch_embed.backbone.stages.i.blocks.j.conv{r}.weight
    block{i+1}/unit{j+1}/gn{r}/{scale,bias}    -> ...stages.i.blocks.j.norm{r}.{weight,bias}
    block{i+1}/unit{j+1}/{conv,gn}_proj        -> ...stages.i.blocks.j.downsample.{conv,norm}

A root stem without stages is the backbone itself (``patch_embed.backbone.conv``), as in timm. The names are
those timm's npz loader reads (``vision_transformer._load_weights``), with which the tests check them.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import torch

from ..config import ViTConfig

BACKBONE = "patch_embed.backbone."
_UNIT = re.compile(r"block(\d+)/unit(\d+)/")


def _units(layers: tuple[int, ...]):
    """(npz prefix, our prefix, [(npz conv, npz norm, our conv, our norm)]) of every bottleneck block."""
    for i, depth in enumerate(layers):
        for j in range(depth):
            names = [(f"conv{r}", f"gn{r}", f"conv{r}", f"norm{r}") for r in (1, 2, 3)]
            if j == 0:  # a stage's first block has the projection shortcut
                names.append(("conv_proj", "gn_proj", "downsample.conv", "downsample.norm"))
            yield f"block{i + 1}/unit{j + 1}/", f"{BACKBONE}stages.{i}.blocks.{j}.", names


def npz_stem(arrays: dict[str, np.ndarray], pre: str, take: Callable[[str], np.ndarray]
             ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(ViTConfig fields, our state entries) of the npz's ResNet-v2; ({}, {}) when it has none."""
    if f"{pre}conv_root/kernel" not in arrays:
        return {}, {}
    units: dict[int, set[int]] = {}
    for k in arrays:
        if k.startswith(pre) and (m := _UNIT.match(k[len(pre):])):
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(len(units.get(i + 1, ())) for i in range(len(units)))
    root = take("conv_root/kernel")  # (7, 7, C, W)
    stem = "stem." if layers else ""
    conv = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))  # noqa: E731  HWIO -> OIHW
    vec = lambda a: torch.from_numpy(np.ascontiguousarray(a.reshape(-1)))  # noqa: E731
    state = {f"{BACKBONE}{stem}conv.weight": conv(root), f"{BACKBONE}{stem}norm.weight": vec(take("gn_root/scale")),
             f"{BACKBONE}{stem}norm.bias": vec(take("gn_root/bias"))}
    for src, dst, names in _units(layers):
        for c, g, tc, tg in names:
            state[f"{dst}{tc}.weight"] = conv(take(f"{src}{c}/kernel"))
            state[f"{dst}{tg}.weight"] = vec(take(f"{src}{g}/scale"))
            state[f"{dst}{tg}.bias"] = vec(take(f"{src}{g}/bias"))
    return dict(stem="hybrid", hybrid_layers=layers, hybrid_width=root.shape[3], channels=root.shape[2]), state


def stem_to_npz(state: dict[str, torch.Tensor], cfg: ViTConfig, pre: str = "") -> dict[str, np.ndarray]:
    """The ResNet-v2 of ``state`` in the npz naming ({} for the patch stem)."""
    if cfg.stem != "hybrid":
        return {}
    n = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    stem = "stem." if cfg.hybrid_layers else ""
    out = {f"{pre}conv_root/kernel": n(state[f"{BACKBONE}{stem}conv.weight"]).transpose(2, 3, 1, 0),
           f"{pre}gn_root/scale": n(state[f"{BACKBONE}{stem}norm.weight"]),
           f"{pre}gn_root/bias": n(state[f"{BACKBONE}{stem}norm.bias"])}
    for dst, src, names in _units(cfg.hybrid_layers):
        for c, g, tc, tg in names:
            out[f"{pre}{dst}{c}/kernel"] = n(state[f"{src}{tc}.weight"]).transpose(2, 3, 1, 0)
            out[f"{pre}{dst}{g}/scale"] = n(state[f"{src}{tg}.weight"])
            out[f"{pre}{dst}{g}/bias"] = n(state[f"{src}{tg}.bias"])
    return out
