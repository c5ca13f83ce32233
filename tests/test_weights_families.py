"""Checkpoints of ViT-family members vitkit does not build are refused with the family and the keys that show it,
not with the list of every key that did not fit."""

import json

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

import vitkit
from vitkit.weights.convert_hf import hf_to_vitkit

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.mark.parametrize("name, kw, family, key", [
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=1), "gated (SwiGLU) MLP packed into fc1",
     "blocks.0.mlp.fc1.weight (1024, 192)"),
    ("vit_base_patch16_224", dict(SMALL, mlp_layer=timm.layers.SwiGLU), "a SwiGLU MLP", "blocks.0.mlp.fc1_g.bias"),
    ("vit_small_resnet26d_224", dict(img_size=64, depth=1), "a hybrid CNN-ViT with another CNN than ResNet-v2",
     "patch_embed.backbone."),
])
def test_timm_checkpoints_of_families_vitkit_does_not_build_name_the_family(tmp_path, name, kw, family, key):
    model = timm.create_model(name, **kw)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError) as e:
        vitkit.load(tmp_path / "m.safetensors")
    msg = str(e.value)
    assert family in msg and key in msg and "which vitkit does not build" in msg
    assert "unexpected keys" not in msg and len(msg) < 500, len(msg)


def test_original_eva02_rope_buffers_are_named(tmp_path):
    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1)
    state = dict(model.state_dict(), **{"rope.freqs_cos": torch.zeros(4, 8), "rope.freqs_sin": torch.zeros(4, 8)})
    torch.save(state, tmp_path / "eva.pth")
    with pytest.raises(ValueError, match=r"EVA-02 \(rotary position embeddings\).*'rope.freqs_cos'"):
        vitkit.load(tmp_path / "eva.pth")


def test_hf_state_with_a_swiglu_mlp_names_the_family(tmp_path):
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                                    patch_size=8, use_swiglu_ffn=True)
    theirs = transformers.Dinov2Model(cfg)
    theirs.save_pretrained(tmp_path)
    state = vitkit.weights.safe_io.read_safetensors(tmp_path / "model.safetensors")
    plain = json.loads(cfg.to_json_string())
    plain["use_swiglu_ffn"] = False  # a config that does not say: the keys still tell
    with pytest.raises(ValueError, match=r"a SwiGLU MLP .*'encoder.layer.0.mlp.weights_in.bias'"):
        hf_to_vitkit(state, plain, "x")
    with pytest.raises(ValueError, match="use_swiglu_ffn"):
        vitkit.load(tmp_path)


def test_a_long_list_of_unfitting_keys_is_cut(tmp_path):
    model = timm.create_model("vit_base_patch16_224", **dict(SMALL, depth=2))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    state.update({f"extra.{i}.weight": torch.zeros(1) for i in range(30)})
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys \[.*\] \(\+18 more\)"):
        vitkit.load(tmp_path / "m.safetensors", heads=2)
