"""Self-supervised pre-training on small data, as a user runs it: every step is a `vitkit` command.

    python benchmarks/ssl_small_data.py JOB DATA SEED [--runs DIR] [--epochs N] [--ft-epochs N] [--extra "FLAGS"]
                                        [--ft-extra "FLAGS"] [--ft-pooling cls|gap] [--pretrain RUN/pretrain]
    python benchmarks/ssl_small_data.py --summarise DIR      # the table of every DIR/*/record.json

JOB: scratch (60-epoch supervised baseline), mae (pretrain, then the same 60-epoch fine-tune with --init),
dino (pretrain, then `vitkit eval --knn 20 --linear-probe` of the run and of a randomly initialised encoder).
DATA: an image folder (train/<class>/, val/<class>/). Each command runs with one torch thread; wall and CPU
seconds of every command are recorded in RUNS/JOB-SEED.json beside the numbers it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from commands import cpu_id
from commands import run as _run


def run(cmd: list[str], log: Path) -> dict:
    return _run(cmd, log, append=True)  # one log per job, every command in it


MODEL = ["--model", "vit_tiny_patch4_32", "--model-set", "width=96,depth=6,heads=3"]  # the baseline ViT


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def eval_probe(model: str, data: str, out: Path, log: Path) -> tuple[dict, dict]:
    step = run(["vitkit", "eval", model, "--data", data, "--knn", "20", "--linear-probe",
                "--out", str(out)], log)
    res = json.loads((out / "results.json").read_text())
    return step, {"knn_top1": res["knn"]["top1"], "linear_probe_top1": res["linear_probe"]["top1"]}


def summarise(runs: Path) -> None:
    """Print a markdown table of every RUNS/*/record.json."""
    print("| data | job | seed | result | pre-training CPU s | total CPU s | total wall s |")
    print("|---|---|---|---|---|---|---|")
    for f in sorted(runs.glob("*/record.json")):
        r = json.loads(f.read_text())
        res = ", ".join(f"{k} {100 * v:.2f} %" for k, v in r["result"].items())
        pre = r["steps"][0]["cpu_s"] if r["job"] != "scratch" else "-"
        print(f"| {Path(r['data']).name} | {r['job']} | {r['seed']} | {res} | {pre} | {r['total_cpu_s']} | "
              f"{r['total_wall_s']} |")


