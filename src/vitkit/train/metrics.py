"""Evaluation (top-1, top-5, per-class accuracy, confusion matrix) and the PNG plots of a run."""

from __future__ import annotations

import io
import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from ..data.datasets import raise_if_strict
from .checkpoint import write_bytes_atomic
from .distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, num_classes: int, device: torch.device,
             info: DistInfo | None = None, autocast=None) -> dict[str, Any]:
    """Score ``model`` on batches of ``(x, y, skipped)``; labels < 0 are padding and not counted.

    Returns top1, top5 (fractions), loss (mean cross-entropy), per_class (accuracy per class,
    None for a class with no images), confusion (K x K counts, row = true, column = predicted),
    n (images scored) and skipped (reasons for unreadable files). Under torchrun every process
    scores its share and the counts are summed.
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    k5 = min(5, num_classes)
    conf = torch.zeros(num_classes * num_classes, dtype=torch.float64)
    sums = torch.zeros(3, dtype=torch.float64)  # top5 hits, loss sum, count
    skipped: list[str] = []
    for x, y, skip in batches:
        raise_if_strict(skip)  # a strict data set read in a loader worker: stop at its first bad file
        skipped += skip
        if x is None:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast or nullcontext():
            logits = model(x)
        logits = logits.float()
        keep = y >= 0
        if not keep.any():
            continue
        logits, y = logits[keep], y[keep]
        pred = logits.argmax(1)
        conf += torch.bincount((y * num_classes + pred).cpu(), minlength=num_classes * num_classes).double()
        top5 = logits.topk(k5, dim=1).indices.eq(y[:, None]).any(1)
        sums += torch.tensor([top5.sum().item(), F.cross_entropy(logits, y, reduction="sum").item(), len(y)],
                             dtype=torch.float64)
    if info.enabled:
        packed = all_reduce_sum(torch.cat([conf, sums]).to(device if device.type == "cuda" else "cpu"), info).cpu()
        conf, sums = packed[:-3], packed[-3:]
    if was_training:
        model.train()
    conf = conf.view(num_classes, num_classes).round().long()
    n = int(sums[2])
    per_class_total = conf.sum(1)
    correct = int(conf.diag().sum())
    return {"top1": correct / n if n else float("nan"), "top5": float(sums[0]) / n if n else float("nan"),
            "loss": float(sums[1]) / n if n else float("nan"), "n": n,
            "per_class": [(int(conf[i, i]) / int(t)) if t else None for i, t in enumerate(per_class_total)],
            "confusion": conf.tolist(), "skipped": skipped}


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | os.PathLike, title: str = "") -> None:
    """Confusion matrix (rows true, columns predicted) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    side = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        top = max(max(r) for r in confusion) or 1
        for i in range(k):
            for j in range(k):
                if confusion[i][j]:
                    ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=8,
                            color="white" if confusion[i][j] > top / 2 else "black")
    ax.set_title(title)
    write_bytes_atomic(path, _png_bytes(fig))
    plt.close(fig)


def plot_curves(metrics_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Training loss per step and, per epoch, validation top-1 (a classifier's, its EMA's, or the k-NN monitor's
    of a pre-training run; else the validation loss), from metrics.jsonl, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(metrics_path).exists():  # nothing logged yet (fewer steps than --log-every, no validation)
        return
    train, val = [], []
    for line in Path(metrics_path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        (train if r.get("kind") == "train" else val).append(r)
    val = [r for r in val if r.get("kind") == "val"]
    if val:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    else:  # nothing validated (an unlabelled pre-training run): the loss alone
        fig, a1 = plt.subplots(1, 1, figsize=(5.5, 3.8))
    if train:
        a1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, marker="o" if len(train) < 20 else None,
                ms=3)
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a1.set_title("loss")
    if not val:
        fig.tight_layout()
        write_bytes_atomic(out_path, _png_bytes(fig))
        plt.close(fig)
        return
    # accuracies in %: a classifier's top-1 (and its EMA's), a pre-training run's k-NN monitor
    series = [(k, label) for k, label in (("top1", "model"), ("ema_top1", "EMA"), ("knn_top1", "k-NN top-1"))
              if any(r.get(k) is not None for r in val)]
    for k, label in series:
        rows = [r for r in val if r.get(k) is not None]
        a2.plot([r["epoch"] for r in rows], [100 * r[k] for r in rows], marker="o" if k == "top1" else ".", ms=3,
                label=label)
    if series:
        a2.legend()
        a2.set_ylabel("validation top-1 (%)")
        a2.set_title("accuracy")
    else:  # no labels: MAE's reconstruction loss on the validation images
        rows = [r for r in val if r.get("val_loss") is not None]
        if rows:
            a2.plot([r["epoch"] for r in rows], [r["val_loss"] for r in rows], marker="o", ms=3)
        a2.set_ylabel("validation loss")
        a2.set_title("validation")
    a2.set_xlabel("epoch")
    fig.tight_layout()
    write_bytes_atomic(out_path, _png_bytes(fig))
    plt.close(fig)


def format_report(result: dict[str, Any], classes: list[str], max_rows: int = 50) -> str:
    """A printable report: top-1/top-5, per-class accuracy and (for few classes) the confusion matrix."""
    lines = [f"images: {result['n']}   top-1: {100 * result['top1']:.2f} %   top-5: {100 * result['top5']:.2f} %   "
             f"loss: {result['loss']:.4f}"]
    if result["skipped"]:
        lines.append(f"skipped {len(result['skipped'])} unreadable file(s):")
        lines += [f"  {s}" for s in result["skipped"][:20]]
    width = max(len(c) for c in classes)
    lines.append("per-class accuracy:")
    conf = result["confusion"]
    for i, (c, acc) in enumerate(zip(classes, result["per_class"])):
        if i >= max_rows:
            lines.append(f"  ... {len(classes) - max_rows} more classes")
            break
        lines.append(f"  {c:>{width}s}  {'   n/a' if acc is None else f'{100 * acc:6.2f} %'}  ({sum(conf[i])} images)")
    if len(classes) <= 20:
        lines.append("confusion matrix (rows: true, columns: predicted):")
        cw = max(width, max(len(str(v)) for r in conf for v in r))
        lines.append(" " * (width + 2) + " ".join(f"{c:>{cw}s}" for c in classes))
        for c, row in zip(classes, conf):
            lines.append(f"  {c:>{width}s}" + "".join(f" {v:>{cw}d}" for v in row))
    return "\n".join(lines)
