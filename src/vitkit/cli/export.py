"""`vitkit export SRC --onnx model.onnx`: an ONNX file, checked in onnxruntime before it is written."""

from __future__ import annotations

import argparse

from .model_args import add_model_args, load_kwargs
from .main import UserError
from .predict import add_int8_args, check_int8_args, int8_options


def register(sub: argparse._SubParsersAction) -> None:
    from ..export.onnx import DEFAULT_OPSET, FP16_ATOL, FP32_ATOL

    p = sub.add_parser("export", help="export to ONNX, verified in onnxruntime",
                       description="Export a model to ONNX, run the file in onnxruntime on the CPU and compare "
                                   "with PyTorch; the max abs difference is printed and a file that differs by "
                                   f"more than the tolerance ({FP32_ATOL:g} fp32) is not written.")
    p.add_argument("src", help="the model: anything vitkit.load accepts")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="make the batch dimension symbolic (checked at batch 1 and 7); default: fixed batch")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic-batch "
                                                             "(default 1)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute inside the graph "
                                                       "(inputs/outputs stay float32)")
    p.add_argument("--atol", type=float, default=None,
                   help=f"largest max-abs difference accepted (default {FP32_ATOL:g}, {FP16_ATOL:g} with --fp16)")
    p.add_argument("--int8", action="store_true",
                   help="write a statically quantised int8 file instead (ONNX Runtime, CPU), calibrated on "
                        "--calibrate and refused below --min-agreement top-1 agreement with fp32")
    add_int8_args(p)
    add_model_args(p, size_aliases=("--size",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.onnx import export_onnx
    from ..weights.api import load

    if args.opset < 7:
        raise UserError(f"--opset {args.opset} is too old; use 17 or newer (default 18)")
    # a checkpoint loaded from disk cannot be made dynamic_img_size by the user: load it at the size asked for
    if args.int8:
        if args.fp16:
            raise UserError("--int8 and --fp16 are two precisions; pick one")
        check_int8_args(args)
    elif args.calibrate or args.check:
        raise UserError("--calibrate and --check are for --int8")
    model = load(args.src, **load_kwargs(args))
    if args.int8:
        from ..export.int8 import quantize_int8

        args.max_pixels = None
        opts = int8_options(args, model)
        report = quantize_int8(model, args.onnx, *opts["int8_images"], min_agreement=args.min_agreement,
                               opset=args.opset)
        print(f"wrote {report.path}: {report.describe()}")
        return 0
    report = export_onnx(model, args.onnx, dynamic_batch=args.dynamic_batch,
                         batch_size=args.batch_size, opset=args.opset, fp16=args.fp16, atol=args.atol)
    per_batch = ", ".join(f"batch {b}: {d:.3g}" for b, d in report.diffs.items())
    shape = "x".join(str(s) for s in report.input_shape)
    print(f"wrote {report.path} (opset {report.opset}, input {shape}{', fp16' if report.fp16 else ''})")
    print(f"onnxruntime vs PyTorch: max abs diff {report.max_abs_diff:.3g} ({per_batch}; tolerance {report.atol:g})")
    return 0
