"""The batching handler: one model in eval mode, and the three steps every request goes through.

``prepare`` (decode + preprocess, any thread) -> ``plan`` (group by shape under the caps) -> ``forward``
(the model, one thread). It is a plain object with no event loop and no server in it, so the same code
runs under :mod:`vitkit.serve.batcher` (uvicorn, one process) and inside a Ray Serve replica
(:mod:`vitkit.serve.ray`).

Batching by compute: a request may ask for another input size (``sizes``, for a model loaded with
``dynamic_img_size``); its token count is ``prefix + (H / patch) * (W / patch)``. Images of one
shape share a forward, never two shapes, and a batch holds at most ``max_batch`` images and at most
``max_batch_tokens`` tokens (so a batch of 384 px images holds fewer than one of 224 px images).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.decode import DEFAULT_MAX_PIXELS, open_image
from ..data.preprocess import preprocess
from ..inference.pipeline import ModelRunner
from ..models.classify import class_names, topk_labels
from ..models.vit import VisionTransformer


class RequestError(ValueError):
    """A request the service refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS) or the CPU allocator's 'can't allocate memory'."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


@dataclass
class Prepared:
    """One decoded, preprocessed image, ready for a forward."""

    pixels: torch.Tensor  # (C, H, W) float32 on the CPU
    key: tuple[int, int]  # (H, W): images share a forward only with the same key
    tokens: int  # tokens this image costs in the forward (prefix + patches)
    decode_ms: float
    image_hw: tuple[int, int]  # the upload's own (H, W) after EXIF orientation


