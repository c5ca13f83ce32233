"""Google .npz: our writer read by timm's own npz loader, and our reader on both namings."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT, _load_weights

import vitkit
from vitkit.weights.convert_npz import CONFIG_KEY
from vitkit.weights.safe_io import read_npz

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state


def _timm_reads(path, x, **kw):
    theirs = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, **kw).eval()
    with torch.no_grad():
        _load_weights(theirs, str(path))
        return theirs(x)


def test_npz_written_by_us_is_read_by_timm_loader(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(representation_size=None))).eval()
    vitkit.save(ours, tmp_path / "m.npz", format="npz")
    arrays = read_npz(tmp_path / "m.npz")
    assert arrays["embedding/kernel"].shape == (8, 8, 3, 32)  # HWIO
    assert arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape == (32, 4, 8)
    assert arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel"].shape == (4, 8, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), _timm_reads(tmp_path / "m.npz", x, num_classes=5)) <= 1e-5
    back = vitkit.load(tmp_path / "m.npz")
    assert same_state(ours, back) and back.cfg == ours.cfg


def test_big_vision_naming_for_patch_only_pos_embed(tmp_path):
    cfg = tiny_cfg(pooling="gap", class_token=False, pos_embed_prefix=False, fc_norm=False)
    ours = randomise(vitkit.create_model(cfg)).eval()
    vitkit.save(ours, tmp_path / "bv.npz", format="npz")
    arrays = read_npz(tmp_path / "bv.npz")
    assert "params/pos_embedding" in arrays and "params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in arrays
    x = torch.randn(2, 3, 32, 32)
    ref = _timm_reads(tmp_path / "bv.npz", x, num_classes=5, class_token=False, global_pool="avg", fc_norm=False,
                      no_embed_class=True)
    with torch.no_grad():
        assert max_diff(ours(x), ref) <= 1e-5
    assert same_state(ours, vitkit.load(tmp_path / "bv.npz"))


def _foreign(arrays):
    """The same arrays as a JAX export holds them: no vitkit config entry."""
    return {k: v for k, v in arrays.items() if k != CONFIG_KEY}


def test_foreign_npz_infers_architecture_and_uses_tanh_gelu(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(representation_size=16)), scale=0.3).eval()  # pre-activations of a size where tanh and erf GELU differ
    vitkit.save(ours, tmp_path / "m.npz", format="npz")
    np.savez(tmp_path / "jax.npz", **_foreign(read_npz(tmp_path / "m.npz")))
    back = vitkit.load(tmp_path / "jax.npz")
    c = back.cfg
    assert (c.width, c.depth, c.heads, c.patch_size, c.image_hw, c.num_classes, c.representation_size) == \
        (32, 2, 4, 8, (32, 32), 5, 16)
    assert c.act == "gelu_tanh" and c.norm_eps == 1e-6 and same_state(ours, back)
    assert back.preprocess_cfg.interpolation == "bilinear" and back.preprocess_cfg.resize == "squash"
    exact = vitkit.load(tmp_path / "jax.npz", act="gelu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(exact(x), ours(x)) <= 1e-6
        assert 0 < max_diff(back(x), ours(x)) < 1e-2  # tanh GELU: close, not equal


def test_scanned_big_vision_layout(tmp_path):
    """big_vision with scan=True stacks every block along a leading depth axis."""
    cfg = tiny_cfg(pos_embed_prefix=False, act="gelu")
    ours = randomise(vitkit.create_model(cfg)).eval()
    vitkit.save(ours, tmp_path / "m.npz", format="npz")
    arrays = _foreign(read_npz(tmp_path / "m.npz"))
    stacked = {k: v for k, v in arrays.items() if "encoderblock_" not in k}
    for k in [k for k in arrays if "encoderblock_0/" in k]:
        rest = k.split("encoderblock_0/")[1]
        stacked[f"params/Transformer/encoderblock/{rest}"] = np.stack(
            [arrays[f"params/Transformer/encoderblock_{i}/{rest}"] for i in range(2)])
    np.savez(tmp_path / "scan.npz", **stacked)
    back = vitkit.load(tmp_path / "scan.npz", act="gelu")
    assert same_state(ours, back) and back.cfg.pos_embed_prefix is False


def test_npz_writer_refuses_what_the_layout_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="LayerScale"):
        vitkit.save(vitkit.create_model(tiny_cfg(layer_scale_init=1e-5)), tmp_path / "x.npz", format="npz")
    with pytest.raises(ValueError, match="must end in .npz"):
        vitkit.save(vitkit.create_model(tiny_cfg()), tmp_path / "x.bin", format="npz")
    assert list(tmp_path.iterdir()) == []


def test_unknown_npz_arrays_are_listed(tmp_path):
    ours = vitkit.create_model(tiny_cfg())
    vitkit.save(ours, tmp_path / "m.npz", format="npz")
    arrays = _foreign(read_npz(tmp_path / "m.npz"))
    arrays["Transformer/encoderblock_0/Extra/kernel"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "extra.npz", **arrays)
    with pytest.raises(ValueError, match=r"\['Transformer/encoderblock_0/Extra/kernel'\]"):
        vitkit.load(tmp_path / "extra.npz")
