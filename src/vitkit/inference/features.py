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
from .precision import cosine_agreed

POOLS = ("cls", "gap", "map", "tokens")


def check_pool(model: VisionTransformer, pool: str) -> None:
    """A clear ValueError when ``model`` cannot give ``pool`` (before any image is read)."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; accepted: {', '.join(POOLS)}")
    if pool == "cls" and not model.cfg.class_token:
        raise ValueError("pool='cls' needs a model with a [CLS] token; this one has none (use gap or tokens)")
    if pool == "map" and model.attn_pool is None:
        raise ValueError("pool='map' needs a model with an attention-pooling head (SigLIP); this one has none")


def pool_tokens(model: VisionTransformer, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """Tokens (B, T, D) -> (B, D) for ``cls``/``gap``/``map`` (SigLIP's attention pool) or unchanged for ``tokens``."""
    check_pool(model, pool)
    if pool == "tokens":
        return tokens
    if pool == "cls":
        return tokens[:, 0]
    if pool == "map":
        return model.attn_pool(tokens[:, model.num_prefix_tokens:])
    return model.fc_norm(tokens[:, model.num_prefix_tokens:].mean(dim=1))  # gap


def headless_pool(model: VisionTransformer) -> str | None:
    """The ``pool`` whose embedding a copy of ``model`` without its head outputs (what an int8 graph of the model
    computes: :func:`vitkit.export.int8.quantize_int8` on a model with ``num_classes=0``), or None when that
    output is none of them (a pre-logits layer, DeiT's averaged tokens, a norm after [CLS] pooling)."""
    cfg = model.cfg
    if cfg.representation_size or cfg.distilled:
        return None
    if model.attn_pool is not None:
        return "map"
    if cfg.pooling == "gap":
        return "gap"
    return None if cfg.use_fc_norm else "cls"


def own_pool(model: VisionTransformer) -> str:
    """The embedding the model's own head reads: :func:`headless_pool` where there is one, else [CLS] for a model
    with a class token and the patch tokens' mean otherwise (``vitkit features``' default ``--pool``)."""
    return headless_pool(model) or ("cls" if model.cfg.class_token else "gap")


def is_last_block(model: VisionTransformer, layer: int | None) -> bool:
    """Whether ``layer`` (None, or an index of the blocks, negative from the end) is the last block."""
    return layer is None or layer % len(model.blocks) == len(model.blocks) - 1


def int8_embedding_problem(model: VisionTransformer, pool: str, layer: int | None) -> str | None:
    """Why an int8 graph of ``model`` without its head cannot give ``pool`` at ``layer``, or None when it can:
    that graph computes the model's own pooled output (:func:`headless_pool`) at the last block only."""
    own = headless_pool(model)
    if own is None:
        return "this model's headless output is none of cls/gap/map, so int8 cannot embed with it"
    if pool != own or not is_last_block(model, layer):
        return f"int8 embeddings are this model's own pooled output (--pool {own}, the last block)"
    return None


@torch.no_grad()
def extract_features(runner: ModelRunner | VisionTransformer, images: Sequence[Image.Image],
                     pool: str = "cls", layer: int | None = None) -> np.ndarray:
    """Decoded PIL images -> float32 array (N, D), or (N, T, D) for ``pool="tokens"``.

    ``runner``: a :class:`ModelRunner` (device, precision, batch size and preprocessing come from
    it) or a model (run where it is, fp32, with its own preprocessing). The model needs no head. A runner whose
    model has no head and that runs int8 gives that int8 graph's embedding: :func:`headless_pool`'s pool only, at
    the last block (``vitkit features --dtype int8``).
    """
    run = runner if isinstance(runner, ModelRunner) else ModelRunner(runner)
    model = run.model
    check_pool(model, pool)
    if layer is not None:
        depth = len(model.blocks)
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is out of range for a model of depth {depth} (0..{depth - 1} or -1..-{depth})")
    int8 = run.int8 is not None
    if int8 and model.cfg.num_classes:
        raise ValueError("this runner's int8 graph gives logits; for int8 embeddings build the runner on the model "
                         "without its head (model.reset_classifier(0))")
    problem = int8_embedding_problem(model, pool, layer) if int8 else None
    if problem:
        raise ValueError(f"{problem}; pool={pool!r}{', layer=' + str(layer) if layer is not None else ''} "
                         "needs fp32 or bf16")
    out = []
    was_training = model.training
    model.eval()
    try:
        def embed(x):
            if layer is None:
                tokens = model.forward_features(x)  # (b, T, D), final norm applied
            else:
                tokens = model.forward_intermediates(x, indices=[layer], norm=True)[0]
            return pool_tokens(model, tokens, pool)

        for x in run.batches(images):
            if int8:  # the last block, however it was named
                feats = run.int8(x)  # the headless model's int8 graph: this pool's embedding
            else:
                feats = run.run_model(embed, x, cosine_agreed)  # dtype="auto" decides on the first batch
            out.append(feats.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("no images to embed")
    return np.concatenate(out).astype(np.float32)
