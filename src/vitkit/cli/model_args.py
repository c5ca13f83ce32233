"""The one option group of every command that loads a model: what ``vitkit.load`` takes as overrides.

``add_model_args(parser)`` adds it; ``load_kwargs(args)`` turns the parsed flags into keyword arguments
of :func:`vitkit.load`. Flags not given are left out, so the file decides.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import ACTIVATIONS, POOLINGS

GROUP_TITLE = "loading the model"
GROUP_HELP = ("overrides for checkpoints that do not say; a value that contradicts the file is refused "
              "(docs/weights.md, 'What each command accepts')")


def parse_image_size(values: list[str] | str | None) -> int | tuple[int, int] | None:
    """``384`` -> 384; ``224x320`` or ``224 320`` -> (224, 320) as (H, W)."""
    if values is None:
        return None
    text = " ".join(values) if isinstance(values, list) else str(values)
    try:
        parts = [int(v) for v in text.lower().replace("x", " ").split()]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(f"--image-size must be N, HxW or H W with positive integers, got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def add_model_args(p: argparse.ArgumentParser, size_aliases: tuple[str, ...] = (), two_values: bool = False) -> None:
    """Add the loading options (--image-size, --patch-size, --heads, --pooling, --act, --dynamic-img-size) to ``p``.
    ``two_values``: --image-size also takes ``H W`` (only where no positional argument follows it)."""
    g = p.add_argument_group(GROUP_TITLE, GROUP_HELP)
    g.add_argument("--image-size", *size_aliases, dest="image_size", nargs="+" if two_values else None,
                   metavar="N|HxW", default=None,
                   help="load at this input size, N or HxW" + (" or H W" if two_values else "")
                        + " (the position embedding is resampled, bicubic; default: the checkpoint's own)")
    g.add_argument("--patch-size", dest="patch_size", type=int, default=None, metavar="P",
                   help="run at patch size P (FlexiViT: the patch kernel resized by the pseudo-inverse, the "
                        "position embedding resampled to the new grid; default: the checkpoint's own)")
    g.add_argument("--heads", type=int, default=None,
                   help="attention heads, for a timm state dict whose width is no published size (it stores none)")
    g.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="cls, gap or map (attention pool), for a file that does not say")
    g.add_argument("--act", choices=ACTIVATIONS, default=None,
                   help="GELU form (gelu = exact erf, gelu_tanh), for a file that does not say (a JAX .npz)")
    g.add_argument("--dynamic-img-size", action="store_true", default=None,
                   help="accept other input sizes at run time (the position embedding resampled per call)")


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_model_args` that were given, as ``vitkit.load`` keyword arguments."""
    kw = {k: getattr(args, k, None) for k in ("heads", "pooling", "act", "dynamic_img_size", "patch_size")}
    kw["image_size"] = parse_image_size(getattr(args, "image_size", None))
    return {k: v for k, v in kw.items() if v is not None}
