"""`vitkit demo`: train a small ViT from scratch on scikit-learn's digits, on the CPU, in a few minutes.

The first thing a newcomer runs (`make demo`). It uses the training engine of `vitkit train`
with the recipe recorded in benchmarks/train_digits.md: 8x8 digits upsampled to 16x16, 4x4
patches (16 tokens), a 4-block ViT of width 64 with mean pooling, AdamW + warm-up/cosine,
label smoothing, stochastic depth, a per-image random affine and an EMA of the weights; the
stratified 20 % validation split of the built-in set (seed 0). It prints validation top-1
and the time taken, saves the model with vitkit.save, reloads it with vitkit.load and
classifies a few held-out digits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

DEMO_MODEL = "vit_tiny_patch4_16_gap"
DEMO_MODEL_SET = dict(width=64, depth=4, heads=4, mlp_ratio=2.0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small ViT on scikit-learn's digits (CPU, a few minutes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--out", default="demo-run",
                   help="folder the trained model is saved to with vitkit.save (vitkit.load(OUT) reads it); the "
                        "training run (checkpoints, metrics, curves) goes to OUT/run, replaced on each demo "
                        "(default demo-run)")
    p.add_argument("--seed", type=int, default=0, help="random seed for initialisation, data order and augmentation")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest for this tiny model, and on a busy machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.builtin import load_digits
    from ..train import TrainConfig, train
    from ..train.augment import normalize
    from ..weights.api import load, save

    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    cfg = TrainConfig(model=DEMO_MODEL, model_overrides=dict(DEMO_MODEL_SET), data="digits", epochs=args.epochs,
                      out=str(out / "run"), seed=args.seed, keep_last=1, overwrite=True,
                      threads=args.threads)
    start = time.time()
    summary = train(cfg)
    took = time.time() - start
    top1 = summary["ema_top1"] if summary["model_weights"] == "ema" else summary["val_top1"]
    print(f"\nvalidation top-1: {100 * top1:.2f} % on 360 held-out digits; time taken: {took:.0f} s "
          f"({summary['epochs']} epochs)")

    save(load(summary["model_dir"]), out)  # the trained model, as a vitkit folder of its own
    model = load(out)  # read back as any user would
    print(f"model saved with vitkit.save to {out}; reloaded with vitkit.load({str(out)!r})")
    _, val = load_digits()
    pick = torch.arange(0, len(val.labels), len(val.labels) // 8)[:8]
    x = torch.nn.functional.interpolate(val.images[pick], size=model.cfg.image_hw, mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    with torch.no_grad():
        pred = [model.labels[p] for p in model(normalize(x)).argmax(1).tolist()]
    truth = [val.classes[int(val.labels[i])] for i in pick.tolist()]
    art = [["".join(" .:-=+*#%@"[min(9, int(v * 10))] for v in row) for row in val.images[i, 0].tolist()]
           for i in pick.tolist()]  # 8 rows of 8 characters per digit
    print(f"{len(pick)} held-out digits:")
    for r in range(8):
        print(" " * 12 + "  ".join(a[r] for a in art))
    print("true      : " + "  ".join(f"{t:^8s}" for t in truth))
    print("predicted : " + "  ".join(f"{p + ('' if p == t else ' (x)'):^8s}" for p, t in zip(pred, truth)))
    print(f"{sum(p == t for p, t in zip(pred, truth))} of {len(pick)} right")
    return 0
