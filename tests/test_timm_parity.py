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


@pytest.mark.parametrize("rel_pos", ["per_block", "shared"])
def test_beit_blocks_match_timm_at_the_built_size_and_resampled(rel_pos):
    """BEiT: q/v biases, relative position bias (per block or shared), mean pooling with fc_norm. Without
    LayerScale the names are timm's Beit names as they are (gamma_1/gamma_2 are the converter's)."""
    from timm.models.beit import Beit

    ours = create_model(tiny_cfg(rel_pos=rel_pos, qkv_bias="qv", pooling="gap", pos_embed="learned"))
    theirs = Beit(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
                  use_rel_pos_bias=rel_pos == "per_block", use_shared_rel_pos_bias=rel_pos == "shared")
    check(ours, theirs, torch.randn(2, 3, 32, 32))
    ours.set_image_size(48)  # the tables resampled as timm's resize_rel_pos_bias_table, pos_embed bicubic
    theirs.set_input_size(img_size=(48, 48))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("grid", [(2, 2), (3, 4), (4, 4), (1, 3)])
def test_rel_pos_index_is_timms(grid):
    from timm.models.beit import gen_relative_position_index

    from vitkit.layers import rel_pos_index

    assert torch.equal(rel_pos_index(grid), gen_relative_position_index(grid))


@pytest.mark.parametrize("old, new", [((4, 4), (6, 6)), ((6, 6), (4, 4)), ((4, 4), (3, 5)), ((2, 2), (7, 7)),
                                      ((1, 1), (3, 3)), ((14, 14), (24, 24))])
def test_rel_pos_table_resampling_matches_timm(old, new):
    from timm.layers import resize_rel_pos_bias_table

    from vitkit.layers import resize_rel_pos_table

    rows = (2 * new[0] - 1) * (2 * new[1] - 1) + 3
    table = torch.randn((2 * old[0] - 1) * (2 * old[1] - 1) + 3, 3)
    ours = resize_rel_pos_table(table, new, old)
    theirs = resize_rel_pos_bias_table(table, new_window_size=new, new_bias_shape=(rows, 3), old_window_size=old)
    assert ours.shape == theirs.shape == (rows, 3)
    assert (ours - theirs).abs().max() <= 1e-5
    torch.testing.assert_close(ours[-3:], table[-3:], rtol=0, atol=0)  # the [CLS] rows are kept
