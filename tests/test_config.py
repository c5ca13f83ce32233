import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from vitkit import ViTConfig, parse_model_name
from vitkit.config import PATCH_SIZES, VARIANTS


@pytest.mark.parametrize("name", vitkit.list_models())
def test_every_listed_name_parses(name):
    cfg = parse_model_name(name)
    assert cfg.image_hw == (224, 224)
    assert cfg.num_tokens == cfg.num_patches + cfg.num_prefix_tokens


@pytest.mark.parametrize("size", list(VARIANTS))
@pytest.mark.parametrize("patch", PATCH_SIZES)
def test_long_and_short_names_agree(size, patch):
    short = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}[size]
    assert parse_model_name(f"vit_{size}_patch{patch}_224") == parse_model_name(f"{short}/{patch}")


def test_any_patch_and_resolution_in_a_name():
    cfg = parse_model_name("vit_tiny_patch4_32")
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.image_hw) == (192, 12, 3, 4, (32, 32))
    assert cfg.num_patches == 64
    assert parse_model_name("B/16@384").image_hw == (384, 384)
    assert parse_model_name("vit_small_patch16_384x256").image_hw == (384, 256)
    assert parse_model_name("vit_base_patch16_224.augreg2_in21k_ft_in1k") == parse_model_name("B/16")


def test_beit_names_parse_to_beit_blocks():
    b = parse_model_name("beit_base_patch16_224")
    assert (b.rel_pos, b.qkv_bias, b.layer_scale_init, b.pooling, b.use_fc_norm, b.class_token, b.pos_embed) == \
        ("per_block", "qv", 0.1, "gap", True, True, "none")
    assert (b.width, b.depth, b.heads, b.is_beit) == (768, 12, 12, True)
    assert parse_model_name("beit_large_patch16_512").layer_scale_init == 1e-5
    assert parse_model_name("beitv2_base_patch16_224") == b.replace(layer_scale_init=1e-5)
    assert parse_model_name("beit_base_patch16_224.in22k_ft_in22k_in1k") == b
    with pytest.raises(ValueError, match="rel_pos needs exactly one prefix token"):
        parse_model_name("beit_base_patch16_reg4_224")


def test_name_tokens_registers_gap_distilled():
    cfg = parse_model_name("vit_base_patch16_reg4_gap_256")
    assert cfg.reg_tokens == 4 and cfg.pooling == "gap" and not cfg.class_token and cfg.image_hw == (256, 256)
    d = parse_model_name("deit_small_distilled_patch16_224")
    assert d.distilled and d.width == 384 and d.num_prefix_tokens == 2


@pytest.mark.parametrize("bad, needle", [
    ("resnet50", "unknown model name"),
    ("vit_giant_patch14_224", "unknown model size"),
    ("vit_base_224", "no patch size"),
    ("vit_base_patch16_foo_224", "unknown token 'foo'"),
    ("vit_base_patch16_100", "not divisible by patch_size 16"),
    ("", "non-empty"),
])
def test_bad_names_name_the_problem_and_the_accepted_values(bad, needle):
    with pytest.raises(ValueError) as e:
        parse_model_name(bad)
    assert needle in str(e.value)
    if bad:
        assert "accepted names" in str(e.value) or "sizes:" in str(e.value) or "divisible" in str(e.value)


# Published parameter counts (1000 classes, 224², P=16 unless noted).
@pytest.mark.parametrize("name, published_m, tol_m", [
    ("vit_tiny_patch16_224", 5.7, 0.1),
    ("vit_small_patch16_224", 22.1, 0.1),
    ("vit_base_patch16_224", 86.6, 0.1),
    ("vit_large_patch16_224", 304.3, 0.5),
    ("vit_huge_patch14_224", 632.0, 1.5),
    ("beit_base_patch16_224", 86.530984, 1e-9),  # timm's beit_* models, counted: exactly equal
    ("beit_large_patch16_512", 305.674728, 1e-9),
])
def test_parameter_counts_match_the_papers(name, published_m, tol_m):
    assert abs(parse_model_name(name).num_params() / 1e6 - published_m) <= tol_m


