"""Embeddings for retrieval and linear probing: one vector (or one token sequence) per image.

``pool``:
- ``"cls"``: the [CLS] token after the final norm (what a [CLS]-pooled head reads, before any
  pre-logits layer), shape (N, D);
- ``"gap"``: the mean of the patch tokens (prefix tokens: [CLS], distillation and registers left
  out), then the model's ``fc_norm`` when it has one (what a mean-pooled head reads), (N, D);
- ``"tokens"``: every token, prefix tokens first, (N, T, D).

``layer``: None = the last block; otherwise block ``layer`` (0-based, negative counts from the
end), its output passed through the model's final norm, as ``forward_intermediates(norm=True)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..models.vit import VisionTransformer
from .pipeline import ModelRunner

POOLS = ("cls", "gap", "map", "tokens")


def pool_tokens(model: VisionTransformer, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """Tokens (B, T, D) -> (B, D) for ``cls``/``gap``/``map`` (SigLIP's attention pool) or unchanged for ``tokens``."""
    if pool == "tokens":
        return tokens
    if pool == "cls":
        if not model.cfg.class_token:
            raise ValueError("pool='cls' needs a model with a [CLS] token; this one has none (use gap or tokens)")
        return tokens[:, 0]
    if pool == "map":
        if model.attn_pool is None:
            raise ValueError("pool='map' needs a model with an attention-pooling head (SigLIP); this one has none")
        return model.attn_pool(tokens[:, model.num_prefix_tokens:])
    if pool == "gap":
        return model.fc_norm(tokens[:, model.num_prefix_tokens:].mean(dim=1))
    raise ValueError(f"unknown pool {pool!r}; accepted: {', '.join(POOLS)}")


@torch.no_grad()
def extract_features(runner: ModelRunner | VisionTransformer, images: Sequence[Image.Image],
                     pool: str = "cls", layer: int | None = None) -> np.ndarray:
    """Decoded PIL images -> float32 array (N, D), or (N, T, D) for ``pool="tokens"``.

    ``runner``: a :class:`ModelRunner` (device, precision, batch size and preprocessing come from
    it) or a model (run where it is, fp32, with its own preprocessing). The model needs no head.
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; accepted: {', '.join(POOLS)}")
    run = runner if isinstance(runner, ModelRunner) else ModelRunner(runner)
    model = run.model
    if layer is not None:
        depth = len(model.blocks)
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is out of range for a model of depth {depth} (0..{depth - 1} or -1..-{depth})")
    out = []
    was_training = model.training
    model.eval()
    try:
        for x in run.batches(images):
            with run.autocast():
                if layer is None:
                    tokens = model.forward_features(x)  # (b, T, D), final norm applied
                else:
                    tokens = model.forward_intermediates(x, indices=[layer], norm=True)[0]
                feats = pool_tokens(model, tokens, pool)
            out.append(feats.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("no images to embed")
    return np.concatenate(out).astype(np.float32)
