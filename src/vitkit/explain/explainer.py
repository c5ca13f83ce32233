"""``explain``: one image -> its attention map(s) and top-k prediction, ready to draw."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..inference.pipeline import ModelRunner, class_names
from ..models.vit import VisionTransformer
from .attention import METHODS, attention_rollout, cls_attention, to_grid


@dataclass
class Explanation:
    """What :func:`explain` found for one image."""

    image: np.ndarray  # (H, W, 3) uint8: the model's view of the image (after resize/crop)
    heatmap: np.ndarray  # (gh, gw) float32: the map drawn (raw attention mass, not rescaled)
    head_maps: np.ndarray  # (heads, gh, gw) float32: layer ``layer``'s [CLS] map per head
    predictions: list[tuple[str, float]]  # top-k (label, probability); empty for a headless model
    method: str  # "last" or "rollout"
    layer: int  # 0-based block index the map ends at
    head: int | None  # the head shown ("last" only); None = heads averaged
    grid: tuple[int, int]  # (gh, gw) patch grid
    query: str = "[CLS]"  # whose attention row is drawn: "[CLS]", or "mean patch-query" without a [CLS]

    def describe(self) -> str:
        what = f"attention rollout to layer {self.layer}" if self.method == "rollout" else \
            f"{self.query} attention, layer {self.layer}"
        return what + (f", head {self.head}" if self.head is not None else ", heads averaged")


def _model_view(x: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (C, H, W) input back to (H, W, 3) uint8, as the model saw it."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    img = (x.float().cpu() * s + m).clamp(0, 1)  # (C, H, W) in 0..1
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
    return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def explain(runner: ModelRunner | VisionTransformer, image: Image.Image, method: str = "last",
            layer: int = -1, head: int | None = None, size: tuple[int, int] | None = None,
            topk: int = 5) -> Explanation:
    """Attention map of ``image`` (a decoded PIL image; see ``vitkit.data.decode.open_image``).

    ``method="last"``: the [CLS] row of block ``layer``'s attention over the patches, one head
    (``head``) or averaged over heads. ``method="rollout"``: attention rollout through blocks
    0..``layer``. ``size``: (H, W) to run at instead of the preprocessing's size (the model must
    accept it: ``dynamic_img_size``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    run = runner if isinstance(runner, ModelRunner) else ModelRunner(runner)
    model = run.model
    depth, heads = len(model.blocks), model.cfg.heads
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} is out of range for a model of depth {depth} (0..{depth - 1} or -1..-{depth})")
    layer %= depth
    if head is not None:
        if method == "rollout":
            raise ValueError("--head picks one head of the last-layer map; rollout averages the heads of every layer")
        if not 0 <= head < heads:
            raise ValueError(f"head {head} is out of range: the model has {heads} heads (0..{heads - 1})")
    cfg = run.preprocess_cfg if size is None else dataclasses.replace(run.preprocess_cfg, size=size)
    from ..data.preprocess import preprocess

    x = preprocess(image, cfg).to(run.device)  # (1, C, H, W)
    p = model.cfg.token_stride  # pixels per token side (patch x the hybrid stem's stride)
    h, w = x.shape[-2:]
    grid = (math.ceil(h / p), math.ceil(w / p)) if model.cfg.dynamic_img_pad else (h // p, w // p)
    was_training = model.training
    model.eval()
    try:
        with run.autocast():
            # each (1, heads, T, T); on the CPU for the float64 rollout (mps has no float64)
            maps = [a.float().cpu() for a in model.get_attention_maps(x)[: layer + 1]]
            logits = model(x).float() if model.cfg.num_classes else None
    finally:
        model.train(was_training)
    prefix, has_cls = model.num_prefix_tokens, model.cfg.class_token
    per_head = to_grid(cls_attention(maps[layer], prefix, has_cls), grid)[0]  # (heads, gh, gw)
    if method == "rollout":
        heat = to_grid(attention_rollout(maps, prefix, has_cls), grid)[0]
    else:
        heat = per_head[head] if head is not None else per_head.mean(dim=0)
    preds: list[tuple[str, float]] = []
    if logits is not None:
        probs = logits.softmax(dim=-1)[0].cpu()
        vals, idx = probs.topk(min(topk, probs.numel()))
        labels = class_names(model)
        preds = [(labels[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist())]
    return Explanation(image=_model_view(x[0], cfg.mean, cfg.std), heatmap=heat.cpu().numpy().astype(np.float32),
                       head_maps=per_head.cpu().numpy().astype(np.float32), predictions=preds, method=method,
                       layer=layer, head=head, grid=grid, query="[CLS]" if has_cls else "mean patch-query")
