"""run_bench: build vitkit and its peers from one config, time them interleaved, report.

For every (resolution, batch): one randomly initialised vitkit model gives the
weights; each peer is built from the same ViTConfig, loaded with those weights and
its output checked against vitkit's; then every implementation is prepared in the
run's dtype / compile / graph settings, warmed up, and timed in turns. Throughput
is images per second from the median step time; achieved TFLOP/s uses
``ViTConfig.flops()`` (training counts 3x the forward).
"""

from __future__ import annotations

import functools
import gc
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import ViTConfig
from ..models import VisionTransformer
from ..models.factory import resolve_config
from ..weights.api import is_checkpoint, load
from .memory import cpu_step_peak_bytes, cuda_step_peak_bytes, resident_bytes
from .max_batch import find_max_batch
from .options import BenchOptions
from .peak import measure_matmul_peak
from .peers import build_peer, copy_weights
from .report import SCHEMA, machine_info, now_utc
from .sdpa import backend_names, choose_sdpa_backends
from .steps import TORCH_DTYPES, StepSpec, make_step, prepare_model
from .timing import interleaved, median, spread

TRAIN_FLOP_FACTOR = 3  # backward ≈ 2x forward


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights (norm gains near 1, the rest N(0, 0.05²)), so outputs are not trivially zero
    (a fresh vitkit head is zero) and differences between implementations show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * r if "norm" in name and name.endswith("weight") else 0.05 * r)
    return model


def bench_config(opts: BenchOptions, image_size: int | None) -> ViTConfig:
    """The model's config at one resolution (and class count) of the run."""
    over: dict[str, Any] = {}
    if image_size is not None:
        over["image_size"] = image_size
    if opts.num_classes is not None:
        over["num_classes"] = opts.num_classes
    src = opts.model
    if isinstance(src, (str, os.PathLike)) and is_checkpoint(src):
        src = checkpoint_config(str(src))  # a checkpoint's architecture (timed with seeded random weights)
    return resolve_config(src, **over)


@functools.lru_cache(maxsize=8)
def checkpoint_config(src: str) -> ViTConfig:
    """The architecture of a checkpoint, read through the one door (``vitkit.load``)."""
    return load(src).cfg


def to_command(opts: BenchOptions) -> str:
    """The `vitkit bench` command line that reproduces this run."""
    model = "<config>" if isinstance(opts.model, ViTConfig) else str(opts.model)
    a = ["vitkit", "bench", model, "--mode", opts.mode, "--batch", *map(str, opts.batch_sizes)]
    if opts.image_sizes:
        a += ["--image-size", *map(str, opts.image_sizes)]
    a += ["--dtype", opts.dtype, "--device", opts.device, "--compile", opts.compile]
    if opts.peer_compile is not None:
        a += ["--peer-compile", opts.peer_compile]
    for flag, on in (("--cuda-graphs", opts.cuda_graphs), ("--peer-cuda-graphs", opts.peer_cuda_graphs),
                     ("--channels-last", opts.channels_last), ("--max-batch", opts.max_batch)):
        if on:
            a.append(flag)
    if opts.compare:
        a += ["--compare", ",".join(opts.compare)]
    a += ["--backend", ",".join(opts.backends), "--sdpa", opts.sdpa, "--cpu-linear", opts.cpu_linear,
          "--warmup", str(opts.warmup), "--iters", str(opts.iters)]
    if opts.num_classes is not None:
        a += ["--num-classes", str(opts.num_classes)]
    if opts.threads is not None:
        a += ["--threads", str(opts.threads)]
    if "onnxruntime" in opts.backends:
        a += ["--ort-level", opts.ort_level]
    if opts.ort_int8:
        a += ["--ort-int8", opts.ort_int8]
    return shlex.join(a)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


class _Impl:
    """One implementation in a run: its name, how it runs, its step, and what it checked."""

    def __init__(self, name: str, kind: str, backend: str, dtype: str, params: int):
        self.name, self.kind, self.backend, self.dtype, self.params = name, kind, backend, dtype, params
        self.step = None
        self.spec: StepSpec | None = None
        self.model = None
        self.optimizer = None
        self.resident = 0
        self.max_abs_diff: float | None = None
        self.sdpa: list[str] | None = None


