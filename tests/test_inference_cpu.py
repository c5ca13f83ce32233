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


@pytest.mark.parametrize("plain_faster", [True, False])
def test_auto_picks_the_attention_kernel_that_timed_faster(monkeypatch, plain_faster):
    """"auto" times SDPA against the explicit softmax(q kᵀ/√d) v on the model's sequence length and images;
    where the explicit one wins, the fused path computes it (eval, CPU, sequences no longer than that), with
    the same output as SDPA and no weights kept."""
    ref, m = _pair()
    calls = []

    def fake_time(model, plain, images, repeats=3):
        calls.append((plain, images))
        return 1.0 if plain == plain_faster else 2.0

    monkeypatch.setattr(cpu, "time_attention", fake_time)
    optimize_for_cpu(m, "auto", rows=3 * m.cfg.num_tokens)
    assert {p for p, _ in calls} == {True, False} and all(i == 3 for _, i in calls)
    n = m.cfg.num_tokens
    assert all(b.attn.cpu_plain_tokens == (n if plain_faster else 0) for b in m.blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = ref(x)
    seen = []

    def spy(*a, **k):
        seen.append(a[0].shape)
        return sdpa(*a, **k)

    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.inference_mode():
        assert torch.allclose(want, m(x), atol=1e-5, rtol=1e-5)
    assert len(seen) == (0 if plain_faster else m.cfg.depth)
    blk = m.blocks[0]
    out, weights = blk.attn(torch.randn(2, n, m.cfg.width))
    assert weights is None  # the fused path never returns weights, whichever kernel ran
    if plain_faster:
        # a longer sequence than the one timed, and training, go back to SDPA
        seen.clear()
        blk.attn(torch.randn(1, n + 1, m.cfg.width))
        assert len(seen) == 1
        m.train()
        blk.attn(torch.randn(1, n, m.cfg.width))
        assert len(seen) == 2


def test_attention_timing_runs_both_kernels_and_skips_long_sequences():
    _, m = _pair()
    for plain in (True, False):
        assert 0 < cpu.time_attention(m, plain, images=1, repeats=1) < 10
    assert cpu.choose_cpu_attention(m, images=1) in ("plain", "sdpa")
    long = VisionTransformer(tiny_cfg(width=64, image_size=264)).eval()  # 33 x 33 patches + [CLS]
    assert long.cfg.num_tokens > cpu.PLAIN_ATTENTION_MAX_TOKENS
    assert cpu.choose_cpu_attention(long) == "sdpa"
    assert all(b.attn.cpu_plain_tokens == 0 for b in long.blocks)
