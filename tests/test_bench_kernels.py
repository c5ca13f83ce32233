"""The GPU code paths of vitkit.bench, exercised on the CPU: FP8 layers, SDPA choice, CUDA-graph refusal,
max-batch search, memory tracking, matmul peak."""

import pytest
import torch
from torch.nn.attention import SDPBackend

from vitkit import VisionTransformer
from vitkit.bench.fp8 import E4M3_MAX, Fp8Linear, convert_to_fp8, emulate_fp8_linear, quantize_rows, top1_agreement
from vitkit.bench.max_batch import find_max_batch, is_oom
from vitkit.bench.memory import cpu_step_peak_bytes, resident_bytes
from vitkit.bench.peak import measure_matmul_peak
from vitkit.bench.runner import randomise
from vitkit.bench.sdpa import choose_sdpa_backends, sdpa_context
from vitkit.bench.steps import StepSpec, make_step, prepare_model

from helpers import tiny_cfg

CPU = torch.device("cpu")


# --- FP8 ----------------------------------------------------------------------

def test_quantize_rows_scales_each_row_to_the_e4m3_range():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [100.0, 3.0, -7.0]])
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 1)
    assert torch.allclose(q.float().abs().amax(1)[[0, 2]], torch.tensor([E4M3_MAX, E4M3_MAX]))
    assert torch.all(q.float()[1] == 0)  # an all-zero row stays zero, no NaN
    assert torch.allclose(q.float() * s, x, rtol=0.07, atol=1e-6)  # e4m3 has a 3-bit mantissa


def test_fp8_linear_matches_its_float_emulation_and_the_fp32_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(2, 7, 64)
    fp8 = Fp8Linear(lin, out_dtype=torch.float32)
    out = fp8(x)
    assert out.shape == (2, 7, 48) and out.dtype == torch.float32
    # the real torch._scaled_mm path equals the same arithmetic written in float32
    assert torch.allclose(out, emulate_fp8_linear(fp8, x), atol=1e-5, rtol=1e-5)
    ref = lin(x)
    rel = (out - ref).norm() / ref.norm()
    assert 1e-4 < rel < 0.06  # quantisation error: present, and small


def test_fp8_linear_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16; this Linear is 20 -> 32"):
        Fp8Linear(torch.nn.Linear(20, 32))


def test_convert_to_fp8_model_stays_close_to_fp32():
    cfg = tiny_cfg(width=64, depth=2, heads=4)
    ref = randomise(VisionTransformer(cfg), seed=1).eval()
    m = randomise(VisionTransformer(cfg), seed=1).eval().to(torch.bfloat16)
    assert convert_to_fp8(m) == 4 * cfg.depth  # qkv, proj, fc1, fc2 per block
    assert isinstance(m.blocks[0].attn.qkv, Fp8Linear) and isinstance(m.head, torch.nn.Linear)
    ends = VisionTransformer(tiny_cfg(depth=3, width=64)).to(torch.bfloat16)
    assert convert_to_fp8(ends, skip_blocks=(0, -1)) == 4
    assert [isinstance(b.mlp.fc1, Fp8Linear) for b in ends.blocks] == [False, True, False]
    with pytest.raises(ValueError, match="block 3 out of range"):
        convert_to_fp8(VisionTransformer(tiny_cfg(depth=3, width=64)), skip_blocks=(3,))
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        a, b = ref(x), m(x.bfloat16()).float()
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert ((a - b).norm() / a.norm()) < 0.1


def test_top1_agreement_counts_matching_predictions():
    class Fixed(torch.nn.Module):
        def __init__(self, preds):
            super().__init__()
            self.preds = preds

        def forward(self, x):  # logits whose argmax is the fixed prediction
            return torch.nn.functional.one_hot(self.preds[: len(x)], 3).float()

    a = Fixed(torch.tensor([0, 1, 2, 2]))
    b = Fixed(torch.tensor([0, 1, 1, 2]))
    assert top1_agreement(a, b, torch.zeros(4, 1, 2, 2), batch_size=4) == 0.75
    with pytest.raises(ValueError, match="non-empty"):
        top1_agreement(a, b, torch.zeros(0, 1, 2, 2))


def test_fp8_inference_step_runs_on_cpu():
    cfg = tiny_cfg(width=64)
    m = prepare_model(randomise(VisionTransformer(cfg), 0), StepSpec("infer", "fp8"), CPU)
    step = make_step(m, torch.randn(2, 3, 32, 32), None, StepSpec("infer", "fp8"), CPU)
    out = step.run()
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5)


# --- SDPA kernel choice ----------------------------------------------------------