def _prepare_torch(impl: _Impl, model, x, y, spec: StepSpec, device, warmup: int, rows: int | None = None) -> None:
    """``rows``: tokens per batch, what the CPU kernel choice is timed on (vitkit only)."""
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    impl.model = prepare_model(model, spec, device, rows)
    step = make_step(impl.model, x, y, spec, device)
    for _ in range(warmup):  # compile, autotune, lazy inits: before anything is timed
        step.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        impl.resident = torch.cuda.memory_allocated(device) - before
    else:
        impl.resident = resident_bytes(impl.model, step.optimizer)
    impl.step, impl.spec, impl.optimizer = step.run, spec, step.optimizer


def _bench_point(opts: BenchOptions, device: torch.device, cfg: ViTConfig, batch: int,
                 workdir: Path, log) -> tuple[list[_Impl], dict[str, list[float]]]:
    g = torch.Generator().manual_seed(opts.seed)
    h, w = cfg.image_hw
    x = torch.randn(batch, cfg.channels, h, w, generator=g)
    y = torch.randint(0, max(cfg.num_classes, 1), (batch,), generator=g) if cfg.num_classes else None
    ref = randomise(VisionTransformer(cfg), opts.seed).eval()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    check_x = x[:2]
    with torch.no_grad():
        ref_out = ref(check_x) if opts.check_outputs else None
    n_params = sum(p.numel() for p in ref.parameters())
    impls: list[_Impl] = []
    peer_dtype = "bf16" if opts.dtype == "fp8" else opts.dtype  # peers have no FP8 mode: their best is bf16
    vit_sdpa = choose_sdpa_backends(opts.sdpa, device.type, TORCH_DTYPES[opts.dtype], cfg.head_dim)

    # peers first: a config a peer cannot express fails here, before anything is compiled or timed
    peers = []
    for peer_name in opts.compare:
        peer = build_peer(peer_name, cfg)
        copy_weights(peer_name, peer, state)
        impl = _Impl(peer_name, peer_name, "torch", peer_dtype, sum(p.numel() for p in peer.parameters()))
        if opts.check_outputs:
            peer.eval()
            with torch.no_grad():
                impl.max_abs_diff = _max_diff(peer(check_x), ref_out)
            if impl.max_abs_diff > 1e-3:
                log(f"  warning: {peer_name}'s output differs from vitkit's by {impl.max_abs_diff:.2e} on the "
                    "same weights")
        peers.append((impl, peer))

    if "torch" in opts.backends:
        impl = _Impl("vitkit", "vitkit", "torch", opts.dtype, n_params)
        impl.sdpa = backend_names(vit_sdpa)
        model = VisionTransformer(cfg)
        model.load_state_dict(state)
        spec = StepSpec(opts.mode, opts.dtype, opts.compile, opts.cuda_graphs, opts.channels_last, vit_sdpa,
                        cpu_linear=opts.vitkit_cpu_linear(device))
        log(f"  preparing vitkit ({opts.mode}, {opts.dtype}, compile={opts.compile})")
        _prepare_torch(impl, model, x, y, spec, device, opts.warmup, rows=batch * cfg.num_tokens)
        if opts.check_outputs and opts.mode == "infer":  # the prepared model (dtype, kernels) vs the fp32 one
            with torch.inference_mode():
                impl.max_abs_diff = _max_diff(impl.model(check_x.to(device, TORCH_DTYPES[opts.dtype])).cpu(), ref_out)
        elif opts.check_outputs:
            impl.max_abs_diff = None  # training: the reference weights themselves, not compared
        impls.append(impl)

    for impl, peer in peers:
        peer_name = impl.name
        spec = StepSpec(opts.mode, peer_dtype, opts.peer_compile_mode(), opts.peer_cuda_graphs, opts.channels_last,
                        None)
        log(f"  preparing {peer_name} ({opts.mode}, {peer_dtype}, compile={opts.peer_compile_mode()})")
        _prepare_torch(impl, peer, x, y, spec, device, opts.warmup)
        impls.append(impl)

    if "onnxruntime" in opts.backends:
        from ..export.onnx import export_onnx
        from .onnx_backend import OrtRunner, ort_session

        log("  exporting vitkit to ONNX (vitkit.export, fixed batch) and opening an ONNX Runtime session")
        path = workdir / f"vitkit_{h}x{w}_b{batch}.onnx"
        export_onnx(ref, path, image_size=(h, w), dynamic_batch=False, batch_size=batch)
        runner = OrtRunner(ort_session(path, opts.threads, opts.ort_level), x)
        impl = _Impl("vitkit[onnxruntime]", "vitkit", "onnxruntime", "fp32", n_params)
        if opts.check_outputs:
            with torch.no_grad():
                impl.max_abs_diff = _max_diff(runner.output()[:2], ref_out)
        for _ in range(opts.warmup):
            runner()
        impl.step = runner
        impls.append(impl)
        if opts.ort_int8:
            qpath = workdir / f"vitkit_{h}x{w}_b{batch}_int8.onnx"
            log(f"  quantising the ONNX model to int8 ({opts.ort_int8})")
            if opts.ort_int8 == "dynamic":
                from .onnx_backend import quantize_int8

                quantize_int8(path, qpath)
            else:  # the timing batch calibrates: speed only (predict and export check agreement on real images)
                from ..export.int8 import quantize_onnx_static

                quantize_onnx_static(path, qpath, x.float().cpu())
            qrunner = OrtRunner(ort_session(qpath, opts.threads, opts.ort_level), x)
            impl = _Impl("vitkit[onnxruntime-int8]", "vitkit", "onnxruntime", "int8", n_params)
            if opts.check_outputs:
                impl.max_abs_diff = _max_diff(qrunner.output()[:2], ref_out)
            for _ in range(opts.warmup):
                qrunner()
            impl.step = qrunner
            impls.append(impl)

    del ref
    log(f"  timing {', '.join(i.name for i in impls)}: {opts.iters} interleaved rounds")
    times = interleaved({i.name: i.step for i in impls}, device, warmup=1 if opts.warmup else 0, iters=opts.iters)
    return impls, times


