"""The peers the bench builds are the same model: same parameter count, same outputs on the same weights."""

import os

import pytest
import torch

from vitkit import VisionTransformer
from vitkit.bench.peers import build_peer, copy_weights
from vitkit.bench.runner import randomise

from helpers import tiny_cfg

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TIMM_CFGS = {
    "cls": tiny_cfg(),
    "gap_reg_ls": tiny_cfg(pooling="gap", class_token=False, reg_tokens=4, pos_embed_prefix=False,
                           layer_scale_init=1e-2),
    "distilled": tiny_cfg(distilled=True),
    "tanh_eps12_nobias": tiny_cfg(act="gelu_tanh", norm_eps=1e-12, qkv_bias=False),
    "rect": tiny_cfg(image_size=(32, 48)),
    "clip": tiny_cfg(norm_pre=True, patch_bias=False, norm_eps=1e-5),
    "siglip": tiny_cfg(pooling="map", class_token=False),
}
HF_CFGS = {"cls": tiny_cfg(), "tanh_eps12": tiny_cfg(act="gelu_tanh", norm_eps=1e-12),
           "nobias": tiny_cfg(qkv_bias=False)}


def _same(peer_name, cfg):
    ours = randomise(VisionTransformer(cfg), seed=3).eval()
    peer = build_peer(peer_name, cfg)
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters()) == cfg.num_params()
    copy_weights(peer_name, peer, ours.state_dict())
    peer.eval()
    h, w = cfg.image_hw
    x = torch.randn(3, cfg.channels, h, w)
    with torch.no_grad():
        a, b = ours(x), peer(x)
    assert a.shape == b.shape == (3, cfg.num_classes)
    assert a.abs().max() > 1e-3  # not trivially zero
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("name", list(TIMM_CFGS))
def test_timm_peer_is_the_same_model(name):
    _same("timm", TIMM_CFGS[name])


@pytest.mark.parametrize("name", list(HF_CFGS))
def test_hf_peer_is_the_same_model(name):
    _same("hf", HF_CFGS[name])


def test_weight_copy_really_moves_weights():
    # without the copy the outputs differ: the comparison above is not vacuous
    cfg = tiny_cfg()
    ours = randomise(VisionTransformer(cfg), seed=3).eval()
    peer = build_peer("hf", cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max() > 1e-3


@pytest.mark.parametrize("peer,cfg,needle", [
    ("timm", tiny_cfg(pos_embed="sincos2d"), "sincos2d"),
    ("timm", tiny_cfg(representation_size=16), "representation_size"),
    ("timm", tiny_cfg(norm_pre=True), "norm_pre=True"),
    ("hf", tiny_cfg(pooling="gap", class_token=False), "pooling='gap'"),
    ("hf", tiny_cfg(reg_tokens=2), "register tokens"),
    ("hf", tiny_cfg(layer_scale_init=0.1), "LayerScale"),
])
def test_peer_refuses_what_it_cannot_express(peer, cfg, needle):
    with pytest.raises(ValueError, match="cannot express") as e:
        build_peer(peer, cfg)
    assert needle in str(e.value)


def test_unknown_peer():
    with pytest.raises(ValueError, match="unknown peer 'jax'"):
        build_peer("jax", tiny_cfg())


def test_hf_copy_reports_missing_keys():
    cfg = tiny_cfg()
    state = VisionTransformer(cfg).state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.weight"):
        copy_weights("hf", build_peer("hf", cfg), state)
