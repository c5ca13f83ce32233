"""The hybrid CNN-ViT (a ResNet-v2 stem, then 1×1 patches): timm's hybrid state dicts read with parity, written
back, sized by the config, trained from the CLI and explained."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid, _resnetv2
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from vitkit import ViTConfig, create_model, parse_model_name
from vitkit.cli.main import main
from vitkit.explain import explain

from weights_helpers import max_diff, randomise


def timm_hybrid(layers, patch=1, img=32, width=64, depth=2, heads=2, classes=5):
    """A tiny random hybrid built by timm's own helpers (its ResNet-v2: stem width 64, stages 256, 512 ...)."""
    torch.manual_seed(0)
    model = _create_vision_transformer_hybrid("vit_base_r50_s16_224", backbone=_resnetv2(layers=layers),
                                              img_size=img, patch_size=patch, embed_dim=width, depth=depth,
                                              num_heads=heads, num_classes=classes)
    return randomise(model, scale=0.1).eval()


@pytest.mark.parametrize("layers, patch", [((1,), 1), ((1, 1), 1), ((), 2)])
def test_timm_hybrid_state_dict_loads_with_parity(tmp_path, layers, patch):
    theirs = timm_hybrid(layers, patch)
    torch.save(theirs.state_dict(), tmp_path / "h.pth")  # no metadata: the stem is told by the keys' shapes
    ours = vitkit.load(tmp_path / "h.pth", heads=2).eval()
    c = ours.cfg
    assert (c.stem, c.hybrid_layers, c.hybrid_width, c.patch_size, c.image_hw) == ("hybrid", layers, 64, patch, (32, 32))
    assert c.grid_size == theirs.patch_embed.grid_size
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-4
        assert max_diff(ours.forward_features(x), theirs.forward_features(x)) <= 1e-4
    assert sum(p.numel() for p in ours.parameters()) == c.num_params()


def test_timm_hybrid_written_back_loads_into_timm(tmp_path):
    theirs = timm_hybrid((1,))
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "h.safetensors")
    ours = vitkit.load(tmp_path / "h.safetensors", heads=2)
    for name in ("back.safetensors", "back.pth"):
        vitkit.save(ours, tmp_path / name, format="timm")
        again = timm_hybrid((1,))
        state = vitkit.weights.sniff.read_weights_file(tmp_path / name)
        again.load_state_dict(state, strict=True)  # every key in timm's layout
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            assert max_diff(again(x), theirs(x)) == 0
    assert vitkit.load(tmp_path / "back.safetensors").cfg == ours.cfg  # our config rides along as metadata
    with pytest.raises(ValueError, match="hybrid CNN stem in a hub folder"):
        vitkit.save(ours, tmp_path / "folder", format="timm")
    with pytest.raises(ValueError, match="hybrid CNN stem"):  # transformers' ViTHybrid is another class
        vitkit.save(ours, tmp_path / "out-hf", format="hf")


@pytest.mark.parametrize("name", ["vit_tiny_r_s16_p8_224", "vit_small_r26_s32_224", "vit_base_r50_s16_224",
                                  "vit_large_r50_s32_224"])
def test_named_hybrids_match_timm_in_shapes_and_params(name):
    cfg = parse_model_name(name).replace(num_classes=1000)
    with torch.device("meta"):
        theirs = timm.create_model(name, num_classes=1000)
    ours = vitkit.weights.checks.expected_shapes(cfg)
    assert ours == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert cfg.num_params() == sum(p.numel() for p in theirs.parameters())
    assert cfg.grid_size == theirs.patch_embed.grid_size


@pytest.mark.parametrize("layers", [(), (1,), (2, 1)])
def test_flops_count_the_stem(layers):
    cfg = ViTConfig(image_size=48, patch_size=1, width=32, depth=1, heads=2, num_classes=3, stem="hybrid",
                    hybrid_layers=layers, hybrid_width=32)
    m = create_model(cfg).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m.patch_embed.backbone(torch.randn(1, 3, 48, 48))
    assert 2 * cfg.stem_macs() == fc.get_total_flops()
    assert sum(p.numel() for p in m.parameters()) == cfg.num_params()
    with FlopCounterMode(display=False) as fc, torch.no_grad():  # the 1x1 patch projection of the feature map
        m.patch_embed.proj(torch.randn(1, cfg.stem_channels, *cfg.grid_size))
    assert cfg.flops() > 2 * cfg.stem_macs() + fc.get_total_flops()


def test_config_refuses_a_bad_stem():
    for kw, msg in ((dict(stem="cnn"), "stem must be one of"), (dict(hybrid_width=48), "multiple of 32"),
                    (dict(hybrid_layers=(1,)), "needs stem='hybrid'"),
                    (dict(stem="hybrid", image_size=30), "token stride 4")):
        with pytest.raises(ValueError, match=msg):
            ViTConfig(**{**dict(image_size=32, patch_size=1, width=32, depth=1, heads=2), **kw})


