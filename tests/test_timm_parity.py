"""The same random weights in timm's VisionTransformer and ours give the same logits."""

import functools

import pytest
import torch

from vitkit import create_model

from helpers import tiny_cfg

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def randomise(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def check(ours, theirs, x):
    randomise(ours).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # our names are timm's names
    theirs.eval()
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == b.shape
    assert (a - b).abs().max() <= 1e-5


def test_tiny16_matches_timm():
    ours = create_model("vit_tiny_patch16_224", num_classes=10)
    theirs = timm_vit.VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                                         num_classes=10)
    check(ours, theirs, torch.randn(2, 3, 224, 224))


def test_gap_registers_layerscale_matches_timm():
    ours = create_model(tiny_cfg(width=64, depth=3, pooling="gap", class_token=False, reg_tokens=4,
                                 pos_embed_prefix=False, layer_scale_init=1e-5))
    theirs = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                                         num_classes=5, global_pool="avg", class_token=False, reg_tokens=4,
                                         no_embed_class=True, init_values=1e-5)
    check(ours, theirs, torch.randn(2, 3, 32, 32))


def test_cls_with_registers_embedded_prefix_matches_timm():
    ours = create_model(tiny_cfg(reg_tokens=2, act="gelu", norm_eps=1e-12))
    theirs = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                         num_classes=5, reg_tokens=2,
                                         norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-12))
    check(ours, theirs, torch.randn(2, 3, 32, 32))


def test_qk_norm_without_qkv_bias_matches_timm():
    ours = create_model(tiny_cfg(qk_norm=True, qkv_bias=False))
    theirs = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                         num_classes=5, qk_norm=True, qkv_bias=False)
    check(ours, theirs, torch.randn(2, 3, 32, 32))


def test_distilled_deit_matches_timm():
    from timm.models.deit import VisionTransformerDistilled

    ours = create_model(tiny_cfg(distilled=True))
    theirs = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    check(ours, theirs, torch.randn(2, 3, 32, 32))


def test_dynamic_size_resampling_matches_timm():
    ours = create_model(tiny_cfg(dynamic_img_size=True))
    theirs = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                         num_classes=5, dynamic_img_size=True)
    check(ours, theirs, torch.randn(2, 3, 48, 64))


@pytest.mark.parametrize("new_grid", [(24, 24), (32, 32), (7, 7), (20, 28)])
def test_pos_embed_resampling_matches_timm(new_grid):
    from timm.layers import resample_abs_pos_embed

    from vitkit.layers import resample_pos_embed

    pe = torch.randn(1, 1 + 14 * 14, 64)
    ours = resample_pos_embed(pe, new_grid, (14, 14), num_prefix_tokens=1)
    theirs = resample_abs_pos_embed(pe, list(new_grid), (14, 14), num_prefix_tokens=1)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-5