def _linear_kind(impl: _Impl) -> str | None:
    if impl.spec is None:
        return None  # ONNX Runtime: its own kernels
    return impl.spec.cpu_linear


def _peak_mem_mb(impl: _Impl, device: torch.device) -> float | None:
    """Resident state + the transient peak of one more step; None where it cannot be measured."""
    if impl.backend != "torch":
        return None  # ONNX Runtime's arena is outside PyTorch's view
    if device.type == "cuda":
        return (impl.resident + cuda_step_peak_bytes(impl.step, device)) / 2**20
    if impl.spec.compile != "off":
        return None  # the CPU tracker sees eager ops only
    return (impl.resident + cpu_step_peak_bytes(impl.step)) / 2**20


def run_bench(opts: BenchOptions, log=lambda msg: None) -> dict[str, Any]:
    """Run the benchmark ``opts`` describes; return the JSON-ready result (schema ``vitkit.bench/1``)."""
    device = opts.validate()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    base = bench_config(opts, None)
    sizes = list(opts.image_sizes) if opts.image_sizes else [None]
    configs = [bench_config(opts, s) for s in sizes]  # config errors surface before any work
    if opts.mode == "train" and any(c.num_classes == 0 for c in configs):
        log("  note: num_classes=0, training on a mean-square loss of the features")
    doc: dict[str, Any] = {"schema": SCHEMA, "command": to_command(opts), "date": now_utc(),
                           "device": str(device), "machine": machine_info(device), "options": opts.to_dict(),
                           "model_config": base.to_dict(), "rows": [], "ratios": [], "max_batch": []}
    peak_dtype = "bf16" if opts.dtype == "fp8" and device.type != "cuda" else opts.dtype
    log(f"measuring the {peak_dtype} matrix-product peak on {device}")
    first_peak = measure_matmul_peak(device, peak_dtype)
    with tempfile.TemporaryDirectory(prefix="vitkit-bench-") as tmp:
        for cfg in configs:
            res = cfg.image_hw[0]
            for batch in opts.batch_sizes:
                log(f"{cfg.image_hw[0]}x{cfg.image_hw[1]}, batch {batch}, {cfg.num_tokens} tokens")
                impls, times = _bench_point(opts, device, cfg, batch, Path(tmp), log)
                flops = cfg.flops() * (TRAIN_FLOP_FACTOR if opts.mode == "train" else 1) * batch
                rows = {}
                for impl in impls:
                    t = median(times[impl.name])
                    tflops = flops / t / 1e12
                    rows[impl.name] = row = {
                        "impl": impl.name, "kind": impl.kind, "backend": impl.backend, "mode": opts.mode,
                        "image_size": res, "image_hw": list(cfg.image_hw), "tokens": cfg.num_tokens,
                        "batch": batch, "dtype": impl.dtype, "device": str(device),
                        "compile": impl.spec.compile if impl.spec else None,
                        "cuda_graphs": impl.spec.cuda_graphs if impl.spec else False,
                        "channels_last": opts.channels_last if impl.spec else False,
                        "sdpa": impl.sdpa, "linear": _linear_kind(impl), "params": impl.params,
                        "gflops_per_image": cfg.flops() / 1e9,
                        "times_s": times[impl.name], "median_s": t, "min_s": min(times[impl.name]),
                        "spread": spread(times[impl.name]),
                        "img_per_s": batch / t, "tflops": tflops, "pct_of_peak": None,
                        "peak_mem_mb": _peak_mem_mb(impl, device), "max_abs_diff_vs_vitkit": impl.max_abs_diff}
                    doc["rows"].append(row)
                for num in [r for r in rows.values() if r["kind"] == "vitkit"]:
                    for den in rows.values():
                        if den is num or (den["kind"] == "vitkit" and den["backend"] == "onnxruntime"):
                            continue
                        doc["ratios"].append({"numerator": num["impl"], "denominator": den["impl"],
                                              "image_size": res, "batch": batch,
                                              "ratio": num["img_per_s"] / den["img_per_s"],
                                              "ratio_fastest": den["min_s"] / num["min_s"]})
                if opts.max_batch:
                    for impl in impls:
                        if impl.backend == "torch":
                            doc["max_batch"].append(_search_max_batch(opts, device, cfg, impl, log))
                del impls, rows
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    # the peak again at the end, keeping the faster: on a shared machine either one may have been slowed
    last_peak = measure_matmul_peak(device, peak_dtype)
    doc["matmul_peak"] = max(first_peak, last_peak, key=lambda p: p["tflops"])
    doc["matmul_peak"]["tflops_start_end"] = [first_peak["tflops"], last_peak["tflops"]]
    for row in doc["rows"]:
        row["pct_of_peak"] = 100 * row["tflops"] / doc["matmul_peak"]["tflops"]
    doc["machine"]["load_avg_end"] = machine_info(device)["load_avg"]
    return doc


def _search_max_batch(opts: BenchOptions, device: torch.device, cfg: ViTConfig, impl: _Impl, log) -> dict:
    log(f"  max-batch search for {impl.name} (limit {opts.max_batch_limit})")
    h, w = cfg.image_hw
    impl.step = None  # drop the timed step's graph / buffers before trying bigger batches

    def try_batch(b: int) -> None:
        x = torch.randn(b, cfg.channels, h, w)
        y = torch.randint(0, max(cfg.num_classes, 1), (b,)) if cfg.num_classes else None
        step = make_step(impl.model, x, y, impl.spec, device)
        step.run()
        torch.cuda.synchronize(device)

    out = find_max_batch(try_batch, start=1, limit=opts.max_batch_limit)
    return {"impl": impl.name, "image_size": cfg.image_hw[0], "tokens": cfg.num_tokens, "dtype": impl.dtype,
            "mode": opts.mode, **out}
