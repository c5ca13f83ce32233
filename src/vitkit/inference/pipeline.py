"""Image classification pipeline: ``clf = vitkit.pipeline(SRC); clf("cat.jpg")`` -> [(label, probability), ...].

SRC is anything :func:`vitkit.load` accepts (or a model already in memory). Images go through
the safe decoder (:func:`vitkit.data.decode.open_image`), then the model's own preprocessing
(``model.preprocess_cfg``); a model without one gets :func:`default_preprocess_cfg`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
from PIL import Image

from ..config import ViTConfig
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, _source_name, open_image
from ..data.preprocess import PreprocessConfig, default_preprocess, preprocess
from ..models.classify import class_names, topk_labels
from ..models.vit import VisionTransformer
from .cpu import CPU_KERNELS, optimize_for_cpu
from .device import DTYPES, autocast, resolve_device, resolve_dtype
from . import precision
from .precision import MIN_AGREEMENT, AutoPrecision, top1_agreed

log = logging.getLogger("vitkit")


def default_preprocess_cfg(cfg: ViTConfig) -> PreprocessConfig:
    """The preprocessing used for a model that carries none (:func:`vitkit.data.preprocess.default_preprocess`:
    resize straight to the model's size, bilinear, mean = std = 0.5; grey for 1-channel models)."""
    return default_preprocess(cfg.image_hw, cfg.channels)


@dataclass
class Result:
    """One image's outcome: the top-k ``predictions`` or the ``error`` that made it skipped."""

    source: str
    predictions: list[tuple[str, float]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str | None = None


class ModelRunner:
    """A model with its device, precision, batch size, pixel limit and preprocessing.

    ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or None (= where the model already is;
    otherwise the model is moved there). ``dtype``: ``"fp32"``, ``"bf16"`` or ``"fp16"``: run under
    autocast; weights are not converted. ``"auto"``: bf16 where the hardware runs it natively and it agrees
    with fp32 on the first batch, else fp32 (:mod:`vitkit.inference.precision`); with ``int8_images``, int8
    first when its check passes. ``precision`` says what was chosen and why ("fp32", "bf16"... when asked for
    by name; ``dtype`` is what the model itself runs in, float32 under int8). ``max_pixels``: the decoder's
    pixel limit.
    ``cpu_kernels``: on the CPU in fp32, put the block Linears on the faster kernel in place
    ("auto", "onednn" or "aten"; :func:`vitkit.inference.cpu.optimize_for_cpu`: the same function,
    float32 rounding apart); None (default) leaves the model as it is.
    ``dtype="int8"`` (CPU only) runs a statically quantised copy in ONNX Runtime
    (:mod:`vitkit.export.int8`); it needs ``int8_images`` = (calibration, check) preprocessed images, and is
    refused when its top-1 agrees with fp32 on fewer than ``min_agreement`` of the check images.
    """

    def __init__(self, model: VisionTransformer, *, device: str | torch.device | None = None, dtype: str = "fp32",
                 batch_size: int = 32, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 preprocess_cfg: PreprocessConfig | None = None, cpu_kernels: str | None = None,
                 int8_images: tuple[torch.Tensor, torch.Tensor] | None = None, min_agreement: float | None = None):
        if not isinstance(model, VisionTransformer):
            raise TypeError(f"expected a vitkit VisionTransformer, got {type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
            # checked here once, not per image by the decoder (which would skip every image for it)
            raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
        self.model = model
        if device is None:
            self.device = next(model.parameters()).device
        else:
            self.device = resolve_device(device)
            model.to(self.device)
        self.int8 = None
        self.auto = None  # an AutoPrecision while dtype="auto" decides on the first batch
        min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
        refused = None  # "int8 not used: ..." when auto tried int8 first and its check failed
        if dtype == "int8" or (dtype == "auto" and int8_images is not None and self.device.type == "cpu"):
            from ..export.int8 import Int8AgreementError, Int8Model

            if self.device.type != "cpu":
                raise ValueError(f"int8 runs on the CPU (ONNX Runtime), not on {self.device}")
            if int8_images is None:
                raise ValueError("int8 needs images to calibrate on and to check agreement with fp32 on "
                                 "(int8_images=(calibration, check); --calibrate on the command line)")
            try:
                self.int8 = Int8Model(model, *int8_images, min_agreement=min_agreement)
            except Int8AgreementError as e:
                if dtype == "int8":
                    raise
                refused = f"int8 not used: {e.report.describe() if e.report else e}"
                log.info("%s", refused)
            if self.int8 is not None:
                self.precision = self.int8.report.describe()
                if dtype == "auto":
                    log.info("precision: %s", self.precision)
                dtype = "fp32"  # what the model itself (kept for attention maps) would run in
        if dtype == "auto":
            self.auto = AutoPrecision.for_device(self.device, min_agreement)
            self.auto.int8_refused = refused
            dtype = "fp32"  # until the first batch decides
        self.dtype = resolve_dtype(dtype, self.device)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and precision.bf16_hardware(self.device) is None:
            log.info("bf16 on this CPU (neither AMX nor AVX512-BF16) is emulated and slower than fp32: "
                     "--dtype auto or fp32 is faster here")
        if self.int8 is None:
            self.precision = self.auto.describe() if self.auto is not None else dtype  # "fp32", "bf16", "fp16"
        self.cpu_kernel = "aten"
        if cpu_kernels is not None:
            if cpu_kernels not in CPU_KERNELS:
                raise ValueError(f"cpu_kernels must be one of {CPU_KERNELS} or None, got {cpu_kernels!r}")
            if self.device.type == "cpu" and self.dtype == torch.float32:
                self.cpu_kernel = optimize_for_cpu(model, cpu_kernels, rows=batch_size * model.cfg.num_tokens)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.preprocess_cfg = preprocess_cfg or model.preprocess_cfg or default_preprocess_cfg(model.cfg)

    @property
    def precision_name(self) -> str:
        """"int8", "fp32", "bf16" or "fp16": what runs now ("auto" while the first batch has not decided)."""
        if self.int8 is not None:
            return "int8"
        if self.auto is not None and self.auto.pending:
            return "auto"
        return next(name for name, dt in DTYPES.items() if dt == self.dtype)

    def load_image(self, src: ImageSource) -> Image.Image:
        """One image through the safe decoder (RGB, upright, first frame)."""
        return open_image(src, max_pixels=self.max_pixels)

    def batches(self, images: Sequence[Image.Image]) -> Iterator[torch.Tensor]:
        """Decoded PIL images -> preprocessed (b, C, H, W) batches on the runner's device."""
        for i in range(0, len(images), self.batch_size):
            yield preprocess(list(images[i:i + self.batch_size]), self.preprocess_cfg).to(self.device)

    def autocast(self):
        """The precision context to run the model under."""
        return autocast(self.device, self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed batch: the int8 session when there is one (at the model's own size; the int8
        graph has no other), else the model in the runner's precision."""
        if self.int8 is not None and tuple(x.shape[-2:]) == self.model.cfg.image_hw:
            return self.int8(x)
        return self.run_model(self.model, x, top1_agreed)

    def warm(self, x: torch.Tensor) -> None:
        """Run ``x`` through every path :meth:`forward` may take (an undecided ``auto`` runs both of its
        precisions), deciding nothing: a service's warm-up batch of blank images must not be the check."""
        if self.auto is not None and self.auto.pending:
            self._both_precisions(self.model, x)
        else:
            self.forward(x)

    def _both_precisions(self, fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fn(x)`` in fp32 and under the undecided auto's candidate."""
        ref = fn(x)
        with autocast(self.device, self.auto.candidate):
            return ref, fn(x)

    def run_model(self, fn, x: torch.Tensor, agreed=top1_agreed) -> torch.Tensor:
        """``fn(x)`` in the runner's precision. While ``dtype="auto"`` is undecided, this batch runs in fp32 and in
        the candidate, ``agreed(fp32 out, candidate out)`` counts the rows that agree, and that decides (the
        batch's answer is fp32's)."""
        if self.auto is not None and self.auto.pending:
            ref, low = self._both_precisions(fn, x)
            self.dtype = self.auto.decide(agreed(ref, low), len(x))
            self.precision = self.auto.describe()
            return ref
        with self.autocast():
            return fn(x)


class ImageClassificationPipeline(ModelRunner):
    """Decode -> preprocess -> model -> softmax -> top-k, in batches (see :class:`ModelRunner`
    for the keyword arguments). Probabilities are computed in fp32."""

    def __init__(self, model: VisionTransformer, **kwargs):
        super().__init__(model, **kwargs)
        if not model.cfg.num_classes:
            raise ValueError("this model has no classification head (num_classes=0); "
                             "use vitkit features for embeddings")
        self.labels = class_names(model)

    @torch.no_grad()
    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Decoded PIL images -> class probabilities (N, classes), float32 on the CPU."""
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for x in self.batches(images):
                logits = self.forward(x)  # (b, classes)
                out.append(logits.float().softmax(dim=-1).cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def _topk(self, probs: torch.Tensor, k: int) -> tuple[list[tuple[str, float]], list[int]]:
        return topk_labels(probs, self.labels, k)

    def run(self, sources: Iterable[ImageSource], topk: int = 5, progress: bool = False,
            raise_errors: bool = False) -> Iterator[Result]:
        """Classify many images, batch by batch; an image that cannot be decoded yields a
        :class:`Result` with ``error`` set instead of stopping the run (or, with
        ``raise_errors``, raises the decoder's exception)."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        sources = list(sources)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(sources), unit="img", disable=None, leave=False)
        try:
            for start in range(0, len(sources), self.batch_size):
                chunk = sources[start:start + self.batch_size]
                results, good, imgs = [], [], []
                for src in chunk:
                    r = Result(_source_name(src))
                    try:
                        imgs.append(self.load_image(src))
                        good.append(r)
                    except (ValueError, OSError) as e:  # decode errors, missing/unreadable files
                        if raise_errors:
                            raise
                        r.error = str(e)
                    results.append(r)
                if imgs:
                    for r, p in zip(good, self.probabilities(imgs)):
                        r.predictions, r.indices = self._topk(p, topk)
                if bar is not None:
                    bar.update(len(chunk))
                yield from results
        finally:
            if bar is not None:
                bar.close()

    def __call__(self, images: ImageSource | Sequence[ImageSource], topk: int = 5
                 ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """One image (path, bytes, file object, PIL image) -> [(label, probability), ...] sorted
        by probability; a list of images -> one such list per image. Decoding errors are raised
        (``FileNotFoundError``, ``vitkit.data.decode.ImageDecodeError``...)."""
        single = not isinstance(images, (list, tuple))
        out = [r.predictions for r in self.run([images] if single else images, topk=topk, raise_errors=True)]
        return out[0] if single else out


def pipeline(src: str | os.PathLike | VisionTransformer, load_kwargs: dict | None = None,
             **kwargs) -> ImageClassificationPipeline:
    """An image classifier from ``src``: anything :func:`vitkit.load` accepts, or a model in memory.
    ``load_kwargs``: the :func:`vitkit.load` overrides (heads, image_size, pooling...).

    ``clf = vitkit.pipeline("runs/digits"); clf("seven.png", topk=3)`` -> [("7", 0.98), ...].
    Keyword arguments go to :class:`ImageClassificationPipeline`; ``dtype`` defaults to ``"auto"`` (bf16 where
    the hardware runs it natively and it agrees with fp32 on the first batch, else fp32; ``dtype="fp32"`` forces
    full precision). When loading from ``src``, ``device`` defaults to ``"auto"`` and ``cpu_kernels`` to
    ``"auto"``: the pipeline owns that model.
    """
    kwargs.setdefault("dtype", "auto")
    if isinstance(src, VisionTransformer):
        if load_kwargs:
            raise ValueError("load_kwargs are for loading src from a checkpoint; this model is already in memory")
        return ImageClassificationPipeline(src, **kwargs)
    from ..weights.api import load

    kwargs.setdefault("device", "auto")
    kwargs.setdefault("cpu_kernels", "auto")
    return ImageClassificationPipeline(load(src, **(load_kwargs or {})), **kwargs)