def test_flops_of_base16():
    # ViT-B/16 at 224²: 17.6 GMACs (DeiT table) = 35.1 GFLOPs
    assert abs(parse_model_name("B/16").flops() / 1e9 - 35.1) < 0.2


@pytest.mark.parametrize("kw, needle", [
    (dict(width=100, heads=3), "not divisible by heads"),
    (dict(pooling="max"), "pooling must be one of"),
    (dict(pos_embed="rope"), "pos_embed must be one of"),
    (dict(act="relu"), "act must be one of"),
    (dict(image_size=30, patch_size=16), "not divisible by patch_size"),
    (dict(width=10**9), "width must be an integer"),
    (dict(class_token=False), "needs class_token=True"),
    (dict(drop_path=1.5), "drop_path must be in"),
    (dict(width=16384, depth=256, heads=128), "parameters .* is refused"),
    (dict(qkv_bias=1), "qkv_bias must be one of"),
    (dict(qk_norm="yes"), "qk_norm must be true or false"),
])
def test_config_validation(kw, needle):
    with pytest.raises(ValueError, match=needle):
        ViTConfig(**kw)


def test_config_round_trip_and_unknown_fields():
    cfg = ViTConfig(image_size=(32, 48), patch_size=8, width=64, depth=2, heads=4, reg_tokens=2,
                    layer_scale_init=1e-5, labels=None, num_classes=3)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["qkv_bias"] is True  # configs written before "qv" existed read and write the same
    assert ViTConfig.from_dict({**cfg.to_dict(), "qkv_bias": False}).qkv_bias is False
    beit = cfg.replace(qkv_bias="qv", qk_norm=True)
    assert ViTConfig.from_dict(beit.to_dict()) == beit
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        ViTConfig.from_dict({**cfg.to_dict(), "hidden_size": 3})
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        cfg.replace(embed_dim=3)


def test_list_models_names_every_published_model_once_and_each_parses():
    # the public catalogue, spelled out: a name dropped, renamed or mis-cased is a user's lookup that fails
    sizes = ["tiny", "small", "base", "large", "huge"]
    expected = [f"vit_{s}_patch{p}_224" for s in sizes for p in (8, 14, 16, 32)]
    expected += ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit_small_patch16_224",
                 "deit_small_distilled_patch16_224", "deit_base_patch16_224", "deit_base_distilled_patch16_224",
                 "beit_base_patch16_224", "beit_large_patch16_224", "beitv2_base_patch16_224", "beitv2_large_patch16_224",
                 "vit_base_patch16_clip_224", "vit_large_patch16_clip_224",
                 "vit_base_patch16_siglip_224", "vit_large_patch16_siglip_224",
                 "vit_tiny_r_s16_p8_224", "vit_small_r26_s32_224", "vit_base_r26_s32_224", "vit_base_r50_s16_224",
                 "vit_large_r50_s32_224"]
    names = vitkit.config.list_models()
    assert names == expected
    for name in names:
        cfg = parse_model_name(name)
        assert cfg.image_hw == (224, 224), name
        assert cfg.distilled == ("distilled" in name), name


_EDGE_BASE = dict(image_size=32, patch_size=4, width=64, depth=2, heads=2, num_classes=10)


@pytest.mark.parametrize("over", [
    dict(patch_size=4096, image_size=4096), dict(channels=4096), dict(width=4096, heads=4096),
    dict(image_size=1, patch_size=1), dict(image_size=4096, patch_size=4),  # 1024 patches a side: the limit
    dict(num_classes=0), dict(num_classes=1_000_000), dict(mlp_ratio=0.5), dict(mlp_ratio=64),
    dict(reg_tokens=0), dict(reg_tokens=1024), dict(width=66, heads=2),  # learned positions: any width
    dict(pos_embed="sincos2d", width=68, heads=2), dict(rel_pos="per_block", image_size=512),  # 128² patches
    dict(dropout=0.999), dict(attn_dropout=0.0), dict(drop_path=0.5), dict(norm_eps=0.5),
    dict(representation_size=1), dict(representation_size=16384),
    dict(mlp_ratio=1 / 64),  # width 64: one hidden unit
], ids=repr)
def test_validate_accepts_each_limit(over):
    ViTConfig(**{**_EDGE_BASE, **over})


