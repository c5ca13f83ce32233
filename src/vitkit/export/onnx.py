"""ONNX export, verified: export with torch's ONNX exporter, run the file in onnxruntime on the
CPU, compare with PyTorch, and only then move it into place.

- Attention goes through the model's ``plain`` path (MatMul, Softmax, MatMul): standard ONNX
  operators every runtime has, at any opset (the fused SDPA path also exports, but may become
  the newer ``Attention`` operator at high opsets).
- Input ``images`` (B, C, H, W) float32, output ``logits`` (B, classes) float32 (or the pooled
  features for a headless model). ``dynamic_batch`` makes B symbolic.
- ``fp16``: weights and compute in float16 inside the graph; inputs and outputs stay float32.
- Parity: the largest absolute difference of the outputs against the fp32 PyTorch model, on
  seeded random images for each batch size checked (1 and 7 with a dynamic batch). Above
  ``atol`` (1e-4 for fp32, 2e-2 for fp16 by default) nothing is written and
  :class:`ExportParityError` is raised; an earlier file at the path is left untouched.
- The model's config, labels and preprocessing travel in the file's ``metadata_props``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.vit import VisionTransformer

DEFAULT_OPSET = 18
FP32_ATOL = 1e-4
FP16_ATOL = 2e-2
# keep weights inside the .onnx file below this size (protobuf's hard limit is 2 GiB)
EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportParityError(ValueError):
    """The exported file's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    opset: int
    dynamic_batch: bool
    fp16: bool
    input_shape: tuple  # (B, C, H, W); B is "batch" when dynamic
    max_abs_diff: float  # over every batch size checked
    atol: float
    diffs: dict[int, float] = field(default_factory=dict)  # batch size -> max abs diff
    files: list[Path] = field(default_factory=list)  # the .onnx and, for big models, its .data file


class _Export(nn.Module):
    """The graph to export: float32 in, float32 out, the plain attention path inside."""

    def __init__(self, model: VisionTransformer, fp16: bool):
        super().__init__()
        self.model = model
        self.fp16 = fp16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.half() if self.fp16 else images
        return self.model(x, attn_impl="plain").float()


def _require_onnx():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                          "pip install 'vitkit[export]'") from None
    return onnx, onnxruntime


def cpu_session_options(ort, threads: int | None = None):
    """ONNX Runtime CPU session options: ``threads`` intra-op threads (None: torch's current count, so both
    runtimes get the same cores), one graph branch at a time, errors only in the log, and no spin-waiting.
    ONNX Runtime's intra-op threads spin after each run by default; on a small CPU that spin takes the cores
    from whatever runs next in the process (measured on a 2-core Zen 5, ViT-S/16 batch 1: the PyTorch model
    run right after a session took 99.5 ms with spinning and 43.6 ms without, the session itself 45.6 and
    45.3 ms; benchmarks/README.md)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _metadata(model: VisionTransformer) -> dict[str, str]:
    pre = model.preprocess_cfg
    return {"vitkit.config": json.dumps(model.cfg.to_dict()),
            "vitkit.labels": json.dumps(list(model.labels) if model.labels else None),
            "vitkit.preprocess": json.dumps(pre.to_dict() if hasattr(pre, "to_dict") else pre),
            "vitkit.input": "images: (B, C, H, W) float32, normalised as vitkit.preprocess does",
            "vitkit.output": "logits: (B, classes) float32" if model.cfg.num_classes else "features: (B, D) float32"}


def check_onnx(path: str | os.PathLike, model: VisionTransformer, image_hw: tuple[int, int],
               batch_sizes: tuple[int, ...], seed: int = 0) -> dict[int, float]:
    """Run ``path`` in onnxruntime (CPU) and ``model`` in fp32 PyTorch on the same seeded random
    images; returns {batch size: max abs diff of the outputs}."""
    _, ort = _require_onnx()
    session = ort.InferenceSession(str(path), cpu_session_options(ort), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batch_sizes:
        x = torch.randn(b, model.cfg.channels, *image_hw, generator=gen)
        with torch.no_grad():
            ref = model(x).float().numpy()
        out = session.run(None, {name: x.numpy()})[0]
        if out.shape != ref.shape:
            raise ExportParityError(f"{path}: onnxruntime gave shape {out.shape}, PyTorch {ref.shape} (batch {b})")
        diffs[b] = float(np.abs(out.astype(np.float64) - ref).max())
    return diffs


def export_onnx(model: VisionTransformer, path: str | os.PathLike, *, image_size: tuple[int, int] | None = None,
                dynamic_batch: bool = True, batch_size: int = 1, opset: int = DEFAULT_OPSET, fp16: bool = False,
                atol: float | None = None, check_batches: tuple[int, ...] | None = None) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` after checking the file against PyTorch (see module doc).

    ``image_size``: (H, W) of the graph's input (default: the model's own size; another size needs
    a model built with ``dynamic_img_size``). ``batch_size``: the fixed batch without
    ``dynamic_batch``. ``check_batches``: batch sizes compared (default (1, 7) dynamic, else
    (batch_size,)). The model itself is not changed (a CPU copy is exported).
    """
    onnx, _ = _require_onnx()
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{str(path)!r}: the output name should end in .onnx")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give a file name ending in .onnx")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    atol = (FP16_ATOL if fp16 else FP32_ATOL) if atol is None else float(atol)
    hw = tuple(image_size) if image_size is not None else model.cfg.image_hw
    check_batches = tuple(check_batches or ((1, 7) if dynamic_batch else (batch_size,)))
    if not dynamic_batch and any(b != batch_size for b in check_batches):
        raise ValueError(f"a fixed-batch export (batch {batch_size}) can only be checked at that batch size")

    ref = copy.deepcopy(model).float().cpu().eval()  # the fp32 reference
    graph = _Export(copy.deepcopy(ref).half() if fp16 else ref, fp16).eval()
    example = torch.randn(2 if dynamic_batch else batch_size, model.cfg.channels, *hw)
    ref.patch_embed.check_input(example)  # a clear error for a size the model cannot take
    n_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    external = n_bytes > EXTERNAL_DATA_BYTES
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch", min=1, max=65536)}}

    tmpdir = Path(tempfile.mkdtemp(prefix=".vitkit-export-", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (deprecations, shape notes)
            try:
                torch.onnx.export(graph, (example,), str(tmp), input_names=["images"],
                                  output_names=["logits" if model.cfg.num_classes else "features"],
                                  opset_version=opset, dynamo=True, external_data=external, verbose=False,
                                  **kwargs)
            except Exception as e:  # the exporter's own errors are many and varied
                raise ValueError(f"ONNX export failed at opset {opset}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from e
        proto = onnx.load(str(tmp), load_external_data=False)
        for k, v in _metadata(model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
        diffs = check_onnx(tmp, ref, hw, check_batches)
        worst = max(diffs.values())
        if not worst <= atol:  # also catches NaN
            raise ExportParityError(f"{path}: onnxruntime and PyTorch differ by {worst:.3g} (max abs, per batch "
                                    f"{ {b: float(f'{d:.3g}') for b, d in diffs.items()} }), more than the allowed "
                                    f"{atol:g}; nothing was written")
        files = sorted(tmpdir.iterdir(), key=lambda f: f.suffix == ".onnx")  # data file(s) first, .onnx last
        for f in files:
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    shape = ("batch" if dynamic_batch else batch_size, model.cfg.channels, *hw)
    return ExportReport(path=path, opset=opset, dynamic_batch=dynamic_batch, fp16=fp16, input_shape=shape,
                        max_abs_diff=worst, atol=atol, diffs=diffs, files=[path.parent / f.name for f in files])
