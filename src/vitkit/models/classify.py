"""``model.predict``: decode -> the model's preprocessing -> forward -> softmax -> top-k, below the inference
package (which builds on it: ``vitkit.pipeline`` adds devices, precision, CPU kernels and batch runs)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, open_image
from ..data.preprocess import default_preprocess, preprocess


def class_names(model) -> list[str]:
    """The model's label names, or ``class_<i>`` where it has none (or not one per class)."""
    n = model.cfg.num_classes
    labels = list(model.labels or [])
    return labels if len(labels) == n else [f"class_{i}" for i in range(n)]


def topk_labels(probs: torch.Tensor, labels: Sequence[str], k: int) -> tuple[list[tuple[str, float]], list[int]]:
    """([(label, probability), ...], [index, ...]) of the ``k`` most likely classes of one (C,) row, largest first."""
    vals, idx = probs.topk(min(k, probs.numel()))
    return [(labels[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist())], idx.tolist()


@torch.no_grad()
def predict(model, images: ImageSource | Sequence[ImageSource], topk: int = 5, batch_size: int = 32,
            max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """One image -> [(label, probability), ...]; a list -> one such list per image. Runs where the model is,
    in its dtype, in eval mode (its mode is restored after). Decoding errors are raised."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if not model.cfg.num_classes:
        raise ValueError("this model has no classification head (num_classes=0); use vitkit features for embeddings")
    single = not isinstance(images, (list, tuple))
    sources = [images] if single else list(images)
    pre = model.preprocess_cfg or default_preprocess(model.cfg.image_hw, model.cfg.channels)
    p = next(model.parameters())
    labels, out, was_training = class_names(model), [], model.training
    model.eval()
    try:
        for i in range(0, len(sources), batch_size):
            x = preprocess([open_image(s, max_pixels=max_pixels) for s in sources[i:i + batch_size]], pre)
            probs = model(x.to(p.device, p.dtype)).float().softmax(dim=-1).cpu()
            out += [topk_labels(row, labels, topk)[0] for row in probs]
    finally:
        model.train(was_training)
    return out[0] if single else out