@pytest.mark.parametrize("over, field", [
    (dict(patch_size=4097, image_size=4097), "patch_size"), (dict(channels=4097), "channels"),
    (dict(width=16385, heads=1), "width"), (dict(heads=4097, width=4097 * 2), "heads"),
    (dict(patch_size=True), "patch_size"), (dict(depth=False), "depth"),
    (dict(image_size=(0, 32)), "image_size"), (dict(image_size=(32, 0)), "image_size"),
    (dict(image_size=4100, patch_size=4), "image_size"), (dict(image_size=(32, 30)), "divisible"),
    (dict(image_size=(30, 32)), "divisible"),
    (dict(num_classes=-1), "num_classes"), (dict(num_classes=1_000_001), "num_classes"),
    (dict(mlp_ratio=0), "mlp_ratio must be in"), (dict(mlp_ratio=64.5), "mlp_ratio"), (dict(mlp_ratio="4"), "mlp_ratio"),
    (dict(mlp_ratio=0.007), "no hidden unit"),  # width 64: 0.448 rounds to 0
    (dict(reg_tokens=-1), "reg_tokens"), (dict(reg_tokens=1025), "reg_tokens"),
    (dict(pos_embed="sincos2d", width=66, heads=2), "sincos2d"),
    (dict(rel_pos="per_block", image_size=516), "rel_pos"),
    (dict(dropout=1.0), "dropout"), (dict(attn_dropout=-0.1), "attn_dropout"),
    (dict(norm_eps=0), "norm_eps"), (dict(norm_eps=1), "norm_eps"), (dict(norm_eps=1.5), "norm_eps"),
    (dict(representation_size=0), "representation_size"), (dict(representation_size=16385), "representation_size"),
], ids=repr)
def test_validate_refuses_one_past_each_limit(over, field):
    with pytest.raises(ValueError, match=field):
        ViTConfig(**{**_EDGE_BASE, **over})


_HYBRID_BASE = dict(image_size=32, patch_size=1, width=32, depth=1, heads=2, num_classes=10, stem="hybrid")


@pytest.mark.parametrize("over", [dict(hybrid_layers=(64,)), dict(hybrid_layers=(1, 1, 1, 1)),
                                  dict(hybrid_layers=()), dict(hybrid_width=32), dict(hybrid_width=4096)], ids=repr)
def test_validate_accepts_each_limit_of_the_hybrid_stem(over):
    assert ViTConfig(**{**_HYBRID_BASE, **over}).stem == "hybrid"


@pytest.mark.parametrize("over, field", [
    (dict(hybrid_layers=(0,)), "hybrid_layers"), (dict(hybrid_layers=(65,)), "hybrid_layers"),
    (dict(hybrid_layers=(1, 1, 1, 1, 1)), "hybrid_layers"), (dict(hybrid_layers=(True,)), "hybrid_layers"),
    (dict(hybrid_layers=(2.0,)), "hybrid_layers"),
    (dict(hybrid_width=0), "hybrid_width"), (dict(hybrid_width=4128), "hybrid_width"),
    (dict(hybrid_width=64.0), "hybrid_width"), (dict(hybrid_width=True), "hybrid_width"),
    (dict(hybrid_width=48), "hybrid_width"), (dict(dynamic_img_pad=True), "dynamic_img_pad"),
], ids=repr)
def test_validate_refuses_one_past_each_limit_of_the_hybrid_stem(over, field):
    with pytest.raises(ValueError, match=field):
        ViTConfig(**{**_HYBRID_BASE, **over})


@pytest.mark.parametrize("size", [(), (32,), [32], (32, 32, 32), (32.5, 32), (32, 32.0), (True, 32), (32, False),
                                  "32", {32, 16}, None], ids=repr)
def test_image_size_must_be_an_int_or_a_pair_of_ints(size):
    with pytest.raises(ValueError, match="image_size must be an int or a pair"):
        ViTConfig(**{**_EDGE_BASE, "image_size": size})


