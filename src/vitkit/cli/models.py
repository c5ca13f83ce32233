"""`vitkit models`: the model names, with parameter count and GFLOPs at their default resolution."""

from __future__ import annotations

import argparse
import json

from ..config import NAME_HELP, list_models, parse_model_name

OTHER_NAMES = "Any patch size and resolution also parse, e.g. vit_tiny_patch4_32 or B/16@384"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model names with parameters and GFLOPs",
                       description="List the model names vitkit builds, with parameter count (1000 classes) "
                                   "and forward GFLOPs per image (2 x multiply-adds) at the default resolution. "
                                   f"{OTHER_NAMES}.")
    p.add_argument("names", nargs="*", help="describe these names instead of the standard list")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in args.names or list_models():
        cfg = parse_model_name(name)
        h, w = cfg.image_hw
        rows.append(dict(name=name, params_m=round(cfg.num_params() / 1e6, 2), gflops=round(cfg.flops() / 1e9, 2),
                         image_size=f"{h}x{w}", tokens=cfg.num_tokens, width=cfg.width, depth=cfg.depth,
                         heads=cfg.heads))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':34s} {'params':>9s} {'GFLOPs':>8s} {'image':>9s} {'tokens':>7s}")
    for r in rows:
        print(f"{r['name']:34s} {r['params_m']:8.1f}M {r['gflops']:8.2f} {r['image_size']:>9s} {r['tokens']:7d}")
    if not args.names:  # the list is the standard names only: say how the others are written
        print(f"\n{OTHER_NAMES} (`vitkit models NAME` describes one); {NAME_HELP}.")
    return 0
