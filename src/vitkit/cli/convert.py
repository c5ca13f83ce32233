"""`vitkit convert SRC DST [--to vitkit|hf|timm|npz]`: read any checkpoint vitkit reads, write it in another format."""

from __future__ import annotations

import argparse
from pathlib import Path

from .main import UserError
from .model_args import add_model_args, load_kwargs

SUFFIX_FORMATS = {".npz": "npz", ".safetensors": "timm", ".pth": "timm", ".pt": "timm", ".bin": "timm"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert a checkpoint between vitkit, Hugging Face, timm and npz",
                              description="Load SRC (a vitkit/HF/timm folder, a timm state dict, a Google .npz or "
                                          "a hub id) and write it to DST in another format.")
    p.add_argument("src", metavar="SRC", help="checkpoint folder or file, or a Hugging Face hub id")
    p.add_argument("dst", metavar="DST", help="where to write (a folder for vitkit/hf, a file or folder for timm, "
                                              "a .npz file for npz)")
    p.add_argument("--to", choices=("vitkit", "hf", "timm", "npz"), default=None,
                   help="output format (default: from DST's suffix: .npz -> npz, .safetensors/.pth/.bin -> timm, "
                        "otherwise vitkit)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it already exists")
    add_model_args(p, two_values=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..weights.api import load, save

    dst = Path(args.dst)
    fmt = args.to or SUFFIX_FORMATS.get(dst.suffix, "vitkit")
    if dst.exists() and not args.force:
        raise UserError(f"{dst} already exists; pass --force to overwrite it")
    model = load(args.src, **load_kwargs(args))
    out = save(model, dst, format=fmt)
    cfg = model.cfg
    print(f"{args.src} ({model.load_info.get('format')}) -> {out} ({fmt}): width {cfg.width}, depth {cfg.depth}, "
          f"heads {cfg.heads}, patch {cfg.patch_size}, image {cfg.image_hw[0]}x{cfg.image_hw[1]}, "
          f"{cfg.num_classes} classes, {cfg.num_params():,} parameters")
    ignored = model.load_info.get("ignored_keys") or []
    if ignored:
        print(f"ignored {len(ignored)} tensors not part of the model: {', '.join(ignored[:8])}"
              f"{' ...' if len(ignored) > 8 else ''}")
    return 0
