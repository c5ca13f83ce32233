"""BenchOptions: what one `vitkit bench` run measures, checked before anything is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ViTConfig
from ..inference.cpu import CPU_KERNELS

MODES = ("infer", "train")
DTYPES = ("fp32", "bf16", "fp16", "fp8")
PEERS = ("timm", "hf")
BACKENDS = ("torch", "onnxruntime")
COMPILE_MODES = ("off", "default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
SDPA_CHOICES = ("auto", "cudnn", "flash", "efficient", "math")
CPU_LINEARS = CPU_KERNELS
SWEEP_SIZES = (224, 384, 512, 1024)  # the resolution sweep of issue 6: 197 .. 4097 tokens at P=16
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_BATCH = 1 << 20


@dataclass
class BenchOptions:
    """One benchmark run: a model, how to run it, and which peers to time beside it."""

    model: str | ViTConfig = "vit_base_patch16_224"  # a name ("B/16"), a ViTConfig or a config .json
    mode: str = "infer"  # "infer": forward only; "train": forward + backward + AdamW step
    batch_sizes: tuple[int, ...] = (8,)
    image_sizes: tuple[int, ...] | None = None  # None: the model's own resolution
    dtype: str = "fp32"  # fp8: vitkit's FP8 matrix products (inference, GPU); peers then run bf16
    device: str = "auto"  # "auto": cuda when available, else cpu
    compile: str = "off"  # torch.compile mode for vitkit (and for peers unless peer_compile is set)
    peer_compile: str | None = None
    cuda_graphs: bool = False  # capture each vitkit step into a CUDA graph (fixed shapes)
    peer_cuda_graphs: bool = False
    channels_last: bool = False  # input and patch kernel in channels-last memory format
    compare: tuple[str, ...] = ()  # peers: "timm", "hf" (transformers)
    backends: tuple[str, ...] = ("torch",)  # how vitkit runs: PyTorch and/or an exported ONNX model
    sdpa: str = "auto"  # attention kernel for vitkit; peers keep PyTorch's default dispatch
    cpu_linear: str = "auto"  # vitkit's block Linears on the CPU: "onednn", "aten" (F.linear), "auto" (the faster)
    warmup: int = 3
    iters: int = 10
    num_classes: int | None = None  # None: the model's own
    threads: int | None = None  # CPU threads for torch and ONNX Runtime; None: leave as is
    ort_level: str = "all"  # ONNX Runtime graph optimisation level: basic | extended | all
    ort_int8: str | None = None  # "static" | "dynamic": also time the ONNX model in int8 (a different number)
    max_batch: bool = False  # search the largest batch that fits (GPU)
    max_batch_limit: int = 4096
    check_outputs: bool = True  # compare every implementation's output with vitkit's (same weights)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes copied into the JSON

    def resolved_device(self) -> torch.device:
        """The device this run uses; raises ValueError when it is not there."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"--device {self.device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: vitkit bench runs on cpu or cuda")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: no CUDA device is visible (torch.cuda.is_available() is False)")
        return dev

    def vitkit_cpu_linear(self, device: torch.device) -> str:
        """The CPU kernel choice for vitkit's block Linears in this run: "auto" / "onednn" for eager CPU
        inference in fp32/bf16 (vitkit.inference.cpu.optimize_for_cpu), "aten" otherwise."""
        if device.type != "cpu" or not (self.mode == "infer" and self.dtype in ("fp32", "bf16")
                                        and self.compile == "off"):
            return "aten"
        return self.cpu_linear

    def peer_compile_mode(self) -> str:
        return self.compile if self.peer_compile is None else self.peer_compile

    def validate(self) -> torch.device:
        """Raise ValueError naming the option when the combination cannot run; return the device."""

        def one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
            if value not in choices:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; got {value!r}")

        one_of("mode", self.mode, MODES)
        one_of("dtype", self.dtype, DTYPES)
        one_of("compile", self.compile, COMPILE_MODES)
        one_of("peer_compile", self.peer_compile_mode(), COMPILE_MODES)
        one_of("sdpa", self.sdpa, SDPA_CHOICES)
        one_of("ort_level", self.ort_level, ("basic", "extended", "all"))
        one_of("cpu_linear", self.cpu_linear, CPU_LINEARS)
        for p in self.compare:
            one_of("compare", p, PEERS)
        if len(set(self.compare)) != len(self.compare):
            raise ValueError(f"--compare names a peer twice: {list(self.compare)}")
        if not self.backends:
            raise ValueError(f"--backend needs at least one of {', '.join(BACKENDS)}")
        for b in self.backends:
            one_of("backend", b, BACKENDS)
        if not self.batch_sizes:
            raise ValueError("--batch needs at least one batch size")
        for b in self.batch_sizes:
            if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= MAX_BATCH:
                raise ValueError(f"--batch sizes must be integers in [1, {MAX_BATCH}]; got {b!r}")
        for s in self.image_sizes or ():
            if not isinstance(s, int) or isinstance(s, bool) or s < 1:
                raise ValueError(f"--image-size values must be positive integers; got {s!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"--warmup must be an integer >= 0; got {self.warmup!r}")
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"--iters must be an integer >= 1; got {self.iters!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"--threads must be a positive integer; got {self.threads!r}")
        if not isinstance(self.max_batch_limit, int) or not 1 <= self.max_batch_limit <= MAX_BATCH:
            raise ValueError(f"--max-batch-limit must be an integer in [1, {MAX_BATCH}]; got {self.max_batch_limit!r}")

        dev = self.resolved_device()
        cuda = dev.type == "cuda"
        if self.dtype == "fp8":
            if self.mode != "infer":
                raise ValueError("--dtype fp8 is an inference mode; train in bf16 (--dtype bf16)")
            if not cuda:
                raise ValueError("--dtype fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9+: "
                                 "Ada, Hopper, Blackwell); this run is on the cpu. The FP8 layers themselves run on "
                                 "the CPU for correctness checks: vitkit.bench.fp8.convert_to_fp8")
            cap = torch.cuda.get_device_capability(dev)
            if cap < (8, 9):
                raise ValueError(f"--dtype fp8 needs compute capability 8.9+; {torch.cuda.get_device_name(dev)} "
                                 f"is {cap[0]}.{cap[1]}")
        if (self.cuda_graphs or self.peer_cuda_graphs) and not cuda:
            raise ValueError("--cuda-graphs needs a CUDA device; this run is on the cpu")
        for flag, graphs, comp in (("--cuda-graphs", self.cuda_graphs, self.compile),
                                   ("--peer-cuda-graphs", self.peer_cuda_graphs, self.peer_compile_mode())):
            if graphs and comp in ("reduce-overhead", "max-autotune"):
                raise ValueError(f"{flag} with compile mode {comp}: that mode already captures CUDA graphs; use "
                                 "max-autotune-no-cudagraphs or default with " + flag)
        if self.sdpa in ("cudnn", "efficient") and not cuda:
            raise ValueError(f"--sdpa {self.sdpa} is a CUDA kernel; on the cpu use auto, flash or math")
        if self.cpu_linear == "onednn":
            from ..inference.cpu import onednn_available

            if cuda or self.mode != "infer" or self.dtype not in ("fp32", "bf16") or self.compile != "off":
                raise ValueError("--cpu-linear onednn is for eager CPU inference in fp32 or bf16 (without --compile)")
            import torch

            dt = torch.bfloat16 if self.dtype == "bf16" else torch.float32
            if not onednn_available(dt):
                raise ValueError(f"--cpu-linear onednn: oneDNN's inner product does not run in {self.dtype} with "
                                 "this PyTorch on this CPU (bf16 needs AVX-512)")
        if "onnxruntime" in self.backends:
            if cuda:
                raise ValueError("--backend onnxruntime times the exported model on the CPU; use --device cpu")
            if self.mode != "infer":
                raise ValueError("--backend onnxruntime times inference only; use --mode infer")
            if self.dtype != "fp32":
                raise ValueError("--backend onnxruntime times the fp32 export; use --dtype fp32")
        if self.ort_int8 is not None:
            one_of("ort_int8", self.ort_int8, ("static", "dynamic"))
        if self.ort_int8 and "onnxruntime" not in self.backends:
            raise ValueError("--ort-int8 needs --backend onnxruntime")
        if self.max_batch and not cuda:
            raise ValueError("--max-batch needs a CUDA device: on the CPU running out of memory is not an error "
                             "that can be caught (the kernel kills the process)")
        return dev

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict() if isinstance(self.model, ViTConfig) else str(self.model)
        for k in ("batch_sizes", "image_sizes", "compare", "backends"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d
