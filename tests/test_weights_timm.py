"""timm checkpoints: state dicts and hub folders, parity with timm's forward pass on random peers."""

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT
from safetensors.torch import save_file

import vitkit
from vitkit.weights.convert_timm import infer_config

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state


def _check(theirs, path, x, tol=1e-5, **load_kw):
    ours = vitkit.load(path, **load_kw)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= tol
    return ours


def test_vit_small_16_safetensors_matches_timm(tmp_path):
    theirs = randomise(timm.create_model("vit_small_patch16_224", num_classes=10)).eval()
    save_file(theirs.state_dict(), tmp_path / "s16.safetensors")
    ours = _check(theirs, tmp_path / "s16.safetensors", torch.randn(1, 3, 224, 224))
    c = ours.cfg
    assert (c.width, c.depth, c.heads, c.patch_size, c.image_hw, c.num_classes) == (384, 12, 6, 16, (224, 224), 10)
    assert ours.load_info["format"] == "timm"
    assert ours.preprocess_cfg.crop_pct == 0.9 and ours.preprocess_cfg.interpolation == "bicubic"


@pytest.mark.parametrize("kw", [
    dict(reg_tokens=4, no_embed_class=True, init_values=1e-5, global_pool="avg", class_token=False),
    dict(reg_tokens=2, init_values=0.1),
    dict(global_pool="avg"),
    dict(global_pool="avg", fc_norm=False, class_token=False),  # no [CLS] and no fc_norm: mean after the norm
    dict(qk_norm=True, qkv_bias=False),
])
def test_variants_registers_layerscale_gap_match_timm(tmp_path, kw):
    theirs = randomise(TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=5,
                               **kw)).eval()
    torch.save(theirs.state_dict(), tmp_path / "m.pth")
    ours = vitkit.load(tmp_path / "m.pth", heads=1)
    assert ours.cfg.reg_tokens == kw.get("reg_tokens", 0) and ours.cfg.pooling == ("gap" if "global_pool" in kw else "cls")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-5


def test_distilled_deit_pth_in_model_wrapper_matches_timm(tmp_path):
    theirs = randomise(VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1,
                                                  num_classes=5)).eval()
    torch.save({"model": theirs.state_dict()}, tmp_path / "deit.pth")  # as the DeiT repository ships them
    ours = _check(theirs, tmp_path / "deit.pth", torch.randn(2, 3, 32, 32), heads=1)
    assert ours.cfg.distilled


def test_mae_pretraining_checkpoint_decoder_is_ignored_and_listed(tmp_path):
    enc = randomise(TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=0)).eval()
    state = dict(enc.state_dict(), mask_token=torch.zeros(1, 1, 32), **{"decoder_embed.weight": torch.zeros(32, 64)})
    torch.save({"model": state}, tmp_path / "mae.pth")
    ours = vitkit.load(tmp_path / "mae.pth", heads=1)
    assert ours.load_info["ignored_keys"] == ["decoder_embed.weight", "mask_token"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours.forward_features(x), enc.forward_features(x)) <= 1e-5


def test_round_trip_ours_timm_ours_is_exact_and_timm_reads_the_file(tmp_path):
    cfg = tiny_cfg(reg_tokens=2, layer_scale_init=1e-5, pooling="gap", class_token=False, pos_embed_prefix=False,
                   heads=2, labels=list("vwxyz"))
    ours = randomise(vitkit.create_model(cfg)).eval()
    ours.preprocess_cfg = vitkit.PreprocessConfig(size=32, resize="shortest", crop_pct=0.9, interpolation="bicubic")
    vitkit.save(ours, tmp_path / "m.safetensors", format="timm")
    back = vitkit.load(tmp_path / "m.safetensors")
    assert same_state(ours, back) and back.cfg == ours.cfg and back.labels == list("vwxyz")
    assert back.preprocess_cfg == ours.preprocess_cfg
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=5, img_size=32, patch_size=8,
                               embed_dim=32, depth=2, num_heads=2, reg_tokens=2, init_values=1e-5, global_pool="avg",
                               class_token=False, no_embed_class=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "m.safetensors"),
                                                                  num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-5


def test_timm_hub_folder_written_by_us_loads_in_timm_and_back(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(heads=2))).eval()
    vitkit.save(ours, tmp_path / "folder", format="timm")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-5
    back = vitkit.load(tmp_path / "folder")
    assert same_state(ours, back) and back.cfg.heads == 2


def test_heads_of_a_nonstandard_width_must_be_given(tmp_path):
    m = TimmViT(img_size=32, patch_size=8, embed_dim=40, depth=1, num_heads=5, num_classes=0)
    save_file(m.state_dict(), tmp_path / "w40.safetensors")
    with pytest.raises(ValueError, match="pass heads=N"):
        vitkit.load(tmp_path / "w40.safetensors")
    assert vitkit.load(tmp_path / "w40.safetensors", heads=5).cfg.heads == 5


def test_pos_embed_resampled_at_load_matches_timm(tmp_path):
    theirs = randomise(timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1)).eval()
    save_file(theirs.state_dict(), tmp_path / "t.safetensors")
    ours = vitkit.load(tmp_path / "t.safetensors", image_size=384)
    ref = resample_abs_pos_embed(theirs.pos_embed.detach(), new_size=(24, 24), num_prefix_tokens=1)
    assert ours.cfg.image_hw == (384, 384) and ours.preprocess_cfg.size == (384, 384)
    assert max_diff(ours.pos_embed.detach(), ref) <= 1e-5
    # without image_size the checkpoint's own grid is used; a mismatching grid is an error, never a silent resample
    assert vitkit.load(tmp_path / "t.safetensors").cfg.image_hw == (224, 224)
    with pytest.raises(ValueError, match="pos_embed has 197 rows"):
        infer_config(theirs.state_dict(), "t", dict(image_size=384))
