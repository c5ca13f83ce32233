"""Throughput and memory of vitkit's ViT against timm's and transformers', measured in one process.

>>> from vitkit.bench import BenchOptions, run_bench
>>> doc = run_bench(BenchOptions("S/16", batch_sizes=(8,), compare=("timm",), device="cpu"))

timm, transformers and onnxruntime are imported only inside the code paths that use them.
"""

from .fp8 import Fp8Linear, convert_to_fp8, top1_agreement
from .max_batch import find_max_batch
from .options import BenchOptions
from .peak import measure_matmul_peak
from .peers import build_peer, copy_weights
from .runner import run_bench
from .sdpa import choose_sdpa_backends, sdpa_context

__all__ = ["BenchOptions", "Fp8Linear", "build_peer", "choose_sdpa_backends", "convert_to_fp8", "copy_weights",
           "find_max_batch", "measure_matmul_peak", "run_bench", "sdpa_context", "top1_agreement"]