def test_image_size_pairs_and_lists_read_as_height_width():
    assert ViTConfig(**{**_EDGE_BASE, "image_size": [32, 16]}).image_hw == (32, 16)
    assert ViTConfig(**{**_EDGE_BASE, "image_size": (16, 32)}).image_hw == (16, 32)
    assert ViTConfig(**{**_EDGE_BASE, "image_size": (32, 32)}).image_size == 32  # a square is written as one int


def test_validate_accepts_exactly_the_parameter_limit(monkeypatch):
    """MAX_PARAMS is the largest accepted count (ViT-22B's order), checked with the limit set to a small model's."""
    n = ViTConfig(**_EDGE_BASE).num_params()
    monkeypatch.setattr(vitkit.config, "MAX_PARAMS", n)
    ViTConfig(**_EDGE_BASE)
    monkeypatch.setattr(vitkit.config, "MAX_PARAMS", n - 1)
    with pytest.raises(ValueError, match="parameters"):
        ViTConfig(**_EDGE_BASE)


def _plain_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, **kw):
    """Attention as two matrix products, which torch's FlopCounterMode counts (it does not see the CPU SDPA kernel)."""
    a = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        a = a + attn_mask
    return a.softmax(-1) @ v


_FLOPS_BASE = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_ratio=1.5, num_classes=5)


@pytest.mark.parametrize("over", [
    dict(), dict(pooling="map", class_token=False), dict(representation_size=24), dict(distilled=True),
    dict(channels=1), dict(patch_size=4, image_size=(24, 16)), dict(pooling="gap", num_classes=0),
    dict(reg_tokens=2, num_classes=7),
    dict(stem="hybrid", hybrid_layers=(1, 2), hybrid_width=32, patch_size=1, image_size=(64, 48)),
    dict(stem="hybrid", hybrid_layers=(), hybrid_width=32, patch_size=2, image_size=32, channels=1),
], ids=repr)
def test_flops_are_what_the_forward_computes(over, monkeypatch):
    """ViTConfig.flops() = 2 x the multiply-adds torch counts in the model's full forward (every token through
    every block, as forward_features computes it), for each option that changes the count."""
    cfg = ViTConfig(**{**_FLOPS_BASE, **over})
    model = vitkit.create_model(cfg).eval()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _plain_sdpa)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.forward_head(model.forward_features(torch.randn(1, cfg.channels, *cfg.image_hw)))
    assert cfg.flops() == fc.get_total_flops()
    assert (cfg.stem_macs() == 0) == (cfg.stem == "patch")


def test_parse_model_name_reads_each_part_of_the_name():
    assert parse_model_name("B/16@224x160").image_hw == (224, 160)
    assert parse_model_name("B/16@96").image_hw == (96, 96)
    tagged = parse_model_name("vit_base_patch16_224.augreg2.in21k_ft_in1k")  # a timm tag with dots: ignored whole
    assert (tagged.width, tagged.patch_size, tagged.image_hw) == (768, 16, (224, 224))
    assert parse_model_name("vit_b_patch16_224").width == 768  # the short size names
    assert parse_model_name("vit_s_r26_s32_224").width == 384  # ... in hybrid names too
    reg = parse_model_name("vit_base_patch16_reg4_224")  # timm's register models: no position on the prefix
    assert (reg.reg_tokens, reg.pos_embed_prefix) == (4, False)
    assert parse_model_name("vit_base_patch16_224").pos_embed_prefix is True


@pytest.mark.parametrize("name, message", [
    ("B/16@30", "'B/16@30'"),  # not divisible: the name the user gave is in the message
    ("vit_base_patch16_30", "'vit_base_patch16_30'"),
    ("vit_base_r50_s16_30", "'vit_base_r50_s16_30'"),
    ("vit_giant_r50_s16_224", "unknown hybrid"),
    ("vit_base", "unknown model name"), ("foo_base_patch16_224", "unknown model name"),
    ("deit_large_patch16_224", "DeiT comes in"), ("deit_huge_patch16_224", "DeiT comes in"),
])
def test_parse_model_name_refuses_with_the_name_given(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_model_name(name)