def parse_size(text: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """'384' -> (384, 384); '224x320' -> (224, 320) as (H, W); None -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        parts = [text]
    elif isinstance(text, (tuple, list)):
        parts = [int(v) for v in text]
    else:
        try:
            parts = [int(v) for v in str(text).lower().split("x")]
        except ValueError:
            parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise ValueError(f"size must be N or HxW with positive integers, got {text!r}")
    return (parts[0], parts[-1])


class BatchingHandler:
    """Decode, group and run images through one model (set to eval once, never toggled).

    ``sizes``: input sizes (H, W) a request may ask for besides the model's own; giving any makes the
    handler's model accept them (``dynamic_img_size``, the position embedding resampled per call).
    ``max_batch``: images per forward; ``max_batch_tokens``: tokens per forward (default
    ``max_batch`` x the tokens of the model's own size). The other keywords are
    :class:`vitkit.inference.pipeline.ModelRunner`'s.
    """

    def __init__(self, model: VisionTransformer, *, device: str | torch.device | None = "cpu", dtype: str = "auto",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_batch: int = 32,
                 max_batch_tokens: int | None = None, sizes: Sequence[tuple[int, int]] = (),
                 name: str | None = None, source: str | None = None,
                 int8_images: tuple[torch.Tensor, torch.Tensor] | None = None, min_agreement: float | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not model.cfg.num_classes:
            raise ValueError("this model has no classification head (num_classes=0): nothing to serve")
        model.eval()  # once: nothing below switches modes, so concurrent forwards cannot race on it
        model.requires_grad_(False)
        self.runner = ModelRunner(model, device=device, dtype=dtype, batch_size=max_batch, max_pixels=max_pixels,
                                  int8_images=int8_images, min_agreement=min_agreement)
        self.model = model
        self.labels = class_names(model)
        self.name = name or "vitkit"
        self.source = source
        self.max_batch = max_batch
        self.patch = model.cfg.token_stride  # pixels per token (the hybrid stem strides too)
        self.native_hw = tuple(self.runner.preprocess_cfg.size)  # (H, W)
        self.sizes = [tuple(s) for s in sizes]
        for hw in self.sizes:
            if hw[0] % self.patch or hw[1] % self.patch:
                raise ValueError(f"size {hw[0]}x{hw[1]} is not a multiple of the patch size {self.patch}")
        if any(hw != self.native_hw for hw in self.sizes):
            model.patch_embed.dynamic_img_size = True  # the handler owns this model
        native_tokens = self.tokens_for(self.native_hw)
        self.max_batch_tokens = max_batch_tokens or max_batch * native_tokens
        biggest = max([native_tokens] + [self.tokens_for(hw) for hw in self.sizes])
        if self.max_batch_tokens < biggest:
            raise ValueError(f"max_batch_tokens {self.max_batch_tokens} is below one image's {biggest} tokens")

    @classmethod
    def from_source(cls, src: str, load_kwargs: dict | None = None, int8: dict | None = None,
                    **kwargs) -> "BatchingHandler":
        """Load ``src`` with :func:`vitkit.load` (anything it reads) and wrap it. ``int8``: the keyword arguments
        of :func:`vitkit.export.int8.images_for_int8` (calibrate, check, ...) and ``min_agreement``, for
        ``dtype="int8"``."""
        from ..weights.api import load

        model = load(src, **(load_kwargs or {}))
        if int8 is not None:
            from ..export.int8 import images_for_int8

            int8 = dict(int8)
            kwargs["min_agreement"] = int8.pop("min_agreement", None)
            cal, chk, where = images_for_int8(model, **int8)
            logging.getLogger("vitkit").info("int8: %s", where)
            kwargs["int8_images"] = (cal, chk)
        kwargs.setdefault("name", _model_name(src))
        kwargs.setdefault("source", str(src))
        return cls(model, **kwargs)

    # -- shapes and tokens ------------------------------------------------------------------------
    def tokens_for(self, hw: tuple[int, int]) -> int:
        """Tokens one image of size ``hw`` costs: prefix tokens + patches."""
        if self.model.cfg.dynamic_img_pad:
            grid = math.ceil(hw[0] / self.patch) * math.ceil(hw[1] / self.patch)
        else:
            grid = (hw[0] // self.patch) * (hw[1] // self.patch)
        return self.model.num_prefix_tokens + grid

    def resolve_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        if size is None or tuple(size) == self.native_hw:
            return self.native_hw
        if tuple(size) not in self.sizes:
            allowed = ", ".join(f"{h}x{w}" for h, w in [self.native_hw, *self.sizes] if (h, w))
            raise RequestError(400, f"size {size[0]}x{size[1]} is not served; sizes: {allowed}")
        return tuple(size)

    def cap(self, key: tuple[int, int]) -> int:
        """The most images of shape ``key`` one forward takes: ``max_batch`` and the token budget."""
        return max(1, min(self.max_batch, self.max_batch_tokens // self.tokens_for(key)))

    # -- step 1: decode + preprocess (thread-safe; no model) -------------------------------------
    def decode(self, data: bytes):
        """Request bytes -> an RGB PIL image through vitkit's safe decoder. Only bytes are accepted:
        a string (a path, a URL) is never opened or fetched."""
        from ..data.decode import ImageDecodeError, ImageTooLargeError

        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"decode takes the uploaded bytes, not {type(data).__name__}")
        if not data:
            raise RequestError(400, "empty upload: the request carried no image bytes")
        try:
            return open_image(bytes(data), max_pixels=self.runner.max_pixels)
        except ImageTooLargeError as e:
            raise RequestError(413, _upload_message(e)) from None
        except (ImageDecodeError, OSError, ValueError) as e:
            raise RequestError(400, _upload_message(e)) from None

    def prepare(self, data: bytes, size: tuple[int, int] | None = None) -> Prepared:
        """Bytes -> :class:`Prepared`, with exactly ``predict``'s decoder and preprocessing."""
        t0 = time.perf_counter()
        hw = self.resolve_size(size)
        img = self.decode(data)
        cfg = self.runner.preprocess_cfg
        if hw != self.native_hw:
            cfg = dataclasses.replace(cfg, size=hw)
        x = preprocess(img, cfg)[0]  # (C, H, W)
        key = tuple(x.shape[-2:])
        return Prepared(x, key, self.tokens_for(key), (time.perf_counter() - t0) * 1e3, (img.height, img.width))

    # -- step 2: plan ------------------------------------------------------------------------------
    def plan(self, items: Sequence[Prepared]) -> list[list[int]]:
        """Indices of ``items`` grouped into forwards: one shape each, within the caps, in order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.key, []).append(i)
        out = []
        for key, idx in groups.items():
            c = self.cap(key)
            out += [idx[j:j + c] for j in range(0, len(idx), c)]
        return out

    # -- step 3: the model (one thread) ----------------------------------------------------------
    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) of one shape -> class probabilities (B, classes), float32 on the CPU."""
        x = pixels.to(self.runner.device, non_blocking=True)
        logits = self.runner.forward(x)  # int8 at the model's own size; dtype="auto" decides on the first batch
        return logits.float().softmax(dim=-1).cpu()

    def topk(self, probs: torch.Tensor, k: int) -> list[dict]:
        """One row of probabilities -> ``[{"label", "score"}, ...]``, most likely first."""
        preds, _ = topk_labels(probs, self.labels, k)  # the same ranking as `vitkit predict`
        return [{"label": lab, "score": score} for lab, score in preds]

    def probabilities(self, items: Sequence[Prepared]) -> list[torch.Tensor]:
        """Plan and run: one (classes,) row of probabilities per item, in order (what a Ray Serve batch,
        grouped by count only, calls: the plan splits it by shape and tokens)."""
        out: list = [None] * len(items)
        for idx in self.plan(items):
            probs = self.forward(torch.stack([items[i].pixels for i in idx]))
            for i, p in zip(idx, probs):
                out[i] = p
        return out

    def classify(self, items: Sequence[Prepared], topk: int = 5) -> list[list[dict]]:
        """:meth:`probabilities` -> one top-k list per item."""
        return [self.topk(p, topk) for p in self.probabilities(items)]

    def explain(self, img, method: str = "last", layer: int = -1, head: int | None = None,
                size: tuple[int, int] | None = None, topk: int = 5):
        """:func:`vitkit.explain.explain` on this handler's model (one image; the worker thread)."""
        from ..explain import explain

        hw = self.resolve_size(size)
        return explain(self.runner, img, method=method, layer=layer, head=head,
                       size=None if hw == self.native_hw else hw, topk=topk)

    def warmup(self) -> None:
        """One forward per served shape at batch 1 and at its cap, so the first requests do not pay
        for allocator growth and kernel selection."""
        c = self.model.cfg.channels
        for hw in dict.fromkeys([self.native_hw, *self.sizes]):
            for b in sorted({1, self.cap(hw)}):
                with torch.inference_mode():
                    self.runner.warm(torch.zeros(b, c, *hw).to(self.runner.device))

    def dtype_name(self) -> str:
        """"int8", "bfloat16", "float32"... (an undecided ``auto`` is "auto" until the first request's batch)."""
        name = self.runner.precision_name
        return name if name in ("int8", "auto") else str(self.runner.dtype).replace("torch.", "")

    def describe(self) -> dict:
        """What ``GET /v1/model`` answers."""
        cfg, pre = self.model.cfg, self.runner.preprocess_cfg
        arch = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool, type(None)))}
        arch["image_size"] = list(cfg.image_hw)
        pre_d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(pre).items()}
        return {"name": self.name, "source": self.source, "architecture": arch, "num_classes": len(self.labels),
                "labels": list(self.labels), "preprocessing": pre_d,
                "device": str(self.runner.device), "dtype": self.dtype_name(), "precision": self.runner.precision,
                "sizes": [list(self.native_hw)] + [list(s) for s in self.sizes if s != self.native_hw],
                "tokens": {f"{h}x{w}": self.tokens_for((h, w)) for h, w in [self.native_hw, *self.sizes]},
                "max_batch": self.max_batch, "max_batch_tokens": self.max_batch_tokens,
                "max_pixels": self.runner.max_pixels}


def overlay_png(expl, alpha: float | None = None) -> bytes:
    """The heat-map over the model's view of the image, as PNG bytes (the colours of ``vitkit explain``)."""
    from matplotlib import colormaps
    from PIL import Image

    from ..explain.render import ALPHA, CMAP, upsample

    a = ALPHA if alpha is None else alpha
    heat = upsample(expl.heatmap, expl.image.shape[:2])  # (H, W) in 0..1
    rgb = colormaps[CMAP](heat)[..., :3]  # (H, W, 3) in 0..1
    out = (1 - a) * expl.image.astype(np.float32) / 255 + a * rgb
    buf = io.BytesIO()
    Image.fromarray((out * 255 + 0.5).clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _upload_message(e: BaseException) -> str:
    # the decoder names its source ("<bytes>"); here that is always the upload
    msg = str(e).replace("<bytes>", "the upload")
    return msg if "the upload" in msg else f"the upload: {msg}"


def _model_name(src) -> str:
    import os

    name = os.path.basename(os.path.normpath(str(src))) or str(src)
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "vitkit"
