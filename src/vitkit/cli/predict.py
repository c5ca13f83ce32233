"""`vitkit predict SRC IMAGE_OR_FOLDER...`: top-k labels with probabilities for each image.

Images that cannot be decoded (truncated, not an image, too large...) are skipped: the run goes
on, each skipped file is reported with its reason (on stderr and in the JSON/CSV output), and
the exit status is 1. Expected mistakes (missing model or image path, every image unreadable,
an output that cannot be written) exit 2 with one line, no traceback.

File names that are not valid UTF-8 (RELIABILITY item 39) are shown, and written to the JSON
and CSV (which stay valid UTF-8), with each undecodable byte as ``\\xNN``: b'caf\\xe9.jpg'
is ``caf\\xe9.jpg`` (:func:`vitkit.utils.names.printable`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from ..data.decode import DEFAULT_MAX_PIXELS
from ..utils.atomic import atomic_write_text, check_output_path
from ..utils.names import printable
from ..inference.device import DEVICES, DTYPES
from ..inference.images import list_images
from .main import UserError
from .model_args import add_model_args, load_kwargs

JSON_SCHEMA_VERSION = 1
CSV_COLUMNS = ["image", "rank", "label", "index", "probability", "error"]


def add_int8_args(p: argparse.ArgumentParser) -> None:
    """The calibration and agreement-check flags of int8 (predict, export)."""
    g = p.add_argument_group("int8", "static int8 quantisation (ONNX Runtime), calibrated and checked against fp32")
    g.add_argument("--calibrate", nargs="+", metavar="IMAGES", help="image files/folders to calibrate on; a folder "
                   "with train/ and val/ calibrates on train/ and checks on val/, otherwise every second image "
                   "checks")
    g.add_argument("--check", nargs="+", metavar="IMAGES", help="images to check agreement with fp32 on (top-1; "
                   "for features, each embedding's cosine similarity >= 0.99) "
                   "(default: from --calibrate, as above)")
    g.add_argument("--calibration-images", type=int, default=64, help="at most this many calibrate (default 64)")
    g.add_argument("--check-images", type=int, default=1000, help="at most this many are checked (default 1000)")
    g.add_argument("--min-agreement", type=float, default=0.995,
                   help="refuse int8 below this agreement with fp32 (default 0.995)")


def check_int8_args(args: argparse.Namespace) -> None:
    """The int8 flags' own errors, before anything is loaded."""
    if not args.calibrate:
        raise UserError("int8 needs --calibrate IMAGES: images like the ones it will see, to calibrate on and to "
                        "check its agreement with fp32 on")
    if not 0 < args.min_agreement <= 1:
        raise UserError(f"--min-agreement must be in (0, 1], got {args.min_agreement}")
    if getattr(args, "device", "cpu") not in ("auto", "cpu"):
        raise UserError(f"int8 runs on the CPU (ONNX Runtime); --device {args.device} does not apply: drop it "
                        "or use --device cpu")


def int8_wanted(args: argparse.Namespace) -> bool:
    """Whether this run quantises: ``--dtype int8``, or ``auto`` with ``--calibrate`` (int8 tried first, falling
    back when its check fails). The int8 flags are checked here, before anything loads."""
    if args.dtype == "int8" or (args.dtype == "auto" and args.calibrate):
        check_int8_args(args)
        return True
    if args.check and not args.calibrate:
        raise UserError("--check needs --calibrate IMAGES (the images int8 is calibrated on)")
    if args.calibrate or args.check:
        raise UserError("--calibrate and --check are for --dtype int8 (or auto, which then tries int8 first)")
    return False


def int8_options(args: argparse.Namespace, model) -> dict:
    """ModelRunner keyword arguments for --dtype int8: the images, read and split (see add_int8_args). The flags
    themselves are checked first, before the model loads, by :func:`check_int8_args`."""
    from ..export.int8 import images_for_int8

    cal, chk, where = images_for_int8(model, args.calibrate, args.check, calibration_images=args.calibration_images,
                                      check_images=args.check_images, max_pixels=args.max_pixels)
    print(f"vitkit: int8: {where}", file=sys.stderr)
    return {"int8_images": (cal, chk), "min_agreement": args.min_agreement}


AUTO_HELP = ("auto (default): bf16 where the hardware runs it natively (AMX or AVX512-BF16 CPUs, CUDA sm_80+) and "
             "it agrees with fp32 on the first batch, else fp32; with --calibrate, int8 first when its check passes. "
             "One line on stderr says which")


def add_dtype_arg(p: argparse.ArgumentParser, int8: bool = False, auto: bool = False) -> None:
    """--dtype: fp32/bf16/fp16 (autocast), and ``auto`` (the default where offered) and ``int8`` where offered."""
    choices = (["auto"] if auto else []) + list(DTYPES) + (["int8"] if int8 else [])
    p.add_argument("--dtype", default="auto" if auto else "fp32", choices=choices,
                   help=(AUTO_HELP + "; " if auto else "") +
                   f"fp32{'' if auto else ' (default)'}: full precision; bf16 (cpu, mps, recent cuda), fp16 (cuda, "
                   "mps): autocast" + ("; int8: statically quantised in ONNX Runtime (CPU), needs --calibrate"
                                       if int8 else ""))


