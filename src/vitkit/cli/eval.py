"""`vitkit eval`: top-1, top-5, per-class accuracy and confusion matrix of a trained model on a data set;
with --knn / --linear-probe, also a k-NN classifier and a linear probe on its frozen features."""

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

--knn K and --linear-probe score the model's frozen features (its pooled pre-logits output, as a
pre-trained encoder gives): the training part of --data (a built-in's training split, a folder's
train/, or the rest of a folder or CSV after the stratified held-out part, the run's own when the
run trained on it) is the k-NN memory bank and the probe's training set; the validation part is the
test set. k-NN is DINO's: cosine similarity, K neighbours voting with weight exp(sim / T). The probe
is a linear classifier on standardised features (L-BFGS, weight decay chosen on a held-out part of
the training features). A model whose head does not fit the data's classes (a pre-trained encoder)
is then scored by these alone. Both need labelled data.
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
    g = p.add_argument_group("frozen features", "score the model's pooled features rather than (or besides) its head")
    g.add_argument("--knn", type=int, default=None, metavar="K",
                   help="weighted k-NN with K neighbours (DINO's; 20 is DINO's usual value): memory bank = the "
                        "training part of --data, test set = its validation part")
    g.add_argument("--knn-temperature", type=float, default=0.07, metavar="T",
                   help="temperature of the k-NN vote weights exp(similarity / T) (default 0.07)")
    g.add_argument("--linear-probe", action="store_true",
                   help="fit a linear classifier on the training part's features, score it on the validation part")
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
    from ..data.datasets import DataSpec
    from ..train.augment import EvalTransform
    from .model_args import load_kwargs
    from ..train.checkpoint import write_bytes_atomic
    from ..train.metrics import format_report, plot_confusion
    from ..utils.atomic import OutputWriteError, reason

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    probing = args.knn is not None or args.linear_probe
    if args.knn is not None and args.knn < 1:
        raise ValueError(f"--knn must be a positive number of neighbours, got {args.knn}")
    if not args.knn_temperature > 0:
        raise ValueError(f"--knn-temperature must be positive, got {args.knn_temperature}")
    model, run_dir = load_for_eval(args.model, **load_kwargs(args))
    cfg = model.cfg
    pre = model.preprocess_cfg or default_preprocess(cfg.image_hw, cfg.channels)
    normalise = EvalTransform(pre.mean, pre.std)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = DataSpec(image_size=cfg.image_hw, channels=cfg.channels, strict=args.strict_data, preprocess=pre)
    run_cfg = _run_config(run_dir)
    if probing:
        _check_labelled(args.data)
    ds, held_out = _eval_data(args, spec, run_cfg, list(cfg.labels) if cfg.labels else None, probing)
    mismatch = _head_mismatch(cfg, ds, args)
    if mismatch and not probing:
        raise ValueError(mismatch)
    model = _to_device(model, device, args.batch_size)
    res = classes = None
    if not mismatch:
        classes = list(cfg.labels or ds.classes)
        res = _score_head(model, ds, args, normalise, device, len(classes))
    probes = _score_probes(model, args, spec, run_cfg, normalise, device) if probing else {}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.data).name or "data")
    if run_dir is not None and model.load_info.get("format") == "train-checkpoint":
        name += "-" + Path(args.model).stem  # RUN/eval-<data>-best: a checkpoint's results beside the model's
    out = Path(args.out) if args.out else (run_dir / f"eval-{name}" if run_dir else Path("vitkit-eval"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(e.errno, f"could not create the output folder {out}: {reason(e)}") from None
    saved = []
    if res is not None:
        plot_confusion(res["confusion"], classes, out / "confusion.png",
                       title=f"{args.data}: top-1 {100 * res['top1']:.2f} %")
        saved.append(out / "confusion.png")
    results = {"model": str(args.model), "data": args.data, "classes": classes or probes["classes"], **(res or {})}
    if mismatch:
        results["head"] = f"not scored: {mismatch}"
    results.update({k: v for k, v in probes.items() if k in ("knn", "linear_probe")})
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    saved.append(out / "results.json")
    print(f"vitkit eval: {args.model} on {ds.describe() + held_out if res is not None else args.data}")
    if res is not None:
        print(format_report(res, classes))
    else:
        print(f"head not scored: {mismatch}")
    for line in probes.get("lines", []):
        print(line)
    print(f"saved {' and '.join(map(str, saved))}")
    return 0


def _check_labelled(data: str) -> None:
    from ..data.builtin import BUILTIN
    from ..data.unlabelled import plain_folder_images

    if data not in BUILTIN and plain_folder_images(data) is not None:
        raise ValueError(f"--knn and --linear-probe need labelled data; {data} is a folder of images without class "
                         "folders (give a built-in set, a folder of class folders, a train/, val/ layout or a CSV)")


def _eval_data(args, spec, run_cfg, labels: list[str] | None, probing: bool):
    """(the data set the head is scored on, a note on where it comes from), as `vitkit eval` always chose it.
    ``labels`` (the model's) fix the label order; when ``probing``, data with other classes is still read (the
    head is then not scored, the frozen features are)."""
    from ..data.datasets import has_validation_part, load_eval_source, load_source

    if run_cfg and _same_source(run_cfg.get("data"), args.data) and not run_cfg.get("val_data") \
            and not has_validation_part(args.data):
        # the run held out part of this source for validation: score that part, not the images it trained on
        spec.val_fraction = run_cfg.get("val_fraction", spec.val_fraction)
        _, ds = load_source(args.data, spec)
        return ds, f" (the run's held-out {spec.val_fraction:.0%}: it trained on the rest)"
    try:
        return load_eval_source(args.data, spec, labels), ""
    except ValueError:
        if not probing or labels is None:
            raise
        return load_eval_source(args.data, spec), ""  # classes the model's labels lack: the head is not scored


def _head_mismatch(cfg, ds, args) -> str | None:
    """Why the model's head cannot be scored on ``ds`` (its classes differ), or None."""
    if cfg.num_classes == 0:
        return f"the model {args.model} has no classification head"
    if len(ds.classes) != cfg.num_classes:
        return (f"the data {args.data!r} has {len(ds.classes)} classes {ds.classes[:10]}, the model "
                f"{args.model} predicts {cfg.num_classes}")
    if cfg.labels and list(cfg.labels) != list(ds.classes):
        return f"the data's classes {ds.classes[:10]} are not the model's labels {list(cfg.labels)[:10]}"
    return None


def _workers(args, ds) -> int:
    from ..data.datasets import TensorImageDataset

    return args.workers if args.workers is not None else (0 if isinstance(ds, TensorImageDataset) else 2)


def _to_device(model, device, batch_size: int):
    from ..inference.cpu import optimize_for_cpu

    model = model.to(device)
    if device.type == "cpu":  # the faster Linear kernel for this CPU (vitkit.inference.cpu; same function)
        optimize_for_cpu(model, "auto", rows=batch_size * model.cfg.num_tokens)
    return model


def _score_head(model, ds, args, normalise, device, num_classes: int) -> dict:
    from ..data.datasets import collate_skipping
    from ..train.metrics import evaluate

    class View(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            x, y = ds[i]
            return (None, y) if x is None else (normalise(x), y)

    loader = torch.utils.data.DataLoader(View(), batch_size=args.batch_size, num_workers=_workers(args, ds),
                                         collate_fn=collate_skipping)
    res = evaluate(model, loader, num_classes, device)
    if res["n"] == 0:
        raise ValueError(f"no readable image in {args.data!r}")
    return res


def _score_probes(model, args, spec, run_cfg, normalise, device) -> dict:
    """k-NN and / or linear probe on the frozen features of the training (bank) and validation (test) parts of
    --data -> {"knn": ..., "linear_probe": ..., "classes": ..., "lines": printable lines}."""
    from ..data.datasets import load_source
    from ..ssl.probe import extract_features, knn_accuracy, linear_probe

    if run_cfg and _same_source(run_cfg.get("data"), args.data) and not run_cfg.get("val_data"):
        spec.val_fraction = run_cfg.get("val_fraction", spec.val_fraction)  # the run's own split of this source
    train_ds, val_ds = load_source(args.data, spec)
    skipped: list[str] = []
    feats = {part: extract_features(model, d, normalise, args.batch_size, device, num_workers=_workers(args, d),
                                    skipped=skipped)
             for part, d in (("train", train_ds), ("val", val_ds))}
    (xt, yt), (xv, yv) = feats["train"], feats["val"]
    c = len(train_ds.classes)
    out: dict = {"classes": list(train_ds.classes), "lines": [f"frozen features: {train_ds.describe()} (memory bank "
                                                              f"/ probe training set); {val_ds.describe()} (test set)"]}
    if skipped:
        out["lines"].append(f"skipped {len(skipped)} unreadable file(s):")
        out["lines"] += [f"  {s}" for s in skipped[:20]]
    if args.knn is not None:
        if args.knn > len(xt):
            raise ValueError(f"--knn {args.knn}: the training part of {args.data!r} has only {len(xt)} readable images")
        r = knn_accuracy(xt, yt, xv, yv, c, k=args.knn, temperature=args.knn_temperature)
        r["n_train"] = len(xt)
        out["knn"] = r
        out["lines"].append(f"k-NN (k={r['k']}, T={r['temperature']:g}): top-1 {100 * r['top1']:.2f} %   top-5 "
                            f"{100 * r['top5']:.2f} %   ({r['n']} test images, memory bank of {len(xt)})")
    if args.linear_probe:
        r = linear_probe(xt, yt, xv, yv, c)
        out["linear_probe"] = r
        out["lines"].append(f"linear probe: top-1 {100 * r['top1']:.2f} %   top-5 {100 * r['top5']:.2f} %   "
                            f"({r['n']} test images, trained on {r['n_train']}, weight decay {r['weight_decay']:g} "
                            f"chosen by {r['selected_by']})")
    return out
