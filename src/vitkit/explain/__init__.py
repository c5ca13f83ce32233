"""Explain: [CLS] attention maps, attention rollout, and PNG overlays of them."""

from .attention import METHODS, attention_rollout, cls_attention, to_grid
from .explainer import Explanation, explain

__all__ = ["METHODS", "Explanation", "attention_rollout", "cls_attention", "explain", "render_explanation",
           "render_head_grid", "to_grid"]


def __getattr__(name: str):  # the renderers import matplotlib: only when asked for
    if name in ("render_explanation", "render_head_grid"):
        from . import render

        return getattr(render, name)
    raise AttributeError(f"module 'vitkit.explain' has no attribute {name!r}")
