"""The key check every reader goes through: expected shapes from the model built on the meta device."""

import time

import pytest
import torch

import vitkit
from vitkit.weights.checks import check_state, expected_shapes

from helpers import tiny_cfg


@pytest.mark.parametrize("kw", [
    dict(rel_pos="per_block", qkv_bias="qv", pooling="gap", pos_embed="none", layer_scale_init=0.1),
    dict(rel_pos="shared", image_size=(32, 48), qk_norm=True),
    dict(distilled=True, representation_size=16, qkv_bias=False),
])
def test_expected_shapes_are_the_built_models_and_the_count_is_the_configs(kw):
    model = vitkit.create_model(tiny_cfg(**kw))
    state = model.state_dict()
    assert expected_shapes(model.cfg) == {k: tuple(v.shape) for k, v in state.items()}
    assert sum(p.numel() for p in model.parameters()) == model.cfg.num_params()
    check_state(state, model.cfg, "x")


def test_a_config_near_the_limit_costs_no_memory_and_one_past_it_is_refused_before_building():
    cfg = vitkit.ViTConfig(width=8192, depth=48, heads=64, rel_pos="shared", qkv_bias="qv")  # ~39B parameters
    t = time.perf_counter()
    shapes = expected_shapes(cfg)  # 155 GB in fp32 if anything were allocated
    assert time.perf_counter() - t < 5 and shapes["blocks.47.mlp.fc1.weight"] == (4 * 8192, 8192)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == cfg.num_params()
    cfg.depth = 200  # a config changed after its checks: refused when the model is built, before any tensor
    with pytest.raises(ValueError, match="B parameters .* is refused"):
        expected_shapes(cfg)


def test_unexpected_and_missing_keys_are_named():
    cfg = tiny_cfg(rel_pos="per_block")
    state = vitkit.create_model(cfg).state_dict()
    state["blocks.0.attn.k_bias"] = state.pop("blocks.1.attn.relative_position_bias_table")
    with pytest.raises(ValueError, match=r"missing keys \['blocks.1.attn.relative_position_bias_table'\]; "
                                         r"unexpected keys \['blocks.0.attn.k_bias'\]"):
        check_state(state, cfg, "x")
