"""int8 inference on the CPU: ONNX Runtime's static quantisation, calibrated on real images and checked
against fp32 before it is used.

- The fp32 graph is :func:`vitkit.export.onnx.export_onnx`'s (verified against PyTorch), pre-processed by
  ONNX Runtime's ``quant_pre_process`` (shape inference and graph optimisation), then quantised by
  ``quantize_static`` in the QDQ format: every product with a weight (the patch projection, q/k/v, the
  attention output, both MLP layers, the head) gets int8 weights, symmetric and per output channel, and
  int8 activations, symmetric, whose ranges are calibrated (min/max) on the calibration images: ONNX
  Runtime's recommended S8S8. uint8 activations (U8S8) agreed with fp32 on only 96.9 % of the digits
  folder's 360 validation images on an AVX2 CPU without VNNI, S8S8 on 100 % (the u8·s8 instruction there
  saturates its 16-bit sums). The attention's
  activation-by-activation products, LayerNorm, softmax and GELU stay in float32 (:func:`weight_products`).
  ONNX Runtime runs the int8 products with VNNI / AMX-INT8 where the CPU has them, and AVX2 otherwise.
- **Agreement check**: the int8 model's top-1 against the fp32 PyTorch model's on the check images, which
  should not be the calibration images (a validation set); for a model without a head (embeddings, ``vitkit
  features``), an image agrees when its int8 embedding's cosine similarity with fp32's is at least 0.99
  (:data:`vitkit.inference.precision.FEATURE_COSINE`). Below ``min_agreement`` (99.5 % by default)
  :class:`Int8AgreementError` names the figure and nothing is written or used.
- Why ONNX Runtime rather than PyTorch's own: PyTorch's x86 quantisation (``torch.ao.quantization``) is
  deprecated in favour of the separate torchao package, and vitkit already exports and runs ONNX; ONNX
  Runtime's quantiser is maintained with its kernels.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..inference.precision import FEATURE_COSINE, MIN_AGREEMENT, cosine_agreed, top1_agreed
from ..models.vit import VisionTransformer
from .onnx import _require_onnx, cpu_session_options, export_onnx

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]


class Int8AgreementError(ValueError):
    """The int8 model agrees with fp32 (top-1, or the embedding's cosine) on fewer images than required;
    ``report`` holds the figures."""

    def __init__(self, message: str, report: "Int8Report | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class Int8Report:
    """What :func:`quantize_int8` wrote and measured."""

    path: Path
    agreement: float  # fraction of the check images that agree with fp32 (see ``measure``)
    agreed: int
    checked: int
    calibration_images: int
    min_agreement: float
    measure: str = "top-1"  # "top-1" (a classifier) or "cosine" (embeddings: cosine similarity >= FEATURE_COSINE)

    def describe(self) -> str:
        what = "top-1" if self.measure == "top-1" else f"of embeddings at cosine >= {FEATURE_COSINE} to fp32's"
        return (f"int8 (ONNX Runtime, static, calibrated on {self.calibration_images} image(s)) agrees with fp32 "
                f"on {self.agreed} of {self.checked} check image(s): {100 * self.agreement:.2f} % {what} "
                f"(required {100 * self.min_agreement:.1f} %)")


class Int8Session:
    """An int8 ONNX file in an ONNX Runtime CPU session: ``session(x)`` -> logits, float32 torch tensors.
    Batches of any size (the graph's batch is dynamic)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        _, ort = _require_onnx()
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), cpu_session_options(ort, threads),
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over (N, C, H, W) float32 images, in batches."""

    def __init__(self, name: str, images: torch.Tensor, batch: int = 8):
        self.feeds = iter([{name: np.ascontiguousarray(images[i:i + batch].numpy())}
                           for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # part of the protocol; min/max calibration reads the images once
        pass


def quiet_quantiser():
    """A context that silences ONNX Runtime's quantisers: they print advice and progress to stdout, warnings,
    and their advice to pre-process to the root logger."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    logging.disable(logging.WARNING)
    stack.callback(logging.disable, logging.NOTSET)
    return stack


@torch.no_grad()
def top1_agreement(model: VisionTransformer, session: Int8Session, images: torch.Tensor,
                   batch: int = 32) -> tuple[int, int]:
    """(images that agree, images checked): the same top-1 as the fp32 PyTorch model's for a classifier; for a
    model without a head (embeddings), a cosine similarity of at least FEATURE_COSINE with fp32's embedding."""
    ref = copy.deepcopy(model).float().cpu().eval()
    agreed_fn = top1_agreed if model.cfg.num_classes else cosine_agreed
    agreed = 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        agreed += agreed_fn(ref(x), session(x))
    return agreed, len(images)


def quantize_int8(model: VisionTransformer, path: str | os.PathLike, calibration: torch.Tensor,
                  check: torch.Tensor, *, min_agreement: float = MIN_AGREEMENT, opset: int = 18) -> Int8Report:
    """Write ``model`` as a statically quantised int8 ONNX file at ``path`` (see the module doc), calibrated on
    ``calibration`` and checked on ``check``: preprocessed (N, C, H, W) float32 images, as the model takes them.
    Refused with :class:`Int8AgreementError` (nothing written, an earlier file left as it was) when its
    agreement with fp32 on ``check`` (top-1; the embedding's cosine for a model without a head) is below
    ``min_agreement``."""
    onnx, _ = _require_onnx()
    if len(calibration) < 1 or len(check) < 1:
        raise ValueError(f"int8 needs calibration and check images (got {len(calibration)} and {len(check)})")
    if not 0 < min_agreement <= 1:
        raise ValueError(f"the minimum agreement (--min-agreement) must be in (0, 1], got {min_agreement}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{str(path)!r}: the output name should end in .onnx")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=".vitkit-int8-", dir=path.parent))
    try:
        fp32, q = tmpdir / "fp32.onnx", tmpdir / path.name
        export_onnx(model, fp32, dynamic_batch=True, opset=opset)
        quantize_onnx_static(fp32, q, calibration)
        agreed, n = top1_agreement(model, Int8Session(q), check.float().cpu())
        report = Int8Report(path=path, agreement=agreed / n, agreed=agreed, checked=n,
                            calibration_images=len(calibration), min_agreement=min_agreement,
                            measure="top-1" if model.cfg.num_classes else "cosine")
        if report.agreement < min_agreement:
            raise Int8AgreementError(f"{report.describe()}: refused (nothing written); keep fp32, calibrate on "
                                     "more images like the ones it will see, or accept a lower agreement "
                                     "(--min-agreement)", report)
        proto = onnx.load(str(q))  # the quantiser keeps export_onnx's vitkit.* entries (config, labels, ...)
        entry = proto.metadata_props.add()
        entry.key = "vitkit.int8"
        entry.value = json.dumps({"agreement": report.agreement, "measure": report.measure, "agreed": agreed, "checked": n,
                                  "calibration_images": len(calibration),
                                  "method": "static QDQ, int8 per-channel weights, int8 symmetric min/max activations"})
        onnx.save(proto, str(q))
        with open(q, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(q, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return report


def quantize_onnx_static(fp32: str | os.PathLike, out: str | os.PathLike, calibration: torch.Tensor) -> Path:
    """The quantisation step alone, on an fp32 ONNX file whose input is ``images``: ``quant_pre_process``, then
    ``quantize_static`` (S8S8 QDQ, per-channel weights, min/max over ``calibration``, weight products only).
    No agreement check: :func:`quantize_int8` adds it (``vitkit bench`` uses this step to time int8)."""
    onnx, _ = _require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    pre = out.with_name(out.stem + ".pre.onnx")
    try:
        with quiet_quantiser():
            quant_pre_process(str(fp32), str(pre))
            quantize_static(str(pre), str(out), _Calibration("images", calibration.float().cpu()),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
                            nodes_to_quantize=weight_products(onnx.load(str(pre))), per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": True})
    finally:
        pre.unlink(missing_ok=True)
    return out


def weight_products(proto) -> list[str]:
    """The MatMul / Gemm / Conv nodes whose second input is a weight (an initializer): the Linear layers and the
    patch projection. The attention's two products (q·kᵀ, attention·v) multiply activations by activations;
    quantising them too cost 3 points of top-1 agreement on the digits folder (96.7 %), so they stay float."""
    weights = {t.name for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in weights]


class Int8Model:
    """A statically quantised copy of ``model`` for inference, in a temporary file deleted with this object:
    ``Int8Model(model, calibration, check)(x)`` -> logits. ``report`` holds the agreement measured."""

    def __init__(self, model: VisionTransformer, calibration: torch.Tensor, check: torch.Tensor,
                 min_agreement: float = MIN_AGREEMENT, threads: int | None = None):
        folder = tempfile.mkdtemp(prefix="vitkit-int8-")
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)  # removed with this object, quietly
        self.report = quantize_int8(model, Path(folder) / "model.int8.onnx", calibration, check,
                                    min_agreement=min_agreement)
        self.session = Int8Session(self.report.path, threads=threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.session(x)


def images_for_int8(model: VisionTransformer, calibrate: list[str], check: list[str] | None = None, *,
                    calibration_images: int = 64, check_images: int = 1000,
                    max_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(calibration images, check images, a line saying where each came from), preprocessed as ``model`` wants.

    ``calibrate``: image files and/or folders; one folder with ``train/`` and ``val/`` inside calibrates on
    ``train/``. The check images are ``check`` when given; else that folder's ``val/``; else every second image
    of ``calibrate`` (the others calibrate). At most ``calibration_images`` are used, evenly spaced over the
    sorted list (a class folder's first images are all one class), and at most ``check_images``, likewise.
    Unreadable images are skipped and named in the line."""
    from ..data.decode import DEFAULT_MAX_PIXELS, open_image
    from ..data.preprocess import default_preprocess, preprocess
    from ..inference.images import list_images

    if calibration_images < 1 or check_images < 1:
        raise ValueError("--calibration-images and --check-images must be at least 1")
    root = Path(calibrate[0]) if len(calibrate) == 1 else None
    split = root is not None and (root / "train").is_dir() and (root / "val").is_dir()
    cal_paths, _ = list_images([root / "train"] if split else calibrate)
    if check:
        chk_paths, _ = list_images(check)
        where = "the --check images"
    elif split:
        chk_paths, _ = list_images([root / "val"])
        where = f"{root / 'val'}"
    else:
        if len(cal_paths) < 2:
            raise ValueError("int8 needs at least 2 images: some to calibrate on, others to check agreement on")
        cal_paths, chk_paths = cal_paths[0::2], cal_paths[1::2]
        where = "every second image of --calibrate (the others calibrate)"

    def spread(paths, n):
        if len(paths) <= n:
            return paths
        return [paths[(i * len(paths)) // n] for i in range(n)]  # evenly spaced, first and every class

    pre = model.preprocess_cfg or default_preprocess(model.cfg.image_hw, model.cfg.channels)  # as the pipeline does
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    skipped: list[str] = []

    def load(paths, what):
        imgs = []
        for p in paths:
            try:
                imgs.append(open_image(p, max_pixels=limit))
            except (ValueError, OSError):
                skipped.append(str(p))
        if not imgs:
            raise ValueError(f"none of the {len(paths)} {what} image(s) could be read (e.g. {str(paths[0])!r})")
        return preprocess(imgs, pre)

    cal = load(spread(cal_paths, calibration_images), "calibration")
    chk = load(spread(chk_paths, check_images), "check")
    line = f"calibrating on {len(cal)} image(s){' of ' + str(root / 'train') if split else ''}, checking on " \
           f"{len(chk)} of {where}"
    if skipped:
        line += (f"; skipped {len(skipped)} unreadable: {', '.join(skipped[:3])}"
                 f"{', ...' if len(skipped) > 3 else ''}")
    if len(chk) < 200:
        line += f" (with {len(chk)} check images, one disagreement is {100 / len(chk):.2g} points)"
    return cal, chk, line
