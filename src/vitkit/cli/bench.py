"""`vitkit bench`: images/s, TFLOP/s and memory of vitkit's ViT beside timm's and transformers'."""

from __future__ import annotations

import argparse
import sys

from ..bench.options import (BACKENDS, COMPILE_MODES, CPU_LINEARS, DTYPES, MODES, PEERS, SDPA_CHOICES, SWEEP_SIZES,
                             BenchOptions)
from .main import UserError


def _csv(choices: tuple[str, ...], flag: str):
    def parse(s: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in s.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{flag} takes a comma-separated list of {', '.join(choices)}; "
                                             f"got {s!r}")
        return items
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time vitkit against timm / transformers (img/s, TFLOP/s, memory)",
        description="Benchmark a ViT: vitkit's model and, with --compare, timm's and transformers' equivalent "
                    "model built from the same config and loaded with the same weights, timed in turns in one "
                    "process (warm-up, then medians; CUDA events on the GPU, perf_counter on the CPU). Reports "
                    "images/s, achieved TFLOP/s (ViTConfig.flops(), training = 3x forward), % of a measured "
                    "matrix-product peak, peak memory and vitkit/peer ratios; --json writes everything.")
    p.add_argument("model", help="a model name (vit_small_patch16_224, S/16, B/16@384), a config .json, or a "
                                           "checkpoint (anything vitkit.load reads: its architecture is timed)")
    p.add_argument("--mode", choices=MODES, default="infer",
                   help="infer: forward only; train: forward + backward + fused AdamW step (default infer)")
    p.add_argument("--batch", type=int, nargs="+", default=[8], metavar="B", help="batch size(s) (default 8)")
    p.add_argument("--image-size", type=int, nargs="+", metavar="PX",
                   help="resolution(s), square; default: the model's own")
    p.add_argument("--sweep", action="store_true",
                   help=f"resolution sweep {', '.join(map(str, SWEEP_SIZES))} (time and memory against tokens)")
    p.add_argument("--dtype", choices=DTYPES + ("int8",), default="fp32",
                   help="fp32, bf16, fp16, or fp8 (vitkit's FP8 matrix products, GPU inference; peers then run "
                        "bf16). Inference casts weights; training uses autocast over fp32 weights. int8 (CPU "
                        "inference): fp32 rows plus the static int8 row of ONNX Runtime, as --backend "
                        "torch,onnxruntime --ort-int8 static")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--compile", choices=COMPILE_MODES, default="off",
                   help="torch.compile mode for vitkit (and peers unless --peer-compile) (default off)")
    p.add_argument("--peer-compile", choices=COMPILE_MODES,
                   help="torch.compile mode for the peers (default: same as --compile)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture each vitkit step into a CUDA graph")
    p.add_argument("--peer-cuda-graphs", action="store_true", help="capture each peer step into a CUDA graph")
    p.add_argument("--channels-last", action="store_true", help="channels-last input and patch kernel")
    p.add_argument("--compare", type=_csv(PEERS, "--compare"), default=(), metavar="timm,hf",
                   help="peers to time beside vitkit: timm, hf (transformers), or both")
    p.add_argument("--backend", type=_csv(BACKENDS, "--backend"), default=("torch",), metavar="torch,onnxruntime",
                   help="how vitkit runs: torch, onnxruntime (CPU, exported ONNX model), or both (default torch)")
    p.add_argument("--ort-level", choices=("basic", "extended", "all"), default="all",
                   help="ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--ort-int8", nargs="?", const="static", choices=("static", "dynamic"),
                   help="with --backend onnxruntime, also time the model in int8 (a lower-precision row, dtype "
                        "int8): static (the default: what `vitkit predict --dtype int8` runs, calibrated here on "
                        "the timing batch) or dynamic (activations quantised per call)")
    p.add_argument("--sdpa", choices=SDPA_CHOICES, default="auto",
                   help="attention kernel for vitkit; auto = cuDNN, flash, efficient in that order on the GPU "
                        "in bf16/fp16, PyTorch's choice otherwise (peers always get PyTorch's choice)")
    p.add_argument("--cpu-linear", choices=CPU_LINEARS, default="auto",
                   help="vitkit's block Linears on the CPU: onednn (oneDNN inner product, inference), aten "
                        "(F.linear, as the peers), auto = the faster of the two, timed on the model's shapes, for CPU "
                        "inference in fp32/bf16 (default auto)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation first (default 3)")
    p.add_argument("--iters", type=int, default=10, help="timed steps per implementation (default 10)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the model's own)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime (default: torch's setting)")
    p.add_argument("--max-batch", action="store_true",
                   help="also search the largest batch that fits in GPU memory, per implementation")
    p.add_argument("--max-batch-limit", type=int, default=4096, help="upper bound for --max-batch (default 4096)")
    p.add_argument("--no-check", action="store_true", help="skip comparing each implementation's output to vitkit's")
    p.add_argument("--json", metavar="PATH", help="write the full result (rows, ratios, machine, command) here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.report import format_table, write_json
    from ..bench.runner import run_bench

    if args.sweep and args.image_size:
        raise UserError("--sweep and --image-size both choose resolutions; give one")
    if args.dtype == "int8":  # the int8 row is ONNX Runtime's; everything else runs fp32 beside it
        args.dtype, args.ort_int8 = "fp32", args.ort_int8 or "static"
        args.backend = tuple(dict.fromkeys(tuple(args.backend) + ("onnxruntime",)))
    opts = BenchOptions(
        model=args.model, mode=args.mode, batch_sizes=tuple(args.batch),
        image_sizes=SWEEP_SIZES if args.sweep else (tuple(args.image_size) if args.image_size else None),
        dtype=args.dtype, device=args.device, compile=args.compile, peer_compile=args.peer_compile,
        cuda_graphs=args.cuda_graphs, peer_cuda_graphs=args.peer_cuda_graphs, channels_last=args.channels_last,
        compare=tuple(args.compare), backends=tuple(args.backend), sdpa=args.sdpa, cpu_linear=args.cpu_linear,
        warmup=args.warmup, iters=args.iters, num_classes=args.num_classes, threads=args.threads,
        ort_level=args.ort_level, ort_int8=args.ort_int8, max_batch=args.max_batch,
        max_batch_limit=args.max_batch_limit, check_outputs=not args.no_check)
    if args.json:  # fail on a bad output path now, not after minutes of timing
        from pathlib import Path

        out = Path(args.json)
        if out.is_dir():
            raise UserError(f"--json {args.json!r} is a directory; give a file name")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--json {args.json!r}: folder {str(out.parent)!r} does not exist")
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    doc = run_bench(opts, log=log)
    print(format_table(doc))
    if args.json:
        write_json(doc, args.json)
        print(f"wrote {args.json}")
    return 0
