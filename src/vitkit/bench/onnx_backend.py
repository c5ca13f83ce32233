"""Timing vitkit as an exported ONNX model in ONNX Runtime (CPU).

The file is what ``vitkit export`` writes (:func:`vitkit.export.onnx.export_onnx`: checked
against PyTorch before it is used); this module opens it in a session tuned for
throughput and, on request, quantises it to int8. onnxruntime is imported only when this
backend is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

LEVELS = ("basic", "extended", "all")


def quantize_int8(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation of an ONNX model's matrix products (ONNX Runtime's quantize_dynamic):
    int8 weights (symmetric, per tensor), activations quantised per call. Changes the numbers: check
    top-1 agreement with the fp32 model (benchmarks/fp8_agreement.py does, on digits)."""
    _require_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..export.int8 import quiet_quantiser

    with quiet_quantiser():
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    return Path(out)


def _require_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError(f"--backend onnxruntime needs the 'onnxruntime' package ({e}); "
                         "pip install 'vitkit[export]'") from None
    return onnxruntime


def ort_session(path: str | os.PathLike, threads: int | None = None, level: str = "all"):
    """An ONNX Runtime CPU session tuned for throughput.

    ``level``: graph optimisation level (basic: constant folding and redundant nodes;
    extended: + fused GELU / LayerNorm / attention kernels; all: + layout changes).
    ``threads``: intra-op threads (None: torch's current thread count, so both backends
    get the same cores); inter-op parallelism and spin-waiting are off (``cpu_session_options``).
    """
    ort = _require_ort()
    if level not in LEVELS:
        raise ValueError(f"ONNX Runtime optimisation level must be one of {LEVELS}, got {level!r}")
    from ..export.onnx import cpu_session_options

    so = cpu_session_options(ort, threads)
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtRunner:
    """``runner()`` runs the session once on a fixed input; ``runner.output()`` returns the logits."""

    def __init__(self, session, x: torch.Tensor):
        self.session = session
        self.feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.detach().cpu().numpy())}

    def __call__(self):
        return self.session.run(None, self.feed)

    def output(self) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, self.feed)[0])
