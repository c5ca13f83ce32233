"""Evaluation on frozen features: feature extraction, DINO's weighted k-NN and a linear probe.

The features of an image are the model's pooled pre-logits output,
``model.forward_head(model.forward_features(x), pre_logits=True)`` (B, num_features): the [CLS]
token (or mean / attention pool) after the final norm, before any head, the same for a
supervised, an MAE or a DINO encoder.

k-NN (Wu et al. 2018, as in facebookresearch/dino ``eval_knn.py``): features are L2-normalised,
the k training features with the highest cosine similarity to a test feature vote for their
class with weight ``exp(sim / T)``, and the class with the largest summed vote is predicted.

Linear probe: a linear classifier (weights and bias) on standardised frozen features, fitted
full-batch with L-BFGS on mean cross-entropy + ``weight_decay / 2 * ||W||²`` (the bias is not
decayed). The weight decay is chosen from a small grid by the top-1 accuracy on a stratified
held-out part of the training features, then the classifier is refitted on all of them.
Everything is deterministic: the only randomness is that split, drawn from ``seed``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import collate_skipping, raise_if_strict

# weight decays tried by the linear probe (loss = mean CE + wd/2 ||W||², on standardised features; sklearn's
# LogisticRegression(C) is wd = 1 / (C * N): its default C = 1 is wd = 1e-3 at N = 1000)
WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class _Transformed(torch.utils.data.Dataset):
    """``dataset[i]`` with ``transform`` applied to the image; an unreadable item ``(None, reason)`` passes on."""

    def __init__(self, base, transform: Callable[[torch.Tensor], torch.Tensor] | None):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        if x is None or self.transform is None:
            return x, y
        return self.transform(x), y


@torch.no_grad()
def extract_features(model: torch.nn.Module, dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     batch_size: int = 256, device: str | torch.device | None = None, *, num_workers: int = 0,
                     autocast=None, skipped: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logits features of every readable image of ``dataset`` -> (features (N, D) float32, labels (N,)
    int64), both on the CPU, in the data set's order.

    ``dataset`` yields ``(image (C, H, W), label)`` or ``(None, reason)`` for an unreadable file (vitkit's data
    sets): such items are skipped and their reasons appended to ``skipped`` when a list is given (a strict data
    set raises instead). ``transform(image)`` is applied to each image first (e.g. the model's
    ``EvalTransform``). ``device``: where the batches go; by default the model's own (the model is not moved).
    The model runs in eval mode without gradients; its train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be positive, got {batch_size}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(_Transformed(dataset, transform), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=collate_skipping)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for x, y, skip in loader:
            raise_if_strict(skip)  # a strict data set read in a loader worker: stop at its first bad file
            if skipped is not None:
                skipped += skip
            if x is None:
                continue
            with autocast or nullcontext():
                f = model.forward_head(model.forward_features(x.to(device, non_blocking=True)), pre_logits=True)
            feats.append(f.float().cpu())  # (B, D)
            labels.append(y)
    finally:
        if was_training:
            model.train()
    if not feats:
        raise ValueError(f"extract_features: no readable image among the {len(dataset)} items of the data set")
    return torch.cat(feats), torch.cat(labels).long()


def _check_features(name: str, feats: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if feats.ndim != 2 or len(feats) == 0:
        raise ValueError(f"{name}: features must be a non-empty (N, D) tensor, got shape {tuple(feats.shape)}")
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name}: the features hold NaN or infinite values")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(feats)):
        raise ValueError(f"{name}: {len(feats)} features but labels of shape {tuple(labels.shape)}")


def _check_labels(name: str, labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name}: labels must be class indices in [0, {num_classes}) (unlabelled data has -1), got "
                         f"values from {int(labels.min())} to {int(labels.max())}")


def _num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    if num_classes is None:
        num_classes = max(int(y.max()) for y in labels if len(y)) + 1
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    return int(num_classes)


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 num_classes: int | None = None, k: int = 20, temperature: float = 0.07,
                 batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's weighted k-NN: -> (predictions (M,) int64, scores (M, num_classes) float32).

    Features are L2-normalised; each test feature's ``k`` most cosine-similar training features vote for their
    labels with weight ``exp(sim / temperature)``. ``scores`` are each class's summed vote divided by the sum of
    all ``k`` votes (a row sums to 1; the same ranking as DINO's raw sums, and no overflow at a small
    temperature); the prediction is the top class (the lowest index on a tie). ``batch`` test features are
    compared at a time (memory ~ batch x N_train x 4 bytes). Runs on the device of ``train_feats``.
    """
    _check_features("knn_classify (training)", train_feats, train_labels)
    _check_features("knn_classify (test)", test_feats)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"knn_classify: training features have {train_feats.shape[1]} dimensions, test features "
                         f"{test_feats.shape[1]}")
    num_classes = _num_classes(num_classes, train_labels)
    _check_labels("knn_classify (training)", train_labels, num_classes)
    if not 1 <= k <= len(train_feats):
        raise ValueError(f"knn_classify: k must be in [1, {len(train_feats)}] (the training features), got {k}")
    if not temperature > 0:
        raise ValueError(f"knn_classify: the temperature must be positive, got {temperature}")
    if batch < 1:
        raise ValueError(f"knn_classify: batch must be positive, got {batch}")
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D), unit rows
    labels = train_labels.to(bank.device).long()
    preds, scores = [], []
    for i in range(0, len(test_feats), batch):
        q = F.normalize(test_feats[i:i + batch].float().to(bank.device), dim=1)  # (b, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (b, k): cosine similarities of the k nearest, their indices
        w = torch.softmax(sim / temperature, dim=1)  # exp(sim / T) over the k neighbours, divided by its sum
        s = torch.zeros(len(q), num_classes, device=bank.device).scatter_add_(1, labels[idx], w)  # (b, C)
        preds.append(s.argmax(1))
        scores.append(s)
    return torch.cat(preds), torch.cat(scores)


