"""`vitkit explain SRC IMAGE --out attn.png`: where the model looked, drawn over the image."""

from __future__ import annotations

import argparse

from ..utils.atomic import check_output_path
from .main import UserError
from .model_args import add_model_args, load_kwargs
from .predict import add_runtime_args


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'384' -> (384, 384); '224x320' -> (224, 320) as (H, W)."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise UserError(f"--size must be N or HxW with positive integers, got {text!r}")
    return (parts[0], parts[-1])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="draw the model's attention over an image",
                       description="Draw where the model looked: the [CLS] token's attention over the patches "
                                   "(last layer, one head or averaged) or attention rollout (Abnar & Zuidema "
                                   "2020), as a heat-map beside the image and its top-5 prediction, in one PNG.")
    p.add_argument("src", help="the model: anything vitkit.load accepts")
    p.add_argument("image", help="the image file")
    p.add_argument("--out", required=True, help="the PNG to write (image | overlay | top-5 bars)")
    p.add_argument("--method", default="last", choices=["last", "rollout"],
                   help="last: [CLS] attention of one layer; rollout: attention rollout through the layers "
                        "(default last)")
    p.add_argument("--layer", type=int, default=-1, help="block index (0-based, negative from the end; default -1): "
                                                         "the layer shown, or where rollout stops")
    p.add_argument("--head", type=int, default=None, help="show this head only (method last; default: heads averaged)")
    p.add_argument("--grid", metavar="PNG", help="also write a grid of the layer's per-head maps to this PNG")
    p.add_argument("--size", help="run at this input size, N or HxW (default: the model's preprocessing size)")
    p.add_argument("--topk", type=int, default=5, help="predictions listed beside the map (default 5)")
    add_runtime_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import explain
    from ..explain.render import render_explanation, render_head_grid
    from ..inference.pipeline import ModelRunner
    from ..weights.api import load

    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    size = parse_size(args.size)
    for out in (args.out, args.grid):
        if out:
            check_output_path(out, (".png",))
    model = load(args.src, **load_kwargs(args))
    if size is not None:
        # this model copy is the command's own: let it take other sizes (position embedding resampled)
        model.patch_embed.dynamic_img_size = True
    runner = ModelRunner(model, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
    image = runner.load_image(args.image)
    expl = explain(runner, image, method=args.method, layer=args.layer, head=args.head, size=size, topk=args.topk)
    render_explanation(expl, args.out)
    print(f"wrote {args.out}: {expl.describe()}, {expl.grid[0]}x{expl.grid[1]} patches")
    if args.grid:
        render_head_grid(expl, args.grid)
        print(f"wrote {args.grid}: {len(expl.head_maps)} heads of layer {expl.layer} and their mean")
    for rank, (lab, p) in enumerate(expl.predictions, 1):
        print(f"  {rank}. {lab}  {p:.4f}")
    return 0