def add_runtime_args(p: argparse.ArgumentParser, int8: bool = False, auto: bool = False) -> None:
    """Flags shared by predict, explain and features: device, precision, pixel limit (and int8 and auto where
    offered)."""
    p.add_argument("--device", default="auto", help=f"where to run: {', '.join(DEVICES)} or cuda:N (default auto: "
                                                    "cuda, then mps, then cpu)")
    add_dtype_arg(p, int8=int8, auto=auto)
    if int8:
        add_int8_args(p)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images declaring more pixels than this, before decoding (default {DEFAULT_MAX_PIXELS})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images: top-k labels with probabilities",
                       description="Classify images (files or folders, searched recursively) with a model: "
                                   "prints the top-k labels and probabilities per image. Unreadable images are "
                                   "skipped and reported (exit status 1).")
    p.add_argument("src", help="the model: anything vitkit.load accepts (e.g. a vitkit checkpoint folder)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    p.add_argument("--topk", type=int, default=5, help="how many labels to show per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", metavar="OUT", help="also write results as JSON to OUT ('-' = stdout only)")
    p.add_argument("--csv", metavar="OUT", help="also write results as CSV to OUT ('-' = stdout only)")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    add_runtime_args(p, int8=True, auto=True)
    add_model_args(p)
    p.set_defaults(func=run)


def results_json(src: str, topk: int, results) -> str:
    """The JSON document: {"schema_version", "model", "topk", "results": [{image, predictions|error}]}."""
    rows = []
    for r in results:
        row = {"image": printable(r.source), "predictions": [], "error": r.error and printable(r.error)}
        row["predictions"] = [{"rank": i + 1, "label": lab, "index": idx, "probability": p}
                              for i, ((lab, p), idx) in enumerate(zip(r.predictions, r.indices))]
        rows.append(row)
    return json.dumps({"schema_version": JSON_SCHEMA_VERSION, "model": printable(src), "topk": topk, "results": rows},
                      indent=2) + "\n"


def results_csv(results) -> str:
    """One row per (image, rank); a skipped image gets one row with only ``image`` and ``error``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        name = printable(r.source)
        if r.error:
            w.writerow([name, "", "", "", "", printable(r.error)])
        for i, ((lab, p), idx) in enumerate(zip(r.predictions, r.indices)):
            w.writerow([name, i + 1, lab, idx, f"{p:.6g}", ""])
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from ..inference.pipeline import pipeline

    if args.topk < 1:
        raise UserError(f"--topk must be >= 1, got {args.topk}")
    if args.json == "-" and args.csv == "-":
        raise UserError("--json - and --csv - both ask for stdout; write one of them to a file")
    for out in (args.json, args.csv):
        if out and out != "-":
            check_output_path(out)
    quantise = int8_wanted(args)
    paths, had_folder = list_images(args.images, recursive=not args.no_recursive)
    if quantise:
        from ..weights.api import load

        model = load(args.src, **load_kwargs(args))
        clf = pipeline(model, device="cpu" if args.dtype == "int8" else args.device, dtype=args.dtype,
                       batch_size=args.batch_size, max_pixels=args.max_pixels, cpu_kernels="auto",
                       **int8_options(args, model))
        if args.dtype == "int8":  # auto says what it chose itself
            print(f"vitkit: {clf.int8.report.describe()}", file=sys.stderr)
    else:
        clf = pipeline(args.src, load_kwargs=load_kwargs(args), device=args.device, dtype=args.dtype,
                       batch_size=args.batch_size, max_pixels=args.max_pixels)
    to_stdout = "-" in (args.json, args.csv)
    results = []
    for r in clf.run(paths, topk=args.topk, progress=had_folder):
        results.append(r)
        if r.error:
            print(f"vitkit: skipped {printable(r.error)}", file=sys.stderr)
        elif not to_stdout:
            print(printable(r.source))
            width = max(len(lab) for lab, _ in r.predictions)
            for rank, (lab, p) in enumerate(r.predictions, 1):
                print(f"  {rank}. {lab:<{width}}  {p:.4f}")
    for out, text in ((args.json, args.json and results_json(args.src, args.topk, results)),
                      (args.csv, args.csv and results_csv(results))):
        if out == "-":
            sys.stdout.write(text)
        elif out:
            atomic_write_text(out, text)
    skipped = sum(1 for r in results if r.error)
    if skipped == len(results):
        raise UserError(f"none of the {len(results)} image(s) could be read (see the messages above)")
    if skipped:
        print(f"vitkit: {skipped} of {len(results)} image(s) skipped", file=sys.stderr)
        return 1
    return 0
