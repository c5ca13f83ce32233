"""`vitkit eval`: top-1, top-5, per-class accuracy and confusion matrix of a trained model on a data set."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from .model_args import add_model_args

DESCRIPTION = """\
Score a model on a data set: top-1, top-5, per-class accuracy and the confusion matrix
(printed, and saved as confusion.png with results.json in --out).

MODEL: anything vitkit.load reads: a run folder (its model/), a training checkpoint (.pt), a vitkit,
Hugging Face or timm folder, a timm state-dict file, a Google .npz or a hub id. The model's own
preprocessing (resize, crop, mean/std) is applied to the images.
--data: digits or lfw-faces (their validation split), a folder (its val/ part when it has one,
else its class folders), or a CSV of path,label. Class names are matched to the model's labels.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy, per-class accuracy and confusion matrix of a model on data",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="anything vitkit.load reads (run folder, training .pt, vitkit/HF/timm "
                                                  "folder, timm file, .npz, hub id)")
    p.add_argument("--data", required=True, help="digits, lfw-faces, a folder or a .csv of path,label")
    p.add_argument("--out", help="folder for confusion.png and results.json (default: RUN/eval-<data> for a run "
                                 "folder, else ./vitkit-eval)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: 0 for the built-ins, "
                                                              "else min(4, CPUs - 1))")
    p.add_argument("--strict-data", action="store_true", help="stop at the first unreadable image instead of "
                                                               "skipping and reporting it")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    add_model_args(p)
    p.set_defaults(func=run)


def load_for_eval(src: str, **overrides):
    """(model in eval mode, run folder or None): anything vitkit.load reads; a run folder (or a checkpoint in
    its checkpoints/) is where results go by default."""
    from ..weights.api import load

    model = load(src, **overrides)
    info = model.load_info
    run_dir = info.get("run")
    if run_dir is None and info["format"] == "train-checkpoint" and Path(src).parent.name == "checkpoints":
        run_dir = Path(src).parent.parent
    return model, (Path(run_dir) if run_dir else None)


def _run_config(run_dir: Path | None) -> dict | None:
    """The resolved settings of a run folder (its config.yaml), or None."""
    import yaml

    f = run_dir / "config.yaml" if run_dir is not None else None
    if f is None or not f.is_file():
        return None
    try:
        d = yaml.safe_load(f.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None
    return d if isinstance(d, dict) else None


def _same_source(a: str | None, b: str) -> bool:
    if a is None:
        return False
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..data.preprocess import default_preprocess
    from ..data.datasets import has_validation_part, load_source
    from ..data.datasets import DataSpec, TensorImageDataset, collate_skipping, load_eval_source
    from ..inference.cpu import optimize_for_cpu
    from ..train.augment import EvalTransform
    from .model_args import load_kwargs
    from ..train.checkpoint import write_bytes_atomic
    from ..train.metrics import evaluate, format_report, plot_confusion
    from ..utils.atomic import OutputWriteError, reason

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    model, run_dir = load_for_eval(args.model, **load_kwargs(args))
    cfg = model.cfg
    pre = model.preprocess_cfg or default_preprocess(cfg.image_hw, cfg.channels)
    normalise = EvalTransform(pre.mean, pre.std)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = DataSpec(image_size=cfg.image_hw, channels=cfg.channels, strict=args.strict_data, preprocess=pre)
    ds = None
    run_cfg = _run_config(run_dir)
    if run_cfg and _same_source(run_cfg.get("data"), args.data) and not run_cfg.get("val_data") \
            and not has_validation_part(args.data):
        # the run held out part of this source for validation: score that part, not the images it trained on
        spec.val_fraction = run_cfg.get("val_fraction", spec.val_fraction)
        _, ds = load_source(args.data, spec)
        held_out = f" (the run's held-out {spec.val_fraction:.0%}: it trained on the rest)"
    else:
        held_out = ""
    if ds is None:
        ds = load_eval_source(args.data, spec, list(cfg.labels) if cfg.labels else None)
    if len(ds.classes) != cfg.num_classes:
        raise ValueError(f"the data {args.data!r} has {len(ds.classes)} classes {ds.classes[:10]}, the model "
                         f"{args.model} predicts {cfg.num_classes}")
    if cfg.labels and list(cfg.labels) != list(ds.classes):
        raise ValueError(f"the data's classes {ds.classes[:10]} are not the model's labels {list(cfg.labels)[:10]}")
    classes = list(cfg.labels or ds.classes)
    workers = args.workers if args.workers is not None else (0 if isinstance(ds, TensorImageDataset) else 2)

    class View(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            x, y = ds[i]
            return (None, y) if x is None else (normalise(x), y)

    loader = torch.utils.data.DataLoader(View(), batch_size=args.batch_size, num_workers=workers,
                                         collate_fn=collate_skipping)
    model = model.to(device)
    if device.type == "cpu":  # the faster Linear kernel for this CPU (vitkit.inference.cpu; same function)
        optimize_for_cpu(model, "auto", rows=args.batch_size * cfg.num_tokens)
    res = evaluate(model, loader, len(classes), device)
    if res["n"] == 0:
        raise ValueError(f"no readable image in {args.data!r}")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.data).name or "data")
    if run_dir is not None and model.load_info.get("format") == "train-checkpoint":
        name += "-" + Path(args.model).stem  # RUN/eval-<data>-best: a checkpoint's results beside the model's
    out = Path(args.out) if args.out else (run_dir / f"eval-{name}" if run_dir else Path("vitkit-eval"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(e.errno, f"could not create the output folder {out}: {reason(e)}") from None
    plot_confusion(res["confusion"], classes, out / "confusion.png",
                   title=f"{args.data}: top-1 {100 * res['top1']:.2f} %")
    write_bytes_atomic(out / "results.json", json.dumps({"model": str(args.model), "data": args.data,
                                                         "classes": classes, **res}, indent=2).encode())
    print(f"vitkit eval: {args.model} on {ds.describe()}{held_out}")
    print(format_report(res, classes))
    print(f"saved {out / 'confusion.png'} and {out / 'results.json'}")
    return 0