def test_sdpa_auto_prefers_cudnn_on_gpu_half_precision():
    got = choose_sdpa_backends("auto", "cuda", torch.bfloat16, 64)
    assert got[:3] == [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    assert choose_sdpa_backends("auto", "cuda", torch.bfloat16, 192)[0] == SDPBackend.FLASH_ATTENTION
    assert choose_sdpa_backends("auto", "cuda", torch.float32, 64) is None
    assert choose_sdpa_backends("auto", "cpu", torch.bfloat16, 64) is None
    assert choose_sdpa_backends("flash", "cuda", torch.float16, 64) == [SDPBackend.FLASH_ATTENTION]


def test_sdpa_named_kernel_errors():
    with pytest.raises(ValueError, match="runs on CUDA only"):
        choose_sdpa_backends("cudnn", "cpu", torch.float32, 64)
    with pytest.raises(ValueError, match="unknown SDPA kernel 'fast'"):
        choose_sdpa_backends("fast", "cuda", torch.float32, 64)


def test_sdpa_context_math_gives_the_same_model_output():
    cfg = tiny_cfg()
    m = randomise(VisionTransformer(cfg), 0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        with sdpa_context(choose_sdpa_backends("math", "cpu", torch.float32, cfg.head_dim)):
            b = m(x)
    assert torch.allclose(a, b, atol=1e-5)


# --- steps --------------------------------------------------------------------------

def test_train_step_updates_parameters_with_adamw():
    cfg = tiny_cfg()
    m = prepare_model(randomise(VisionTransformer(cfg), 0), StepSpec("train", "bf16"), CPU)
    before = m.blocks[0].mlp.fc1.weight.detach().clone()
    step = make_step(m, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), StepSpec("train", "bf16"), CPU)
    loss = step.run()
    assert torch.isfinite(loss) and step.optimizer is not None
    assert isinstance(step.optimizer, torch.optim.AdamW)
    assert not torch.equal(before, m.blocks[0].mlp.fc1.weight)
    assert m.blocks[0].mlp.fc1.weight.dtype == torch.float32  # autocast: master weights stay fp32


def test_cuda_graphs_refused_on_cpu():
    m = VisionTransformer(tiny_cfg())
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        make_step(m, torch.randn(1, 3, 32, 32), None, StepSpec("infer", "fp32", cuda_graphs=True), CPU)


def test_channels_last_inference_gives_the_same_output():
    cfg = tiny_cfg()
    m = randomise(VisionTransformer(cfg), 0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    spec = StepSpec("infer", "fp32", channels_last=True)
    out = make_step(prepare_model(m, spec, CPU), x, None, spec, CPU).run()
    assert m.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


# --- max-batch search -----------------------------------------------------------------

def _fake(capacity, calls=None, exc=torch.OutOfMemoryError):
    def try_batch(b):
        if calls is not None:
            calls.append(b)
        if b > capacity:
            raise exc("CUDA out of memory. Tried to allocate 2.00 GiB")
    return try_batch


@pytest.mark.parametrize("capacity", [1, 2, 37, 64, 1000])
def test_max_batch_search_finds_the_boundary(capacity):
    calls = []
    out = find_max_batch(_fake(capacity, calls), limit=4096)
    assert out["max_batch"] == capacity and not out["hit_limit"]
    assert len(calls) <= 2 * 13 + 1  # doubling then bisection: logarithmic
    assert all(ok == (b <= capacity) for b, ok in out["tried"])


def test_max_batch_search_limits_and_failures():
    assert find_max_batch(_fake(10**6), limit=100) == {**find_max_batch(_fake(10**6), limit=100), "max_batch": 100,
                                                        "hit_limit": True}
    assert find_max_batch(_fake(0))["max_batch"] == 0
    # a RuntimeError that says "out of memory" (cuBLAS / older PyTorch) counts as OOM
    assert find_max_batch(_fake(5, exc=RuntimeError))["max_batch"] == 5
    assert is_oom(RuntimeError("CUDNN_STATUS_ALLOC_FAILED")) and not is_oom(RuntimeError("shape mismatch"))

    def broken(b):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        find_max_batch(broken)  # not an OOM: propagated, never read as "does not fit"
    with pytest.raises(ValueError, match="start"):
        find_max_batch(_fake(3), start=10, limit=5)


# --- memory ------------------------------------------------------------------------------

def test_cpu_peak_tracker_counts_live_tensors():
    def step():
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(2000)  # 8000 B -> 12000 live
        del a
        c = torch.empty(500)  # 10000 live
        b.add_(1)  # in place: nothing new
        b.view(-1)  # a view: nothing new
        return c
    assert cpu_step_peak_bytes(step) == 12000


def test_cpu_peak_grows_with_batch_and_resident_counts_optimizer_state():
    m = VisionTransformer(tiny_cfg()).eval()

    def infer(b):
        x = torch.randn(b, 3, 32, 32)

        def run():
            with torch.inference_mode():
                m(x)
        return cpu_step_peak_bytes(run)
    assert infer(8) > infer(2) > 0
    n_param_bytes = 4 * sum(p.numel() for p in m.parameters())
    spec = StepSpec("train", "fp32")
    step = make_step(prepare_model(m, spec, CPU), torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), spec, CPU)
    assert resident_bytes(m) == n_param_bytes
    step.run()
    assert resident_bytes(m, step.optimizer) >= 4 * n_param_bytes  # params, grads, exp_avg, exp_avg_sq


def test_matmul_peak_is_positive():
    p = measure_matmul_peak(CPU, "fp32", n=128, iters=2)
    assert p["tflops"] > 0 and p["n"] == 128
    assert measure_matmul_peak(CPU, "fp8", n=64, iters=1)["tflops"] > 0


# --- CPU kernels ---------------------------------------------------------------------------

def test_onednn_linears_keep_weights_and_outputs():
    from vitkit.inference.cpu import OneDNNLinear, onednn_available, use_onednn_linears

    cfg = tiny_cfg(width=64)
    ref = randomise(VisionTransformer(cfg), 0).eval()
    m = randomise(VisionTransformer(cfg), 0).eval()
    keys = set(m.state_dict())
    assert onednn_available()  # the CI's PyTorch (x86 wheels) has oneDNN: the fast path is what is tested
    assert use_onednn_linears(m) == 4 * cfg.depth
    assert isinstance(m.blocks[1].mlp.fc2, OneDNNLinear) and m.blocks[1].mlp.fc2.weight is m.blocks[1].mlp.fc2.weight
    assert set(m.state_dict()) == keys and sum(p.numel() for p in m.parameters()) == cfg.num_params()
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        a, b = ref(x), m(x)
    assert a.abs().max() > 1e-2 and torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # with autograd the module falls back to F.linear, so training works and gets gradients
    m.train()
    m(x).sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None


def test_bench_uses_onednn_for_vitkit_cpu_inference_only():
    from vitkit.bench import BenchOptions, run_bench

    opts = dict(model=tiny_cfg(), batch_sizes=(2,), device="cpu", warmup=0, iters=1, compare=("timm",))
    rows = {r["impl"]: r for r in run_bench(BenchOptions(**opts, cpu_linear="onednn"))["rows"]}
    assert rows["vitkit"]["linear"] == "onednn" and rows["timm"]["linear"] == "aten"
    assert run_bench(BenchOptions(**opts))["rows"][0]["linear"] in ("onednn", "aten")  # auto: the faster, timed
    assert rows["timm"]["max_abs_diff_vs_vitkit"] <= 1e-5
    assert run_bench(BenchOptions(**opts, cpu_linear="aten"))["rows"][0]["linear"] == "aten"
    assert run_bench(BenchOptions(**{**opts, "compare": ()}, mode="train"))["rows"][0]["linear"] == "aten"
    with pytest.raises(ValueError, match="--cpu-linear onednn is for eager CPU inference"):
        run_bench(BenchOptions(**opts, cpu_linear="onednn", mode="train"))


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_onednn_fused_gelu_matches_both_gelus(act):
    from vitkit.inference.cpu import OneDNNLinear, use_onednn_linears

    cfg = tiny_cfg(width=64, act=act)
    ref = randomise(VisionTransformer(cfg), 0).eval()
    m = randomise(VisionTransformer(cfg), 0).eval()
    use_onednn_linears(m)
    fc1 = m.blocks[0].mlp.fc1
    assert isinstance(fc1, OneDNNLinear) and fc1.gelu == ("tanh" if act == "gelu_tanh" else "none")
    assert isinstance(m.blocks[0].mlp.act, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(ref(x), m(x), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # grad-free but not inference mode: still the oneDNN path
        assert torch.allclose(ref(x), m(x), atol=1e-5, rtol=1e-5)
    h = torch.randn(5, 64, requires_grad=True)  # the autograd fallback applies the GELU itself
    lin = torch.nn.Linear(64, 32)
    want = torch.nn.functional.gelu(lin(h), approximate=fc1.gelu)
    assert torch.allclose(OneDNNLinear(lin, gelu=fc1.gelu)(h), want, atol=1e-6)


# --- memory linear in tokens: no (B, heads, N, N) tensor on the default path ------------------

class _Shapes(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.shapes.add(tuple(t.shape))
        return out


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_default_attention_path_never_builds_the_token_by_token_matrix(mode):
    cfg = tiny_cfg(image_size=64)  # 65 tokens, 4 heads
    m = VisionTransformer(cfg).train(mode == "train")
    x = torch.randn(2, 3, 64, 64)
    nxn = (2, cfg.heads, cfg.num_tokens, cfg.num_tokens)
    rec = _Shapes()
    with rec:
        if mode == "train":
            m(x).sum().backward()
        else:
            with torch.inference_mode():
                m(x)
    assert nxn not in rec.shapes and len(rec.shapes) > 10
    control = _Shapes()  # the plain path (attention maps) does build it: the check can fail
    with control, torch.no_grad():
        m(x, attn_impl="plain")
    assert nxn in control.shapes


def test_forward_compiles_as_one_graph_without_breaks():
    # graph breaks and host syncs cost GPU time; torch._dynamo.explain traces without compiling kernels
    cfg = tiny_cfg(width=64)
    m = VisionTransformer(cfg).eval()
    e = torch._dynamo.explain(m)(torch.randn(2, 3, 32, 32))
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
    f8 = VisionTransformer(cfg).eval().to(torch.bfloat16)
    convert_to_fp8(f8)
    e = torch._dynamo.explain(f8)(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons
