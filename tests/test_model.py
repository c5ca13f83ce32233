import pytest
import torch

import vitkit
from vitkit import ViTConfig, create_model, parse_model_name
from vitkit.layers import resample_pos_embed

from helpers import tiny_cfg


def shrink(name: str) -> ViTConfig:
    """The named variant's structure with a tiny width/depth, so every name can run."""
    cfg = parse_model_name(name)
    return cfg.replace(width=cfg.heads * 8, depth=2, num_classes=7)


@pytest.mark.parametrize("name", vitkit.list_models())
def test_every_variant_runs_with_the_right_shapes(name):
    cfg = shrink(name)
    m = create_model(cfg).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = m.forward_features(x)
        assert tokens.shape == (2, cfg.num_tokens, cfg.width)
        assert m.forward_head(tokens).shape == (2, 7)
        assert m.forward_head(tokens, pre_logits=True).shape == (2, cfg.width)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"])
def test_built_parameter_count_equals_the_formula(name):
    m = create_model(name)
    assert sum(p.numel() for p in m.parameters()) == m.cfg.num_params()


@pytest.mark.parametrize("kw", [dict(), dict(pooling="gap", class_token=False), dict(reg_tokens=3),
                                dict(layer_scale_init=1e-5), dict(distilled=True), dict(representation_size=24),
                                dict(pos_embed="sincos2d"), dict(reg_tokens=2, pos_embed_prefix=False),
                                dict(qkv_bias="qv"), dict(qkv_bias=False, qk_norm=True),
                                dict(rel_pos="per_block", qkv_bias="qv", pos_embed="none", pooling="gap"),
                                dict(rel_pos="shared", image_size=(32, 48))])
def test_formula_counts_configs(kw):
    m = create_model(tiny_cfg(**kw))
    assert sum(p.numel() for p in m.parameters()) == m.cfg.num_params()


@pytest.mark.parametrize("kw", [dict(), dict(pooling="gap", reg_tokens=4, layer_scale_init=0.1),
                                dict(distilled=True), dict(act="gelu_tanh", qkv_bias=False),
                                dict(pos_embed="sincos2d", reg_tokens=1), dict(pos_embed="none"),
                                dict(representation_size=24, fc_norm=True), dict(qkv_bias="qv", qk_norm=True),
                                dict(rel_pos="per_block", qkv_bias="qv", pooling="gap", layer_scale_init=0.1),
                                dict(rel_pos="shared", image_size=(32, 48))])
def test_fused_and_plain_attention_agree(kw):
    m = create_model(tiny_cfg(**kw)).eval()
    for p in m.parameters():  # move off the zero head so logits are not trivially equal
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 3, *m.cfg.image_hw)
    with torch.no_grad():
        a, b = m(x, attn_impl="fused"), m(x, attn_impl="plain")
    assert a.abs().max() > 0
    assert (a - b).abs().max() <= 1e-5


def test_attention_bias_fused_and_plain_agree_and_queries_take_its_first_rows():
    from vitkit.layers import Attention

    cfg = tiny_cfg(qkv_bias="qv", qk_norm=True)
    attn = Attention(cfg).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, bias = torch.randn(2, 9, cfg.width), torch.randn(cfg.heads, 9, 9)
    with torch.no_grad():
        fused, none = attn(x, "fused", bias=bias)
        plain, w = attn(x, "plain", bias=bias)
        without, _ = attn(x, "plain")
        first, _ = attn(x, "fused", queries=2, bias=bias)
        first_plain, w2 = attn(x, "plain", queries=2, bias=bias[:, :2])  # (heads, Q, N) given directly
    assert none is None and (fused - plain).abs().max() <= 1e-5 and (plain - without).abs().max() > 1e-3
    torch.testing.assert_close(first, fused[:, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first_plain, fused[:, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2, w[:, :, :2])
    # the bias is what the plain path adds to the logits before the softmax
    q, k, _ = attn.qkv(x).add(torch.cat([attn.q_bias, torch.zeros(cfg.width), attn.v_bias])).reshape(
        2, 9, 3, cfg.heads, cfg.head_dim).permute(2, 0, 3, 1, 4)
    logits = attn.q_norm(q) @ attn.k_norm(k).transpose(-2, -1) * cfg.head_dim ** -0.5 + bias
    torch.testing.assert_close(w, logits.softmax(-1))


def test_qkv_bias_forms():
    assert tiny_cfg(qkv_bias="qkv").qkv_bias is True and tiny_cfg(qkv_bias="none").qkv_bias is False
    assert tiny_cfg(qkv_bias="qkv") == tiny_cfg(qkv_bias=True)
    keys = set(create_model(tiny_cfg(qkv_bias="qv", qk_norm=True)).state_dict())
    assert {"blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.attn.q_norm.weight",
            "blocks.0.attn.k_norm.bias"} <= keys and "blocks.0.attn.qkv.bias" not in keys
    assert "blocks.0.attn.qkv.bias" not in create_model(tiny_cfg(qkv_bias=False)).state_dict()
    with pytest.raises(ValueError, match="qkv_bias must be one of"):
        tiny_cfg(qkv_bias="kv")


def test_attention_maps_are_probabilities():
    cfg = tiny_cfg(reg_tokens=2)
    m = create_model(cfg).eval()
    maps = m.get_attention_maps(torch.randn(2, 3, 32, 32))
    assert len(maps) == cfg.depth
    for a in maps:
        assert a.shape == (2, cfg.heads, cfg.num_tokens, cfg.num_tokens)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, cfg.heads, cfg.num_tokens))


def test_forward_intermediates():
    cfg = tiny_cfg(depth=4)
    m = create_model(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = m.forward_intermediates(x)
        last2 = m.forward_intermediates(x, indices=2)
        picked = m.forward_intermediates(x, indices=[0, -1], norm=True)
        final = m.forward_features(x)
    assert len(every) == 4 and all(t.shape == (2, cfg.num_tokens, cfg.width) for t in every)
    torch.testing.assert_close(last2[1], every[3])
    torch.testing.assert_close(picked[1], final)  # last block + final norm = forward_features
    with pytest.raises(ValueError, match="out of range"):
        m.forward_intermediates(x, indices=[4])


def test_pos_embed_resampling_identity_and_shapes():
    pe = torch.randn(1, 1 + 14 * 14, 64)
    assert resample_pos_embed(pe, (14, 14)) is pe
    assert resample_pos_embed(pe, (24, 24)).shape == (1, 1 + 24 * 24, 64)  # 224 -> 384 at P=16
    out = resample_pos_embed(pe, (32, 32))  # 224 -> 512
    assert out.shape == (1, 1 + 32 * 32, 64)
    torch.testing.assert_close(out[:, :1], pe[:, :1])  # the [CLS] row is kept as it is


def test_dynamic_img_size_any_resolution_and_non_square():
    m = create_model("vit_tiny_patch16_224", depth=1, dynamic_img_size=True).eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 512, 512)).shape == (1, 1 + 1024, 192)
        assert m.forward_features(torch.randn(1, 3, 224, 320)).shape == (1, 1 + 14 * 20, 192)
        # at the built size the stored embedding is used as it is
        x = torch.randn(1, 3, 224, 224)
        static = create_model(m.cfg.replace(dynamic_img_size=False))
        static.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x), static.eval()(x))


def test_non_square_model():
    cfg = tiny_cfg(image_size=(32, 64))
    m = create_model(cfg).eval()
    assert m(torch.randn(2, 3, 32, 64)).shape == (2, 5)
    assert cfg.num_patches == 4 * 8


def test_padding_when_asked():
    m = create_model(tiny_cfg(dynamic_img_size=True, dynamic_img_pad=True)).eval()
    assert m.forward_features(torch.randn(1, 3, 30, 35)).shape == (1, 1 + 4 * 5, 32)


@pytest.mark.parametrize("x, needle", [
    (torch.randn(3, 32, 32), "4-D image batch"),
    (torch.randn(1, 1, 32, 32), "expected 3 input channels"),
    (torch.randn(1, 3, 30, 30), "does not match the model's image size"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
])
def test_bad_input_errors(x, needle):
    m = create_model(tiny_cfg())
    with pytest.raises(ValueError, match=needle):
        m(x)


def test_non_divisible_input_on_a_dynamic_model():
    m = create_model(tiny_cfg(dynamic_img_size=True))
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        m(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("kw", [dict(), dict(rel_pos="per_block"), dict(rel_pos="shared")])
def test_gradient_checkpointing_gives_the_same_gradients(kw):
    cfg = tiny_cfg(depth=3, **kw)
    a = create_model(cfg)
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.1)
    b = create_model(cfg)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_stochastic_depth_is_random_in_training_and_off_in_eval():
    m = create_model(tiny_cfg(drop_path=0.5, depth=4))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(4, 3, 32, 32)
    m.train()
    outs = [m(x) for _ in range(4)]
    assert any((outs[0] - o).abs().max() > 1e-6 for o in outs[1:])
    m.eval()
    torch.testing.assert_close(m(x), m(x))


def test_init_follows_timm_default():
    """timm's default init: Linear std 0.02 (head included), the patch conv at PyTorch's fan-in default."""
    m = create_model("vit_small_patch16_224")
    for w in (m.blocks[0].mlp.fc1.weight, m.head.weight):
        assert abs(w.std().item() - 0.02) < 0.001
    assert m.head.bias.abs().max() == 0
    small = create_model(tiny_cfg(patch_size=4))  # fan-in 48: a fixed std 0.02 would be 4x too small
    conv = small.patch_embed.proj.weight
    bound = 1 / conv[0].numel() ** 0.5  # kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
    assert conv.abs().max() <= bound + 1e-7 and conv.abs().max() > 0.8 * bound
    assert abs(conv.std().item() - bound / 3 ** 0.5) < 0.15 * bound
    assert torch.all(small.cls_token.abs() < 1e-4)
    m.reset_classifier(3)  # fine-tuning heads start at zero
    assert m.head.weight.abs().max() == 0
    deit = create_model("deit_small_distilled_patch16_224")  # DeiT's distillation token: trunc. normal 0.02
    d = deit.dist_token
    assert abs(d.std().item() - 0.02) < 0.003 and torch.all(deit.cls_token.abs() < 1e-4)  # (cut at ±2, as timm)


def test_reset_classifier():
    m = create_model(tiny_cfg(distilled=True))
    m.reset_classifier(2, labels=["a", "b"])
    assert m.head.out_features == 2 and m.head_dist.out_features == 2 and m.labels == ["a", "b"]
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_torch_compile_fullgraph():
    m = create_model(tiny_cfg(reg_tokens=1)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(m, fullgraph=True)  # the default back-end (inductor), one graph, no breaks
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(rel_pos="per_block", qkv_bias="qv", layer_scale_init=0.1)])
def test_torch_compile_fullgraph_training_step(kw):
    m = create_model(tiny_cfg(drop_path=0.1, dropout=0.1, **kw))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    compiled(torch.randn(2, 3, 32, 32)).sum().backward()
    assert m.patch_embed.proj.weight.grad is not None


def test_set_image_size_matches_dynamic_resampling():
    m = create_model(tiny_cfg(dynamic_img_size=True, reg_tokens=1)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        expected = m(x)
        m.set_image_size((48, 64))
        assert m.pos_embed.shape == (1, 2 + 6 * 8, 32) and m.cfg.image_hw == (48, 64)
        torch.testing.assert_close(m(x), expected)


def test_set_image_size_keeps_sincos_fixed():
    m = create_model(tiny_cfg(pos_embed="sincos2d")).eval()
    m.set_image_size(64)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert "pos_embed" not in m.state_dict()  # fixed, recomputed, never saved


@pytest.mark.parametrize("kw", [dict(), dict(distilled=True), dict(reg_tokens=3), dict(pooling="gap", reg_tokens=2),
                                dict(layer_scale_init=0.1, fc_norm=True), dict(representation_size=24),
                                dict(num_classes=0), dict(rel_pos="per_block", qkv_bias="qv"),
                                dict(rel_pos="shared", pooling="gap", pos_embed="none")])
@pytest.mark.parametrize("impl", ["fused", "plain"])
def test_forward_computes_only_the_head_tokens_in_the_last_block_with_the_same_result(kw, impl):
    """forward() skips the last block's work for tokens the head does not read; the logits (and their
    gradients) equal forward_head(forward_features(x)), which computes every token."""
    m = create_model(tiny_cfg(**kw)).train()  # training: the gradients must agree too (no dropout in tiny_cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 3, 32, 32)
    full = m.forward_head(m.forward_features(x, impl))
    g_full = torch.autograd.grad(full.square().sum(), list(m.parameters()), allow_unused=True)
    short = m(x, impl)
    g_short = torch.autograd.grad(short.square().sum(), list(m.parameters()), allow_unused=True)
    assert short.shape == full.shape and full.abs().max() > 0
    assert (short - full).abs().max() <= 1e-5
    for a, b in zip(g_full, g_short):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item())
    # the last block really runs on fewer tokens with cls pooling, and on all of them with gap
    seen = []
    hook = m.blocks[-1].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    with torch.no_grad():
        m(x, impl)
    hook.remove()
    assert seen == [m.cfg.num_tokens if m.cfg.pooling == "gap" else (2 if m.cfg.distilled else 1)]


def test_forward_distilled_matches_the_full_token_path():
    m = create_model(tiny_cfg(distilled=True)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls, dist = m.forward_distilled(x)
        t = m.forward_features(x)
        assert (cls - m.head(m.fc_norm(t[:, 0]))).abs().max() <= 1e-5
        assert (dist - m.head_dist(m.fc_norm(t[:, 1]))).abs().max() <= 1e-5
        assert ((cls + dist) / 2 - m(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("rel_pos", ["per_block", "shared"])
def test_relative_position_bias_tables_index_and_other_sizes(rel_pos):
    m = create_model(tiny_cfg(rel_pos=rel_pos, dynamic_img_size=True)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    keys = set(m.state_dict())
    table = "blocks.1.attn.relative_position_bias_table" if rel_pos == "per_block" else \
        "rel_pos_bias.relative_position_bias_table"
    assert table in keys and m.state_dict()[table].shape == ((2 * 4 - 1) ** 2 + 3, 4)
    assert not any("relative_position_index" in k for k in keys)  # derived, never saved
    assert table in m.no_weight_decay()
    # the bias reaches the logits: a model with other tables gives other logits
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        ref = m(torch.randn(1, 3, 32, 32))
        other = create_model(m.cfg)
        other.load_state_dict({**m.state_dict(), table: torch.zeros_like(m.state_dict()[table])})
        assert (other.eval()(torch.randn(1, 3, 32, 32)) - ref).abs().max() > 0
        # another size at run time (tables resampled per call) = the model rebuilt for that size
        expected = m(x)
        m.set_image_size((48, 64))
        assert m.state_dict()[table].shape == ((2 * 6 - 1) * (2 * 8 - 1) + 3, 4)
        torch.testing.assert_close(m(x), expected)


def test_relative_position_bias_needs_one_class_token():
    for kw in (dict(reg_tokens=1), dict(distilled=True), dict(class_token=False, pooling="gap")):
        with pytest.raises(ValueError, match="rel_pos needs exactly one prefix token"):
            tiny_cfg(rel_pos="per_block", **kw)
    with pytest.raises(ValueError, match="rel_pos must be one of"):
        tiny_cfg(rel_pos="rope")
    with pytest.raises(ValueError, match="index is refused"):
        tiny_cfg(rel_pos="shared", image_size=129 * 8)


# --- the layers one by one (mutants of layers/ that the model-level tests let through) ------------------

def _big_vision_sincos(h, w, width, temperature=10_000.0):
    """big_vision's posemb_sincos_2d, written out in NumPy."""
    import numpy as np

    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / (width // 4 - 1)
    omega = 1.0 / (temperature ** omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def test_sincos_2d_matches_big_vision_and_keeps_dtype_and_device():
    import warnings

    from vitkit.layers.pos_embed import sincos_2d_pos_embed

    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch's own warnings are once per process otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. meshgrid without indexing= warns
            pe = sincos_2d_pos_embed((3, 5), 16)
    finally:
        torch.set_warn_always(warn_always)
    assert pe.shape == (1, 15, 16) and pe.dtype == torch.float32
    assert torch.allclose(pe.double(), torch.from_numpy(_big_vision_sincos(3, 5, 16)), atol=1e-6)
    assert torch.allclose(sincos_2d_pos_embed((2, 2), 8, temperature=100.0).double(),
                          torch.from_numpy(_big_vision_sincos(2, 2, 8, 100.0)), atol=1e-6)
    assert sincos_2d_pos_embed((2, 3), 8, device="meta").device.type == "meta"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert sincos_2d_pos_embed((2, 3), 8).dtype == torch.float32  # whatever the default dtype
    finally:
        torch.set_default_dtype(old)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_pos_embed((2, 2), 6)


def test_resample_pos_embed_non_square_grid_against_interpolate():
    import torch.nn.functional as F

    pe = torch.randn(1, 2 + 2 * 3, 4)  # 2 prefix tokens, a 2x3 grid
    out = resample_pos_embed(pe, (4, 5), old_grid=(2, 3), num_prefix_tokens=2)
    grid = pe[:, 2:].reshape(1, 2, 3, 4).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(4, 5), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(out[:, :2], pe[:, :2])
    assert torch.allclose(out[:, 2:], ref.permute(0, 2, 3, 1).reshape(1, 20, 4), atol=1e-6)
    assert resample_pos_embed(pe.half(), (4, 5), old_grid=(2, 3), num_prefix_tokens=2).dtype == torch.float16
    with pytest.raises(ValueError, match="not the 3x3 grid given"):
        resample_pos_embed(pe, (4, 4), old_grid=(3, 3), num_prefix_tokens=2)
    for bad in (torch.randn(2, 5, 4), torch.randn(5, 4)):
        with pytest.raises(ValueError, match=r"must be \(1, N, D\)"):
            resample_pos_embed(bad, (2, 2))


def test_attention_dropout_only_in_training_and_default_impl():
    from vitkit.layers.attention import Attention

    attn = Attention(tiny_cfg(attn_dropout=0.5))
    x = torch.randn(2, 5, 32)
    attn.eval()
    out, w = attn(x)  # the default: fused, no weights
    assert w is None
    plain, w = attn(x, impl="plain")
    assert torch.allclose(out, plain, atol=1e-6) and w.shape == (2, 4, 5, 5)
    assert torch.equal(attn(x)[0], out) and torch.equal(attn(x, impl="plain")[0], plain)  # no dropout in eval
    attn.train()
    for impl, ref in (("fused", out), ("plain", plain)):
        a, b = attn(x, impl=impl)[0], attn(x, impl=impl)[0]
        assert not torch.allclose(a, ref, atol=1e-4) and not torch.equal(a, b), impl  # dropped at random
    no_drop = Attention(tiny_cfg(attn_dropout=0.0)).train()
    no_drop.load_state_dict(attn.state_dict())
    assert torch.allclose(no_drop(x, impl="plain")[0], plain, atol=1e-6)  # training without dropout = eval


def test_drop_path_scales_the_kept_samples_and_is_free_when_off():
    from vitkit.layers.drop import DropPath

    x = torch.randn(64, 3, 4) + 5
    off = DropPath(0.0).train()
    state = torch.get_rng_state()
    assert off(x) is x and torch.equal(torch.get_rng_state(), state)  # no random number drawn
    assert DropPath(0.5).eval()(x) is x
    out = DropPath(0.25).train()(x)
    kept = [torch.equal(o, xi / 0.75) for o, xi in zip(out, x)]
    dropped = [bool((o == 0).all()) for o in out]
    assert all(k or d for k, d in zip(kept, dropped)) and any(kept) and any(dropped)
    assert DropPath(0.25).extra_repr() == "p=0.25"


def test_padding_pads_right_and_bottom_with_zeros():
    import torch.nn.functional as F

    m = create_model(tiny_cfg(dynamic_img_size=True, dynamic_img_pad=True)).eval()
    x = torch.randn(1, 3, 18, 25)  # pads 6 rows and 7 columns up to 24x32 (patch 8)
    tokens, grid = m.patch_embed(x)
    assert grid == (3, 4)
    ref = m.patch_embed.proj(F.pad(x, (0, 7, 0, 6))).flatten(2).transpose(1, 2)
    assert torch.equal(tokens, ref)


def test_layer_options_reach_the_layers():
    from vitkit.layers.attention import Attention
    from vitkit.layers.drop import DropPath
    from vitkit.layers.mlp import Mlp
    from vitkit.layers.patch_embed import PatchEmbed

    assert Mlp(tiny_cfg()).act.approximate == "none" and Mlp(tiny_cfg(act="gelu_tanh")).act.approximate == "tanh"
    h = torch.linspace(-3, 3, 61)
    assert torch.equal(Mlp(tiny_cfg(act="gelu_tanh")).act(h), torch.nn.functional.gelu(h, approximate="tanh"))
    assert Attention(tiny_cfg(qkv_bias=False)).qkv.bias is None and Attention(tiny_cfg()).qkv.bias is not None
    assert PatchEmbed(tiny_cfg(patch_bias=False)).proj.bias is None and PatchEmbed(tiny_cfg()).proj.bias is not None
    x = torch.randn(2, 3)
    assert DropPath().p == 0.0 and DropPath().train()(x) is x


def test_create_model_from_a_dict_or_a_json_file(tmp_path):
    import json

    from vitkit.models.factory import resolve_config

    cfg = tiny_cfg(labels=["café", "b", "c", "d", "e"])
    d = cfg.to_dict()
    assert resolve_config(d) == cfg and create_model(d).cfg == cfg
    assert resolve_config(cfg) is cfg and resolve_config(cfg, width=64).width == 64
    plain, wrapped = tmp_path / "plain.json", tmp_path / "wrapped.json"
    plain.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    wrapped.write_text(json.dumps({"model": d, "note": "a vitkit config.json"}, ensure_ascii=False), encoding="utf-8")
    assert resolve_config(plain) == resolve_config(str(wrapped)) == cfg  # a path or a str
    assert resolve_config(plain, width=64).width == 64
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json'? is not valid JSON"):
        resolve_config(tmp_path / "bad.json")
    (tmp_path / "latin1.json").write_bytes('{"labels": ["caf\u00e9"]}'.encode("latin-1"))
    with pytest.raises(ValueError, match="is not valid JSON"):  # read as UTF-8, not by the locale
        resolve_config(tmp_path / "latin1.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object, found list"):
        resolve_config(tmp_path / "list.json")
    with pytest.raises(TypeError, match="got int"):
        resolve_config(3)


def test_json_config_is_read_as_utf8_under_any_locale(tmp_path):
    """A config with a non-ASCII label loads under an ASCII (C) locale too (in a subprocess: the locale's
    encoding is fixed at start-up; the in-process call ties the test to resolve_config for mutmut)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_cfg(labels=["café", "b", "c", "d", "e"]).to_dict(), ensure_ascii=False),
                    encoding="utf-8")
    from vitkit.models.factory import resolve_config

    assert resolve_config(path).labels[0] == "café"
    src = str(Path(vitkit.__file__).resolve().parents[1])  # this vitkit, wherever the tests import it from
    env = dict(os.environ, PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", LC_ALL="C", LANG="C", PYTHONPATH=src)
    code = ("import sys, locale; from vitkit.models.factory import resolve_config; "
            "print(locale.getpreferredencoding(False), resolve_config(sys.argv[1]).labels[0] == '\\u00e9'.join(['caf', '']))")
    p = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ANSI_X3.4-1968", "True"]


def test_resample_pos_embed_other_interpolation_modes():
    import torch.nn.functional as F

    pe = torch.randn(1, 1 + 4 * 4, 8)
    grid = pe[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    for mode in ("nearest", "area"):  # align_corners / antialias are for the interpolating modes only
        out = resample_pos_embed(pe, (2, 6), interpolation=mode, antialias=False)
        ref = F.interpolate(grid, size=(2, 6), mode=mode).permute(0, 2, 3, 1).reshape(1, 12, 8)
        assert torch.equal(out[:, 1:], ref) and torch.equal(out[:, :1], pe[:, :1]), mode
    bilinear = resample_pos_embed(pe, (6, 6), interpolation="bilinear")
    ref = F.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(bilinear[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 36, 8), atol=1e-6)


# --- the model's options one by one (what the mutation run of models/vit.py showed untested)


def test_every_layer_norm_takes_the_configured_eps():
    m = create_model(tiny_cfg(norm_eps=1e-3, norm_pre=True, pooling="gap", fc_norm=True, qk_norm=True))
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]
    # per block norm1, norm2, q_norm, k_norm; then norm_pre and fc_norm (the final norm moves to fc_norm)
    assert len(norms) == 4 * 2 + 2
    assert isinstance(m.norm_pre, torch.nn.LayerNorm) and isinstance(m.fc_norm, torch.nn.LayerNorm)
    assert all(n.eps == 1e-3 for n in norms)


def test_grad_checkpointing_is_off_by_default_and_runs_only_when_asked(monkeypatch):
    import vitkit.models.vit as vit_module

    m = create_model(tiny_cfg(depth=2)).train()
    assert m.grad_checkpointing is False
    calls = []
    real = vit_module.checkpoint

    def counting(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(vit_module, "checkpoint", counting)
    x = torch.randn(2, 3, 32, 32)
    m(x).sum().backward()
    assert calls == []  # off: the blocks run plainly
    m.set_grad_checkpointing()
    assert m.grad_checkpointing is True
    m(x).sum().backward()
    assert len(calls) == 2 and all(kw == {"use_reentrant": False} for kw in calls)
    with torch.no_grad():  # nothing to recompute for: no checkpoint
        m(x)
    assert len(calls) == 2
    m.set_grad_checkpointing(False)
    m(x).sum().backward()
    assert len(calls) == 2


def test_reset_classifier_heads_and_their_dtype_and_device():
    m = create_model(tiny_cfg(num_classes=5))
    m.reset_classifier(3)  # a model without the distillation token gets no distillation head
    assert m.head.weight.shape == (3, 32) and not any(k.startswith("head_dist") for k in m.state_dict())
    m.reset_classifier(0)  # headless: the head is the identity, no head_dist appears
    assert isinstance(m.head, torch.nn.Identity) and not any(k.startswith("head_dist") for k in m.state_dict())
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    d = create_model(tiny_cfg(num_classes=5, distilled=True)).to(torch.bfloat16)
    d.reset_classifier(3)
    for head in (d.head, d.head_dist):
        assert head.weight.dtype == torch.bfloat16 and head.weight.shape == (3, 32) and not head.weight.any()
    with torch.device("meta"):
        meta = create_model(tiny_cfg(num_classes=5))
    meta.reset_classifier(4)
    assert meta.head.weight.device.type == "meta"
    d.reset_classifier(0)
    assert isinstance(d.head, torch.nn.Identity) and isinstance(d.head_dist, torch.nn.Identity)


def test_a_headless_distilled_model_has_no_distillation_head():
    m = create_model(tiny_cfg(num_classes=0, distilled=True))
    assert isinstance(m.head_dist, torch.nn.Identity)


def test_init_buffers_follows_the_parameters_device_and_dtype():
    m = create_model(tiny_cfg(pos_embed="sincos2d", rel_pos="shared")).to(torch.bfloat16)
    m.init_buffers()
    assert m.pos_embed.dtype == torch.bfloat16
    want = create_model(tiny_cfg(pos_embed="sincos2d")).pos_embed.to(torch.bfloat16)
    assert torch.equal(m.pos_embed, want)
    with torch.device("meta"):
        meta = create_model(tiny_cfg(pos_embed="sincos2d", rel_pos="shared"))
    meta.init_buffers()  # default: where the parameters are
    assert meta.pos_embed.device.type == "meta"
    assert meta.rel_pos_bias.relative_position_index.device.type == "meta"
    meta.init_buffers("meta")
    assert meta.pos_embed.device.type == "meta"


def test_sincos_embedding_at_another_grid_keeps_its_dtype_and_formula():
    from vitkit.layers import sincos_2d_pos_embed

    m = create_model(tiny_cfg(pos_embed="sincos2d", dynamic_img_size=True)).to(torch.bfloat16)
    pos = m._pos_embed_for((3, 5))
    assert pos.dtype == torch.bfloat16
    assert torch.equal(pos, sincos_2d_pos_embed((3, 5), 32).to(torch.bfloat16))
    with torch.device("meta"):
        meta = create_model(tiny_cfg(pos_embed="sincos2d", dynamic_img_size=True))
    meta.init_buffers("meta")
    assert meta._pos_embed_for((3, 5)).device.type == "meta"  # made where the built one is


def test_learned_embedding_of_a_non_square_grid_resamples_from_that_grid():
    """A model built at 32x48 (grid 4x6) asked for a 6x4 grid resamples from 4x6, not from a guessed square."""
    m = create_model(tiny_cfg(image_size=(32, 48), dynamic_img_size=True))
    want = resample_pos_embed(m.pos_embed, (6, 4), (4, 6), m.pos_prefix)
    assert torch.equal(m._pos_embed_for((6, 4)), want)
    m.set_image_size((48, 32))
    assert m.pos_embed.shape == want.shape
    torch.testing.assert_close(m.pos_embed.data, want.data)


def test_forward_intermediates_bounds_defaults_and_relative_positions():
    m = create_model(tiny_cfg(depth=3, rel_pos="per_block", pos_embed="none")).eval()
    assert isinstance(m.norm, torch.nn.LayerNorm)
    with torch.no_grad():
        nn_ = [torch.randn_like(b.attn.relative_position_bias_table) for b in m.blocks]
        for b, t in zip(m.blocks, nn_):
            b.attn.relative_position_bias_table.copy_(t)
        x = torch.randn(1, 3, 32, 32)
        plain = m.forward_intermediates(x)  # norm off by default
        tokens, grid = m._embed(x)
        want = []
        for blk in m.blocks:
            tokens, _ = blk(tokens, "fused", None, m.attn_bias(blk, grid))
            want.append(tokens)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, want))
        assert not torch.allclose(plain[-1], m.norm(plain[-1]), atol=1e-3)  # so the norm's default shows
        tokens, _ = m._embed(x)
        bias = m.attn_bias(m.blocks[0], grid)
        for impl in ("fused", "plain"):  # a block adds the bias it is given
            with_bias, without = (m.blocks[0](tokens, impl, None, b)[0] for b in (bias, torch.zeros_like(bias)))
            assert not torch.allclose(with_bias, without, atol=1e-4)
        assert torch.allclose(m.forward_intermediates(x, norm=True)[-1], m.norm(want[-1]), atol=1e-6)
        assert len(m.forward_intermediates(x, indices=1)) == 1 and len(m.forward_intermediates(x, indices=3)) == 3
        assert len(m.forward_intermediates(x, indices=[-3, 2])) == 2
    for bad in (0, 4):
        with pytest.raises(ValueError, match="last 1..3 blocks"):
            m.forward_intermediates(x, indices=bad)
    for bad in ([-4], [3]):
        with pytest.raises(ValueError, match="out of range"):
            m.forward_intermediates(x, indices=bad)


def test_no_weight_decay_names_every_token_and_embedding_parameter():
    m = create_model(tiny_cfg(distilled=True, reg_tokens=2))
    names = {n for n, _ in m.named_parameters()}
    assert {"pos_embed", "cls_token", "dist_token", "reg_token"} <= names & m.no_weight_decay()
    beit = create_model(tiny_cfg(rel_pos="per_block"))
    tables = {n for n, _ in beit.named_parameters() if n.endswith("relative_position_bias_table")}
    assert len(tables) == 2 and tables <= beit.no_weight_decay()


def test_attention_pool_query_is_initialised_at_width_to_the_minus_half():
    m = create_model(tiny_cfg(width=256, heads=4, pooling="map", class_token=False))
    std = float(m.attn_pool.latent.detach().std())
    assert 0.8 * 256 ** -0.5 < std < 1.2 * 256 ** -0.5  # timm: truncated normal, std latent_dim^-0.5


def test_embed_is_the_tokens_with_prefix_and_positions():
    m = create_model(tiny_cfg(reg_tokens=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = m.embed(x)
        assert tokens.shape == (2, 1 + 2 + 16, 32)
        assert torch.equal(tokens, m.join_prefix(m.embed_patches(x)[0]))


def test_model_predict_passes_its_options_on():
    from PIL import Image

    m = create_model(tiny_cfg(num_classes=7)).eval()
    img = Image.new("RGB", (40, 40), (120, 30, 200))
    assert len(m.predict(img)) == 5  # the top 5 of 7 classes by default
    assert len(m.predict(img, topk=2)) == 2
    with pytest.raises(Exception, match="pixel"):
        m.predict(img, max_pixels=100)  # the decoder's pixel limit reaches open_image


def test_predict_names_the_classes_by_the_models_labels_when_there_is_one_per_class():
    from PIL import Image

    from vitkit.models.classify import class_names

    img = Image.new("RGB", (40, 40), (120, 30, 200))
    m = create_model(tiny_cfg(num_classes=3, labels=["cat", "dog", "owl"])).eval()
    assert class_names(m) == ["cat", "dog", "owl"]
    assert sorted(name for name, _ in m.predict(img, topk=3)) == ["cat", "dog", "owl"]
    m.reset_classifier(4, labels=None)  # no labels: placeholders, one per class
    assert class_names(m) == ["class_0", "class_1", "class_2", "class_3"]


@pytest.mark.parametrize("impl", ["fused", "plain"])
def test_beit_under_autocast_adds_its_bias_in_the_attentions_dtype(impl):
    m = create_model(tiny_cfg(rel_pos="per_block", pos_embed="none")).eval()
    with torch.no_grad():
        for b in m.blocks:
            b.attn.relative_position_bias_table.normal_()
        x = torch.randn(2, 3, 32, 32)
        want = m(x, attn_impl=impl)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # q and k in bfloat16, the float32 table's bias cast
            got = m(x, attn_impl=impl)
    assert torch.allclose(got.float(), want, atol=0.1)
