"""vitkit.inference.cpu: the CPU Linear kernel choice (oneDNN or aten), same function either way."""

import pytest
import torch

from vitkit.bench.runner import randomise
from vitkit.inference import cpu
from vitkit.inference.cpu import OneDNNLinear, optimize_for_cpu
from vitkit.models import VisionTransformer

from helpers import tiny_cfg


def _pair(**kw):
    cfg = tiny_cfg(width=64, **kw)
    return randomise(VisionTransformer(cfg), 0).eval(), randomise(VisionTransformer(cfg), 0).eval()


@pytest.mark.parametrize("faster", ["onednn", "aten"])
def test_auto_keeps_the_kernel_that_timed_faster(monkeypatch, faster):
    ref, m = _pair()
    calls = []

    def fake_time(model, kernel, rows, repeats=5):
        calls.append((kernel, rows))
        return 1.0 if kernel == faster else 2.0

    monkeypatch.setattr(cpu, "time_block_linears", fake_time)
    assert optimize_for_cpu(m, "auto", rows=40) == faster
    assert {k for k, _ in calls} == {"onednn", "aten"} and all(r == 40 for _, r in calls)
    swapped = isinstance(m.blocks[0].mlp.fc1, OneDNNLinear)
    assert swapped == (faster == "onednn")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(ref(x), m(x), atol=1e-5, rtol=1e-5)


def test_auto_times_real_kernels_and_default_rows():
    _, m = _pair()
    t = cpu.time_block_linears(m, "onednn", rows=16, repeats=2)
    assert 0 < t < 10
    assert optimize_for_cpu(m) in ("onednn", "aten")
    assert optimize_for_cpu(m, "onednn") in ("onednn", "aten")  # idempotent: swapping twice changes nothing more
    assert sum(isinstance(x, OneDNNLinear) for x in m.modules()) in (0, 4 * m.cfg.depth)


def test_aten_other_dtypes_and_devices_are_left_alone():
    _, m = _pair()
    assert optimize_for_cpu(m, "aten") == "aten"
    half = m.half()
    assert optimize_for_cpu(half, "onednn") == "aten"  # fp16 weights: no oneDNN fp16 path here
    assert not any(isinstance(x, OneDNNLinear) for x in m.modules())
    with pytest.raises(ValueError, match="kernel must be one of"):
        optimize_for_cpu(m, "mkl")
    with pytest.raises(ValueError, match="VisionTransformer"):
        optimize_for_cpu(torch.nn.Linear(3, 3), "onednn")


def test_autocast_runs_in_the_autocast_dtype_not_through_onednn_fp32():
    ref, m = _pair()
    assert optimize_for_cpu(m, "onednn") == "onednn"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref(x), m(x)
    assert a.dtype == b.dtype == torch.bfloat16
    assert torch.equal(a, b)  # the same bf16 F.linear calls


def test_pipeline_from_a_path_picks_a_cpu_kernel_and_classifies_the_same(tmp_path):
    import numpy as np
    from PIL import Image

    import vitkit

    ref, m = _pair()
    vitkit.save(m, tmp_path / "m")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    clf = vitkit.pipeline(tmp_path / "m", device="cpu")
    assert clf.cpu_kernel in ("onednn", "aten")
    own = vitkit.pipeline(ref, device="cpu")  # a model in memory is left as it is
    assert own.cpu_kernel == "aten" and not any(isinstance(x, OneDNNLinear) for x in ref.modules())
    forced = vitkit.pipeline(tmp_path / "m", device="cpu", cpu_kernels="onednn")
    assert forced.cpu_kernel == "onednn"
    a, b = own.probabilities([img]), forced.probabilities([img])
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="cpu_kernels must be one of"):
        vitkit.pipeline(ref, cpu_kernels="fast")