def test_train_a_hybrid_from_the_cli_and_explain_it(tmp_path, capsys):
    cfg = tmp_path / "hybrid.json"
    cfg.write_text(json.dumps(dict(image_size=32, patch_size=1, width=32, depth=2, heads=2, stem="hybrid",
                                   hybrid_layers=[1], hybrid_width=32, num_classes=10)))
    run = tmp_path / "run"
    rc = main(["train", "--model", str(cfg), "--data", "digits", "--steps", "2",
               "--batch-size", "16", "--out", str(run), "--no-progress"])
    assert rc == 0, capsys.readouterr()
    model = vitkit.load(run)
    assert model.cfg.stem == "hybrid" and model.cfg.grid_size == (8, 8)
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "d.png")
    expl = explain(model, Image.open(tmp_path / "d.png"))
    assert expl.heatmap.shape == (8, 8)  # the stem's output grid (32 px / stride 4), one cell per token
    assert main(["explain", str(run), str(tmp_path / "d.png"), "--out", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").stat().st_size > 0


@pytest.mark.parametrize("layers, patch", [((1, 1), 1), ((), 2)])
def test_npz_hybrid_in_the_original_naming_is_what_timm_reads(tmp_path, layers, patch):
    """R50+ViT-B_16.npz naming (conv_root, gn_root, block{i}/unit{j}/{conv,gn}{1..3}, conv_proj, gn_proj): written
    by vitkit, read by timm's own npz loader and by vitkit without vitkit's config entry, both with parity."""
    theirs = timm_hybrid(layers, patch)
    torch.save(theirs.state_dict(), tmp_path / "h.pth")
    ours = vitkit.load(tmp_path / "h.pth", heads=2).eval()
    vitkit.save(ours, tmp_path / "h.npz", format="npz")
    arrays = dict(np.load(tmp_path / "h.npz"))
    assert "conv_root/kernel" in arrays and arrays["conv_root/kernel"].shape == (7, 7, 3, 64)
    assert ("block2/unit1/conv_proj/kernel" in arrays) == (layers == (1, 1))
    foreign = {k: v for k, v in arrays.items() if not k.startswith("vitkit/")}
    np.savez(tmp_path / "foreign.npz", **foreign)
    again = timm_hybrid(layers, patch)
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    again.load_pretrained(str(tmp_path / "foreign.npz"))
    back = vitkit.load(tmp_path / "foreign.npz", act="gelu").eval()  # JAX files default to tanh GELU
    assert (back.cfg.stem, back.cfg.hybrid_layers, back.cfg.image_hw) == ("hybrid", layers, (32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = theirs(x)
        assert max_diff(again(x), ref) <= 1e-4
        assert max_diff(back(x), ref) <= 1e-4


def test_hybrid_loaded_at_another_size_follows_the_stems_grid(tmp_path):
    theirs = timm_hybrid((1,))  # 32 px, stride 4: an 8x8 grid
    torch.save(theirs.state_dict(), tmp_path / "h.pth")
    ours = vitkit.load(tmp_path / "h.pth", heads=2, image_size=64).eval()
    assert ours.cfg.grid_size == (16, 16) and ours.pos_embed.shape == (1, 257, 64)
    big = timm_hybrid((1,), img=64)
    state = dict(theirs.state_dict(), pos_embed=resample_abs_pos_embed(theirs.pos_embed.detach(), new_size=(16, 16),
                                                                       num_prefix_tokens=1))
    big.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(ours(x), big(x)) <= 1e-4
    with pytest.raises(ValueError, match="not divisible by the token stride 4"):
        vitkit.load(tmp_path / "h.pth", heads=2, image_size=66)


# --- the stem's pieces against their definitions (and timm's), on shapes the models above do not reach


@pytest.mark.parametrize("hw", [(7, 8), (9, 6), (5, 5)])
@pytest.mark.parametrize("value", [0.0, float("-inf")])
def test_pad_same_is_tensorflows_same_padding_per_side(hw, value):
    from timm.layers.padding import pad_same as timm_pad_same

    from vitkit.layers.hybrid_stem import pad_same

    x = torch.randn(1, 2, *hw)
    for kernel, stride in ((3, 2), (7, 2), (1, 2), (3, 1)):
        ours = pad_same(x, kernel, stride, value=value)
        theirs = timm_pad_same(x, [kernel, kernel], [stride, stride], value=value)
        assert ours.shape == theirs.shape and torch.equal(ours, theirs), (hw, kernel, stride)
    if value == float("-inf"):  # the max pool's padding really is -inf, not 0
        assert pad_same(x, 3, 2, value=value).isneginf().any()


def test_std_conv_standardises_each_kernel_with_the_biased_variance():
    from timm.layers.std_conv import StdConv2dSame as TimmStdConv

    from vitkit.layers.hybrid_stem import WS_EPS, StdConv2dSame

    torch.manual_seed(0)
    ours, theirs = StdConv2dSame(3, 4, 3, stride=2), TimmStdConv(3, 4, 3, stride=2, eps=WS_EPS)
    theirs.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 3, 9, 10)
    w = ours.weight
    std = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), unbiased=False, keepdim=True) + WS_EPS)
    from vitkit.layers.hybrid_stem import pad_same

    want = torch.nn.functional.conv2d(pad_same(x, 3, 2), std, None, 2)
    assert max_diff(ours(x), want) < 1e-5 and max_diff(ours(x), theirs(x)) < 1e-5
    # a constant kernel (variance 0) standardises to zero, not NaN: eps is added, never subtracted
    ours.weight.data.fill_(0.3)
    out = ours(x)
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_hybrid_embed_without_patch_bias_and_on_a_non_square_image():
    cfg = ViTConfig(image_size=(32, 64), patch_size=1, width=32, depth=1, heads=2, num_classes=3, stem="hybrid",
                    hybrid_layers=(), hybrid_width=32, patch_bias=False)
    m = create_model(cfg).eval()
    assert m.patch_embed.proj.bias is None
    tokens, grid = m.patch_embed(torch.randn(1, 3, 32, 64))
    assert grid == (8, 16) and tokens.shape == (1, 8 * 16, 32)
