"""vitkit bench: the harness's behaviour (never its speed): rows, ratios, JSON, checks, errors."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from vitkit.bench import BenchOptions, run_bench
from vitkit.bench.report import _ISA_FLAGS, SCHEMA, write_json
from vitkit.bench.runner import to_command
from vitkit.bench.timing import interleaved, spread
from vitkit.cli.main import main

from helpers import tiny_cfg

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROW_KEYS = {"impl", "kind", "backend", "mode", "image_size", "image_hw", "tokens", "batch", "dtype", "device", "linear",
            "compile", "cuda_graphs", "channels_last", "sdpa", "params", "gflops_per_image", "times_s", "median_s",
            "spread", "min_s", "img_per_s", "tflops", "pct_of_peak", "peak_mem_mb", "max_abs_diff_vs_vitkit"}


def _opts(**kw):
    base = dict(model=tiny_cfg(), batch_sizes=(2,), device="cpu", warmup=1, iters=2)
    base.update(kw)
    return BenchOptions(**base)


def test_run_bench_rows_ratios_and_flops():
    doc = run_bench(_opts(compare=("timm", "hf"), batch_sizes=(2, 3)))
    assert doc["schema"] == SCHEMA and doc["device"] == "cpu"
    assert [(r["impl"], r["batch"]) for r in doc["rows"]] == [
        ("vitkit", 2), ("timm", 2), ("hf", 2), ("vitkit", 3), ("timm", 3), ("hf", 3)]
    cfg = tiny_cfg()
    peak = doc["matmul_peak"]["tflops"]
    for r in doc["rows"]:
        assert set(r) == ROW_KEYS
        assert len(r["times_s"]) == 2 and r["median_s"] == pytest.approx(sum(r["times_s"]) / 2)
        assert r["img_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["tflops"] == pytest.approx(cfg.flops() * r["batch"] / r["median_s"] / 1e12)
        assert r["pct_of_peak"] == pytest.approx(100 * r["tflops"] / peak)
        assert r["params"] == cfg.num_params() and r["tokens"] == cfg.num_tokens
        assert r["max_abs_diff_vs_vitkit"] <= 1e-5  # same weights, same outputs
        assert r["peak_mem_mb"] > r["params"] * 4 / 2**20  # weights + activations
    by = {(r["impl"], r["batch"]): r for r in doc["rows"]}
    ratios = {(q["numerator"], q["denominator"], q["batch"]): q["ratio"] for q in doc["ratios"]}
    assert set(ratios) == {("vitkit", p, b) for p in ("timm", "hf") for b in (2, 3)}
    for (num, den, b), v in ratios.items():
        assert v == pytest.approx(by[(num, b)]["img_per_s"] / by[(den, b)]["img_per_s"])
    for q in doc["ratios"]:
        assert q["ratio_fastest"] == pytest.approx(by[(q["denominator"], q["batch"])]["min_s"]
                                                   / by[(q["numerator"], q["batch"])]["min_s"])
    json.dumps(doc)  # everything is JSON-serialisable


def test_training_mode_counts_three_forward_passes():
    doc = run_bench(_opts(mode="train", dtype="bf16", compare=("timm",)))
    for r in doc["rows"]:
        assert r["mode"] == "train" and r["dtype"] == "bf16"
        assert r["tflops"] == pytest.approx(3 * tiny_cfg().flops() * 2 / r["median_s"] / 1e12)
        assert r["peak_mem_mb"] > 4 * r["params"] * 4 / 2**20  # + grads and two AdamW moments


def test_resolution_sweep_builds_each_size():
    doc = run_bench(_opts(image_sizes=(16, 32, 48), check_outputs=False))
    assert [(r["image_size"], r["tokens"]) for r in doc["rows"]] == [(16, 5), (32, 17), (48, 37)]
    assert all(r["max_abs_diff_vs_vitkit"] is None for r in doc["rows"])
    flops = [r["gflops_per_image"] for r in doc["rows"]]
    assert flops[0] < flops[1] < flops[2]


def test_onnxruntime_backend_row_and_ratios(tmp_path):
    doc = run_bench(_opts(model=tiny_cfg(width=64), backends=("torch", "onnxruntime"), compare=("timm",),
                          ort_int8="static"))
    rows = {r["impl"]: r for r in doc["rows"]}
    assert set(rows) == {"vitkit", "timm", "vitkit[onnxruntime]", "vitkit[onnxruntime-int8]"}
    ort = rows["vitkit[onnxruntime]"]
    assert ort["backend"] == "onnxruntime" and ort["max_abs_diff_vs_vitkit"] < 1e-4 and ort["peak_mem_mb"] is None
    q8 = rows["vitkit[onnxruntime-int8]"]
    assert q8["dtype"] == "int8" and 1e-5 < q8["max_abs_diff_vs_vitkit"] < 0.5  # quantised: close, not equal
    pairs = {(q["numerator"], q["denominator"]) for q in doc["ratios"]}
    assert pairs == {("vitkit", "timm"), ("vitkit[onnxruntime]", "vitkit"), ("vitkit[onnxruntime]", "timm"),
                     ("vitkit[onnxruntime-int8]", "vitkit"), ("vitkit[onnxruntime-int8]", "timm")}


@pytest.mark.parametrize("kw,msg", [
    (dict(mode="eval"), "--mode must be one of infer, train"),
    (dict(dtype="int8"), "--dtype must be one of"),
    (dict(compare=("jax",)), "--compare must be one of timm, hf"),
    (dict(compare=("timm", "timm")), "names a peer twice"),
    (dict(batch_sizes=(0,)), "--batch sizes must be integers"),
    (dict(batch_sizes=()), "at least one batch size"),
    (dict(iters=0), "--iters must be an integer >= 1"),
    (dict(dtype="fp8"), "--dtype fp8 needs an NVIDIA GPU"),
    (dict(dtype="fp8", mode="train"), "fp8 is an inference mode"),
    (dict(cuda_graphs=True), "--cuda-graphs needs a CUDA device"),
    (dict(sdpa="cudnn"), "--sdpa cudnn is a CUDA kernel"),
    (dict(max_batch=True), "--max-batch needs a CUDA device"),
    (dict(backends=("onnxruntime",), mode="train"), "onnxruntime times inference only"),
    (dict(backends=("onnxruntime",), dtype="bf16"), "onnxruntime times the fp32 export"),
    (dict(device="tpu"), "--device 'tpu'"),
    (dict(ort_int8="static"), "--ort-int8 needs --backend onnxruntime"),
    (dict(image_sizes=(30,)), "not divisible by patch_size 8"),
])
def test_bad_options_are_refused_before_any_work(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        run_bench(_opts(**kw))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda():
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        run_bench(_opts(device="cuda"))


def test_interleaving_rotates_and_times_every_step():
    order = []
    steps = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = interleaved(steps, torch.device("cpu"), warmup=1, iters=3)
    assert order[:3] == ["a", "b", "c"]  # warm-up, in order
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later
    assert all(len(t) == 3 and min(t) >= 0 for t in times.values())
    assert spread([1.0, 1.0, 1.0, 1.0]) == 0.0 and spread([1.0, 2.0, 3.0, 4.0, 5.0]) > 0


def test_write_json_is_atomic_and_checks_paths(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    write_json({"a": 1}, p)
    assert json.loads(p.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["r.json"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_json({}, tmp_path / "nope" / "r.json")
    with pytest.raises(IsADirectoryError):
        write_json({}, tmp_path)

    class Bad:
        pass
    with pytest.raises(TypeError):
        write_json({"x": Bad()}, p)
    assert json.loads(p.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["r.json"]  # old file intact


def test_command_line_reproduces_the_options():
    cmd = to_command(_opts(model="S/16", compare=("timm", "hf"), backends=("torch", "onnxruntime"), threads=2,
                           image_sizes=(224, 384)))
    assert cmd.startswith("vitkit bench S/16 --mode infer --batch 2 --image-size 224 384 --dtype fp32")
    assert "--compare timm,hf" in cmd and "--backend torch,onnxruntime" in cmd and "--threads 2" in cmd


# --- CLI ---------------------------------------------------------------------------------

def _cfg_file(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(tiny_cfg().to_dict()))
    return str(p)


def test_cli_writes_json_and_prints_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cfg = _cfg_file(tmp_path)
    rc = main(["bench", cfg, "--device", "cpu", "--batch", "2", "--iters", "2", "--warmup", "1",
               "--compare", "timm", "--json", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "vitkit" in text and "ratio vitkit / timm" in text and f"wrote {out}" in text
    doc = json.loads(out.read_text())
    assert doc["options"]["compare"] == ["timm"] and len(doc["rows"]) == 2
    assert doc["command"].startswith(f"vitkit bench {cfg} --mode infer --batch 2 --dtype fp32 --device cpu")
    assert doc["machine"]["cpu_count"] >= 1 and doc["date"].endswith("+00:00")
    # the CPU is identified beyond its marketing name (kernel speed differs ~2x between generations)
    cpu_id = doc["machine"]["cpu_id"]
    assert cpu_id["model_name"] == doc["machine"]["cpu"]
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert {"vendor_id", "cpu_family", "model", "isa"} <= set(cpu_id) and set(cpu_id["isa"]) <= set(_ISA_FLAGS)
    assert doc["matmul_peak"]["kernel"] in ("aten", "onednn")


@pytest.mark.parametrize("argv,msg", [
    (["--compare", "timm,jax"], "--compare takes a comma-separated list of timm, hf"),
    (["--backend", "tensorrt"], "--backend takes a comma-separated list of torch, onnxruntime"),
    (["--dtype", "int4"], "invalid choice: 'int4'"),
])
def test_cli_rejects_bad_flags(argv, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["bench", _cfg_file(tmp_path), *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    (["--dtype", "fp8"], "vitkit: error: --dtype fp8 needs an NVIDIA GPU"),
    (["--sweep", "--image-size", "32"], "vitkit: error: --sweep and --image-size both choose resolutions"),
    (["--json", "/nonexistent-dir/x.json"], "folder '/nonexistent-dir' does not exist"),
])
def test_cli_user_errors_exit_2_without_traceback(argv, msg, capsys, tmp_path):
    rc = main(["bench", _cfg_file(tmp_path), "--device", "cpu", "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err


def test_cli_unknown_model_name(capsys):
    assert main(["bench", "vit_gigantic_patch16_224", "--device", "cpu"]) == 2
    assert "unknown model size 'gigantic'" in capsys.readouterr().err


def test_importing_vitkit_and_the_bench_imports_no_peer_library():
    code = ("import sys, vitkit, vitkit.bench, vitkit.cli.bench, vitkit.cli.main; vitkit.cli.main.build_parser(); "
            "bad = [m for m in ('timm', 'transformers', 'onnxruntime', 'onnx') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_dtype_int8_adds_onnx_runtime_and_its_int8_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", _cfg_file(tmp_path), "--device", "cpu", "--batch", "2", "--iters", "1", "--warmup", "1",
               "--dtype", "int8", "--json", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["impl"]: r for r in doc["rows"]}
    assert set(rows) == {"vitkit", "vitkit[onnxruntime]", "vitkit[onnxruntime-int8]"}
    assert rows["vitkit[onnxruntime-int8]"]["dtype"] == "int8" and rows["vitkit"]["dtype"] == "fp32"
    assert doc["options"]["ort_int8"] == "static" and doc["options"]["backends"] == ["torch", "onnxruntime"]