def _topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int, positive: bool = False) -> int:
    """How many rows have their label among the ``k`` highest scores (with ``positive``: and scored above 0)."""
    k = min(k, scores.shape[1])
    hit = scores.topk(k, dim=1).indices.eq(labels[:, None]).any(1)
    if positive:
        hit &= scores.gather(1, labels[:, None])[:, 0] > 0
    return int(hit.sum())


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int | None = None, k: int = 20, temperature: float = 0.07,
                 batch: int = 1024) -> dict[str, Any]:
    """Top-1 and top-5 accuracy (fractions) of :func:`knn_classify` on labelled test features ->
    ``dict(top1, top5, n, k, temperature)``. Top-5 counts a class only when a neighbour voted for it (as DINO's
    top-``min(5, k)``). ``num_classes`` defaults to the largest label + 1."""
    _check_features("knn_accuracy (test)", test_feats, test_labels)
    num_classes = _num_classes(num_classes, train_labels, test_labels)
    _check_labels("knn_accuracy (test)", test_labels, num_classes)
    pred, scores = knn_classify(train_feats, train_labels, test_feats, num_classes, k, temperature, batch)
    y = test_labels.to(pred.device).long()
    n = len(y)
    return {"top1": int(pred.eq(y).sum()) / n, "top5": _topk_hits(scores, y, 5, positive=True) / n, "n": n,
            "k": int(k), "temperature": float(temperature)}


def _fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                max_iter: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fit softmax regression on (N, D) features -> a function from (M, D) features to (M, C) logits."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)  # a constant feature stays 0 after standardising
    z = (x - mean) / std  # (N, D)
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device, requires_grad=True)  # (D, C)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)  # (C,)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda f: ((f.to(x) - mean) / std) @ w + b


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices (fit, held out) holding out ``fraction`` of each class, or None when a class has < 2 items."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            return None
        idx = idx[rng.permutation(len(idx))]
        k = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        held.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, num_classes: int | None = None, *,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS, holdout: float = 0.2, seed: int = 0,
                 max_iter: int = 500, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """Train a linear classifier on frozen training features and score it on validation features ->
    ``dict(top1, top5, n, n_train, weight_decay, selected_by, grid)``.

    Features are standardised (mean and std of the training features); the classifier is fitted full-batch
    by L-BFGS (at most ``max_iter`` iterations) on mean cross-entropy + ``weight_decay / 2 * ||W||²``. The
    weight decay is the one of ``weight_decays`` with the best top-1 (then the lowest cross-entropy) on a
    stratified ``holdout`` part of the training features drawn with ``seed`` (``grid`` lists each value's
    held-out top1 and loss); with a single value, or when a class has fewer than 2 training features, no part
    is held out (``selected_by`` says which). Deterministic for a seed. Runs in ``dtype`` on the device of
    ``train_feats``.
    """
    _check_features("linear_probe (training)", train_feats, train_labels)
    _check_features("linear_probe (validation)", val_feats, val_labels)
    if train_feats.shape[1] != val_feats.shape[1]:
        raise ValueError(f"linear_probe: training features have {train_feats.shape[1]} dimensions, validation "
                         f"features {val_feats.shape[1]}")
    num_classes = _num_classes(num_classes, train_labels, val_labels)
    _check_labels("linear_probe (training)", train_labels, num_classes)
    _check_labels("linear_probe (validation)", val_labels, num_classes)
    weight_decays = [float(v) for v in weight_decays]
    if not weight_decays or any(not v >= 0 for v in weight_decays):
        raise ValueError(f"linear_probe: weight_decays must be non-negative numbers, got {weight_decays}")
    if not 0 < holdout < 1:
        raise ValueError(f"linear_probe: holdout must be in (0, 1), got {holdout}")
    if max_iter < 1:
        raise ValueError(f"linear_probe: max_iter must be positive, got {max_iter}")
    x, y = train_feats.to(dtype), train_labels.to(train_feats.device).long()
    grid: list[dict[str, float]] = []
    split = _stratified_holdout(y.cpu().numpy(), holdout, seed) if len(weight_decays) > 1 else None
    if split is None:
        wd = weight_decays[0] if len(weight_decays) == 1 else 1.0 / len(x)  # sklearn's default, C = 1
        selected_by = "given" if len(weight_decays) == 1 else "fixed 1/N (a class has fewer than 2 features)"
    else:
        fit, held = (torch.from_numpy(i).to(x.device) for i in split)
        for v in weight_decays:
            logits = _fit_linear(x[fit], y[fit], num_classes, v, max_iter)(x[held])
            grid.append({"weight_decay": v, "top1": float(logits.argmax(1).eq(y[held]).double().mean()),
                         "loss": float(F.cross_entropy(logits, y[held]))})
        wd = min(grid, key=lambda r: (-r["top1"], r["loss"]))["weight_decay"]
        selected_by = f"held-out {holdout:.0%} of the training features"
    logits = _fit_linear(x, y, num_classes, wd, max_iter)(val_feats.to(x.device))
    yv = val_labels.to(x.device).long()
    n = len(yv)
    return {"top1": int(logits.argmax(1).eq(yv).sum()) / n, "top5": _topk_hits(logits, yv, 5) / n, "n": n,
            "n_train": len(x), "weight_decay": wd, "selected_by": selected_by, "grid": grid}
