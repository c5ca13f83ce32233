"""CLIP's vision tower (norm_pre) and SigLIP's (attention-pooling head): timm's state dicts read with parity
and written back."""

import pytest
import timm
import torch
from safetensors.torch import save_file

import vitkit
from vitkit import ViTConfig

from weights_helpers import max_diff, randomise

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)


def _timm(name, **kw):
    torch.manual_seed(0)
    return randomise(timm.create_model(name, **dict(TINY, **kw))).eval()


@pytest.mark.parametrize("name, kw, check", [
    ("vit_base_patch16_clip_224", {}, lambda c: c.norm_pre and c.norm_eps == 1e-5 and not c.patch_bias),
    ("vit_base_patch16_siglip_224", {}, lambda c: c.pooling == "map" and not c.class_token),
    ("vit_base_patch16_siglip_224", dict(reg_tokens=2, qk_norm=True), lambda c: c.reg_tokens == 2 and c.qk_norm),
    ("vit_base_patch16_clip_224", dict(global_pool="map", class_token=False),
     lambda c: c.norm_pre and c.pooling == "map"),
])
def test_timm_towers_load_with_parity_and_save_back(tmp_path, name, kw, check):
    theirs = _timm(name, **kw)
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "m.safetensors")
    ours = vitkit.load(tmp_path / "m.safetensors", heads=2)
    assert check(ours.cfg), ours.cfg
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        d = max_diff(ours(x), theirs(x))
        assert d <= 1e-4, d
        assert max_diff(ours(x, attn_impl="plain"), theirs(x)) <= 1e-4
        assert max_diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                        theirs.forward_head(theirs.forward_features(x), pre_logits=True)) <= 1e-4
    # the state dict counted by the config
    assert ours.cfg.num_params() == sum(p.numel() for p in ours.parameters()) == \
        sum(p.numel() for p in theirs.parameters())
    # back to timm: a state dict file timm loads strictly, and a hub folder timm rebuilds
    vitkit.save(ours, tmp_path / "back.safetensors", format="timm")
    again = _timm(name, **kw)
    from safetensors.torch import load_file
    again.load_state_dict(load_file(tmp_path / "back.safetensors"), strict=True)
    vitkit.save(ours, tmp_path / "folder", format="timm")
    rebuilt = timm.create_model("local-dir:" + str(tmp_path / "folder"), pretrained=True).eval()
    with torch.no_grad():
        assert max_diff(again(x), theirs(x)) == 0
        assert max_diff(rebuilt(x), theirs(x)) <= 1e-6
        assert max_diff(vitkit.load(tmp_path / "folder")(x), theirs(x)) <= 1e-6  # timm's folder read back
    # and vitkit's own folder round trip
    vitkit.save(ours, tmp_path / "vk")
    with torch.no_grad():
        assert max_diff(vitkit.load(tmp_path / "vk")(x), ours(x)) == 0


def test_flops_and_params_count_the_new_parts():
    base = dict(image_size=32, patch_size=8, width=32, depth=1, heads=2, num_classes=3)
    plain = ViTConfig(**base)
    clip = ViTConfig(**base, norm_pre=True)
    siglip = ViTConfig(**base, pooling="map", class_token=False)
    assert clip.num_params() == plain.num_params() + 2 * 32
    assert siglip.flops() > ViTConfig(**base, pooling="gap", class_token=False).flops()
    for cfg in (clip, siglip):
        assert cfg.num_params() == sum(p.numel() for p in vitkit.create_model(cfg).parameters())


def test_map_pooling_refuses_a_distillation_token_and_other_peers_refuse_it(tmp_path):
    with pytest.raises(ValueError, match="distilled"):
        ViTConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2, pooling="map", distilled=True)
    m = vitkit.create_model(ViTConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2, num_classes=3,
                                      pooling="map", class_token=False))
    with pytest.raises(ValueError, match="attention-pooling"):
        vitkit.save(m, tmp_path / "hf", format="hf")
    with pytest.raises(ValueError, match="attention-pooling"):
        vitkit.save(m, tmp_path / "m.npz", format="npz")


@pytest.mark.parametrize("name", ["vit_base_patch16_clip_224", "vit_base_patch16_siglip_224"])
def test_tower_names_build_what_timm_builds(name):
    ours = vitkit.parse_model_name(name).replace(num_classes=0)
    with torch.device("meta"):
        theirs = timm.create_model(name, num_classes=0)
        mine = vitkit.create_model(ours)
    assert {k: tuple(v.shape) for k, v in mine.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())


def test_pooling_overrides_that_contradict_the_head_are_refused(tmp_path):
    save_file({k: v.contiguous() for k, v in _timm("vit_base_patch16_siglip_224").state_dict().items()},
              tmp_path / "siglip.safetensors")
    with pytest.raises(ValueError, match="attention-pooling head"):
        vitkit.load(tmp_path / "siglip.safetensors", heads=2, pooling="gap")
    save_file({k: v.contiguous() for k, v in _timm("vit_base_patch16_clip_224").state_dict().items()},
              tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match="pooling='map' needs an attention-pooling head"):
        vitkit.load(tmp_path / "clip.safetensors", heads=2, pooling="map")