def main() -> None:
    if sys.argv[1:2] == ["--summarise"]:
        return summarise(Path(sys.argv[2]))
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["scratch", "mae", "dino"])
    ap.add_argument("data")
    ap.add_argument("seed", type=int)
    ap.add_argument("--runs", default="runs/ssl")
    ap.add_argument("--epochs", type=int, default=None, help="pre-training epochs (default: MAE 200, DINO 30)")
    ap.add_argument("--ft-epochs", type=int, default=60)
    ap.add_argument("--extra", default="", help="more pre-training flags, space-separated")
    ap.add_argument("--ft-extra", default="", help="more flags of the fine-tune (mae) and of scratch, space-separated")
    ap.add_argument("--ft-pooling", choices=["cls", "gap"], default=None,
                    help="pooling of the fine-tune (mae: --model-set pooling=P on the pre-trained encoder) and of "
                         "scratch (its model built with it); default: the model's, [CLS]")
    ap.add_argument("--lp-ft", type=float, default=None, metavar="LR",
                    help="mae: LP-FT (Kumar et al. 2022): first train only the head on the frozen encoder "
                         "(vitkit train --linear-probe, --ft-epochs), then fine-tune everything from there at "
                         "this peak lr for --ft-epochs")
    ap.add_argument("--pretrain", default=None, help="mae: fine-tune this earlier pre-training run folder instead "
                                                   "of pre-training again (its record's CPU time is counted)")
    a = ap.parse_args()
    name = f"{Path(a.data).name}-{a.job}-s{a.seed}"
    root = Path(a.runs) / name
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    rec = {"job": a.job, "data": a.data, "seed": a.seed, "machine": {"cpu_id": cpu_id(), "cores": os.cpu_count(),
           "python": platform.python_version()}, "date": time.strftime("%Y-%m-%d"), "steps": []}
    seed = ["--seed", str(a.seed), "--threads", "1", "--no-progress"]
    model = MODEL[:-1] + [MODEL[-1] + f",pooling={a.ft_pooling}"] if a.ft_pooling else MODEL
    ft_pool = ["--model-set", f"pooling={a.ft_pooling}"] if a.ft_pooling else []
    if a.job == "scratch":
        rec["steps"].append(run(["vitkit", "train", *model, "--data", a.data, "--epochs", str(a.ft_epochs), *seed,
                                 *a.ft_extra.split(), "--out", str(root / "train")], log))
        s = summary(root / "train")
        rec["result"] = {"val_top1": s["ema_top1"] if s["model_weights"] == "ema" else s["val_top1"],
                         "best_top1": s["best_top1"]}
    else:
        epochs = a.epochs or (200 if a.job == "mae" else 30)
        pre = root / "pretrain"
        if a.pretrain:  # an earlier pre-training run: its CPU time comes from the record beside it
            pre = Path(a.pretrain)
            rec["steps"].append(json.loads((pre.parent / "record.json").read_text())["steps"][0])
            rec["pretrain_from"] = str(pre)
        else:
            rec["steps"].append(run(["vitkit", "pretrain", "--method", a.job, *MODEL, "--data", a.data, "--epochs",
                                     str(epochs), "--eval-every", "10", *seed, *a.extra.split(), "--out", str(pre)],
                                    log))
        rec["pretrain"] = summary(pre)
        if a.job == "mae":
            lr = []
            if a.lp_ft is not None:  # the head first, on the frozen encoder; then everything, gently
                rec["steps"].append(run(["vitkit", "train", "--init", str(pre), *ft_pool, "--linear-probe",
                                         "--data", a.data, "--epochs", str(a.ft_epochs), *seed,
                                         "--out", str(root / "probe")], log))
                rec["probe"] = summary(root / "probe")
                pre, ft_pool, lr = root / "probe", [], ["--lr", str(a.lp_ft)]  # the probe run holds the pooling
            rec["steps"].append(run(["vitkit", "train", "--init", str(pre), *ft_pool, "--data", a.data, "--epochs",
                                     str(a.ft_epochs), *seed, *a.ft_extra.split(), *lr, "--out", str(root / "finetune")],
                                    log))
            s = summary(root / "finetune")
            rec["result"] = {"val_top1": s["ema_top1"] if s["model_weights"] == "ema" else s["val_top1"],
                             "best_top1": s["best_top1"]}
        else:
            step, probe = eval_probe(str(pre), a.data, root / "eval", log)
            rec["steps"].append(step)
            # the same architecture, randomly initialised with the same seed (a 0-step run writes it)
            rnd = root / "random"
            # the extra flags first, so that a --lr among them cannot override the baseline's 1e-12
            rec["steps"].append(run(["vitkit", "pretrain", "--method", "dino", *MODEL, "--data", a.data,
                                     *a.extra.split(), "--steps", "1", "--lr", "1e-12", "--min-lr", "0", *seed,
                                     "--out", str(rnd)], log))
            step, rprobe = eval_probe(str(rnd), a.data, root / "eval_random", log)
            rec["steps"].append(step)
            rec["result"] = {**probe, **{f"random_{k}": v for k, v in rprobe.items()}}
    rec["total_cpu_s"] = round(sum(s["cpu_s"] for s in rec["steps"]), 1)
    rec["total_wall_s"] = round(sum(s["wall_s"] for s in rec["steps"]), 1)
    (root / "record.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec["result"]), rec["total_cpu_s"])


if __name__ == "__main__":
    main()
