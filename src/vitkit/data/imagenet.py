"""ImageNet-1k class names, in the index order every 1k-class ViT checkpoint uses.

The list (``imagenet1k_classes.txt``, one WordNet lemma string per line, e.g.
``tench, Tinca tinca``) ships with the package, so 1k-class checkpoints that
carry no names (timm state dicts, npz files) still get readable labels.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    text = resources.files("vitkit.data").joinpath("imagenet1k_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"vitkit's ImageNet-1k class list has {len(names)} names, not 1000 (broken install?)")
    return names


def imagenet1k_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names (a fresh list)."""
    return list(_names())
