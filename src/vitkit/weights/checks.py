"""Key-by-key checks shared by the converters: the exact set of missing, unexpected and misshaped tensors."""

from __future__ import annotations

import torch

from ..config import ViTConfig
from ..models.vit import VisionTransformer


def expected_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of ``VisionTransformer(cfg)``, read off the model built on the meta device:
    shapes without storage (nothing allocated, nothing initialised) and no second shape formula to keep in step
    with the model. A hostile config is refused before anything is built: ``validate`` bounds every size and
    the parameter count (``num_params``, from the sizes alone) before the model exists."""
    cfg.validate()
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(state: dict[str, torch.Tensor], cfg: ViTConfig, source: str) -> None:
    """Raise ValueError listing every missing, unexpected or wrongly shaped key of ``state`` for ``cfg``."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)} != model {want[k]}"
                   for k in set(want) & set(state) if tuple(state[k].shape) != want[k])
    if missing or unexpected or wrong:
        parts = [f"{what} {keys}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                      ("wrong shapes", wrong)) if keys]
        raise ValueError(f"{source}: the weights do not fit the model they describe: " + "; ".join(parts))


def need(state: dict, key: str, source: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``state[key]``, with a clear error when it is absent or not of ``shape`` (None entries match anything)."""
    if key not in state:
        raise ValueError(f"{source}: required tensor {key!r} is missing")
    t = state[key]
    if shape is not None and (t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape))):
        raise ValueError(f"{source}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def square_side(n: int) -> int | None:
    """The side of an n = s*s grid, or None."""
    s = int(round(n ** 0.5))
    return s if s * s == n else None
