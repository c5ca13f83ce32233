"""vitkit's own folder through vitkit.load: exact round trips, preprocessing kept, fixed buffers rebuilt."""

import torch

import vitkit

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state


def test_round_trip_with_sincos_and_preprocess(tmp_path):
    model = randomise(vitkit.create_model(tiny_cfg(pos_embed="sincos2d", pooling="gap", class_token=False))).eval()
    model.preprocess_cfg = vitkit.PreprocessConfig(size=32, interpolation="bicubic")
    vitkit.save(model, tmp_path / "m")
    back = vitkit.load(tmp_path / "m")
    assert same_state(model, back) and back.cfg == model.cfg and back.preprocess_cfg == model.preprocess_cfg
    assert torch.equal(back.pos_embed, model.pos_embed)  # a non-saved buffer, recomputed at load
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(back(x), model(x)) == 0


def test_load_at_another_size_updates_preprocess(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    model.preprocess_cfg = vitkit.PreprocessConfig(size=32)
    vitkit.save(model, tmp_path / "m")
    big = vitkit.load(tmp_path / "m", image_size=64)
    assert big.preprocess_cfg.size == (64, 64) and big.cfg.grid_size == (8, 8)
    assert big.load_info["format"] == "vitkit"


def test_beit_round_trip_rebuilds_the_relative_position_index_and_resamples_at_another_size(tmp_path):
    cfg = tiny_cfg(rel_pos="per_block", qkv_bias="qv", pooling="gap", pos_embed="none", layer_scale_init=0.1)
    model = randomise(vitkit.create_model(cfg)).eval()
    vitkit.save(model, tmp_path / "m")
    back = vitkit.load(tmp_path / "m")
    assert same_state(model, back) and back.cfg == model.cfg
    assert torch.equal(back.rel_pos_bias.relative_position_index, model.rel_pos_bias.relative_position_index)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(back(x), model(x)) == 0
    big = vitkit.load(tmp_path / "m", image_size=48)  # the tables resampled at load = set_image_size
    model.set_image_size(48)
    assert same_state(model, big)
    with torch.no_grad():
        x = torch.randn(2, 3, 48, 48)
        assert max_diff(big(x), model(x)) <= 1e-6
