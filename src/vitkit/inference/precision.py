"""``dtype="auto"``: the fastest precision this machine runs well, kept only where it agrees with fp32.

- The candidate: bf16 where the hardware multiplies in it natively (a CPU with AMX or AVX512-BF16, a CUDA
  GPU of compute capability 8.0 or newer), else none: fp32. On a CPU without either, bf16 is emulated and
  slower than fp32, so it is not a candidate. Half precision (fp16) is never picked: its range overflows
  in some checkpoints' activations, and bf16 is as fast where both exist.
- The check: the first batch the model sees runs in both fp32 and the candidate, and the candidate is kept
  when it agrees with fp32 on at least ``min_agreement`` of that batch's images (the same 99.5 % as int8's
  check): the same top-1 for a classifier, an embedding whose cosine similarity with fp32's is at least
  :data:`FEATURE_COSINE` for features. The first batch's answers are fp32's; later batches run in what was
  decided. A batch of fewer than 200 images must agree on every image.
- int8 is never picked without images to calibrate on; with them (``--dtype auto --calibrate``) it is tried
  first, and a model whose int8 check fails falls back to the above instead of stopping
  (:class:`vitkit.inference.pipeline.ModelRunner`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("vitkit")

MIN_AGREEMENT = 0.995  # the share of images a lower precision (bf16 here, int8) must agree with fp32 on

# an embedding agrees when its cosine similarity with fp32's is at least this (bf16 measured >= 0.9996 on the
# digits folder's and lfw-faces' validation images: benchmarks/precision_auto.md)
FEATURE_COSINE = 0.99


def bf16_hardware(device: torch.device) -> str | None:
    """What runs bf16 natively on ``device`` ("AMX", "AVX512-BF16", "CUDA sm_90"...), or None."""
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            return "AMX"
        if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            return "AVX512-BF16"
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA sm_{major}{minor}" if major >= 8 else None
    return None  # mps: bf16 is not reliably faster there


def top1_agreed(ref: torch.Tensor, low: torch.Tensor) -> int:
    """Rows of two logit batches with the same top-1."""
    return int((ref.float().argmax(-1) == low.float().argmax(-1)).sum())


def cosine_agreed(ref: torch.Tensor, low: torch.Tensor) -> int:
    """Rows (embeddings, or token sequences flattened) whose cosine similarity is at least FEATURE_COSINE."""
    a, b = ref.float().flatten(1), low.float().flatten(1)
    return int((torch.nn.functional.cosine_similarity(a, b, dim=1) >= FEATURE_COSINE).sum())


@dataclass
class AutoPrecision:
    """The state of one ``dtype="auto"`` runner: the candidate, and once decided, the choice and why."""

    candidate: torch.dtype | None
    hardware: str | None
    min_agreement: float
    dtype: torch.dtype | None = None  # None until decided
    note: str = ""
    int8_refused: str | None = None  # "int8 not used: ..." when int8 was tried first and failed its check

    def describe(self) -> str:
        """The choice and why, with int8's refusal when there was one."""
        return self.note + (f"; {self.int8_refused}" if self.int8_refused else "")

    @classmethod
    def for_device(cls, device: torch.device, min_agreement: float = MIN_AGREEMENT) -> "AutoPrecision":
        hw = bf16_hardware(device)
        auto = cls(torch.bfloat16 if hw else None, hw, min_agreement,
                   note=f"auto: bf16 on {hw}, to be checked against fp32 on the first batch")
        if hw is None:
            what = "this CPU has neither AMX nor AVX512-BF16" if device.type == "cpu" else \
                f"no bf16 hardware on {device.type}"
            auto.decide_now(torch.float32, f"fp32 (auto: {what})")
        return auto

    @property
    def pending(self) -> bool:
        return self.dtype is None

    def decide_now(self, dtype: torch.dtype, note: str) -> None:
        self.dtype, self.note = dtype, note
        log.info("precision: %s", note)

    def decide(self, agreed: int, n: int) -> torch.dtype:
        """Keep the candidate when ``agreed`` of ``n`` first-batch images agree with fp32 (see the module doc)."""
        figure = f"{agreed} of the first {n} image(s)"
        if n and agreed / n >= self.min_agreement:
            self.decide_now(self.candidate, f"bf16 (auto: {self.hardware}; agreed with fp32 on {figure})")
        else:
            self.decide_now(torch.float32, f"fp32 (auto: bf16 on {self.hardware} agreed with fp32 on only "
                                           f"{figure}, below {100 * self.min_agreement:.1f} %)")
        return self.dtype
