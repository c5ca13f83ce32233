"""Hugging Face transformers checkpoints: parity with transformers' own forward pass on random peers."""

import json

import pytest
import torch
import transformers

import vitkit
from vitkit.weights.convert_hf import hf_to_vitkit

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
             patch_size=8)


def _x(seed=0):
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_vit_for_image_classification_matches_transformers(tmp_path):
    theirs = randomise(transformers.ViTForImageClassification(
        transformers.ViTConfig(**SMALL, num_labels=5, id2label={i: f"c{i}" for i in range(5)}))).eval()
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.norm_eps == 1e-12 and ours.cfg.num_classes == 5 and ours.labels == [f"c{i}" for i in range(5)]
    assert ours.load_info["format"] == "hf" and ours.load_info["ignored_keys"] == []
    x = _x()
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5


def test_deit_with_teacher_matches_transformers(tmp_path):
    theirs = randomise(transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(**SMALL, num_labels=5, layer_norm_eps=1e-6))).eval()
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.distilled and ours.cfg.num_prefix_tokens == 2
    x = _x()
    with torch.no_grad():
        out = theirs(pixel_values=x)
        assert max_diff(ours(x), out.logits) <= 1e-5
        cls, dist = ours.forward_distilled(x)
        assert max_diff(cls, out.cls_logits) <= 1e-5 and max_diff(dist, out.distillation_logits) <= 1e-5


def test_vit_model_pooler_becomes_pre_logits(tmp_path):
    theirs = randomise(transformers.ViTModel(transformers.ViTConfig(**SMALL))).eval()
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.num_classes == 0 and ours.cfg.representation_size == 32
    x = _x()
    with torch.no_grad():
        out = theirs(pixel_values=x)
        assert max_diff(ours.forward_features(x), out.last_hidden_state) <= 1e-5
        assert max_diff(ours(x), out.pooler_output) <= 1e-5


def test_mae_encoder_matches_and_decoder_is_reported(tmp_path):
    cfg = transformers.ViTMAEConfig(**SMALL, mask_ratio=0.0, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                    decoder_num_attention_heads=2, decoder_intermediate_size=32)
    theirs = randomise(transformers.ViTMAEForPreTraining(cfg)).eval()
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    ignored = ours.load_info["ignored_keys"]
    assert ignored and all(k.startswith("decoder.") for k in ignored)
    x = _x()
    noise = torch.arange(16, dtype=torch.float32).expand(2, 16)  # keeps the patch order: no shuffling
    with torch.no_grad():
        ref = theirs.vit(pixel_values=x, noise=noise).last_hidden_state
        assert max_diff(ours.forward_features(x), ref) <= 1e-5


def test_dinov2_encoder_matches(tmp_path):
    theirs = randomise(transformers.Dinov2Model(transformers.Dinov2Config(**SMALL, mlp_ratio=2))).eval()
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.layer_scale_init is not None and ours.cfg.mlp_dim == 64
    assert ours.load_info["ignored_keys"] == ["embeddings.mask_token"]
    x = _x()
    with torch.no_grad():
        assert max_diff(ours.forward_features(x), theirs(pixel_values=x).last_hidden_state) <= 1e-5


def test_round_trip_ours_hf_ours_is_exact_and_transformers_reads_it(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(norm_eps=1e-12, labels=list("abcde")))).eval()
    ours.preprocess_cfg = vitkit.PreprocessConfig(size=32, resize="shortest", crop_pct=0.875, interpolation="bicubic")
    vitkit.save(ours, tmp_path / "hf", format="hf")
    back = vitkit.load(tmp_path / "hf")
    assert same_state(ours, back) and back.cfg == ours.cfg and back.labels == list("abcde")
    assert back.preprocess_cfg == ours.preprocess_cfg
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label[2] == "c"
    x = _x(1)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5


def test_distilled_model_saves_as_deit_with_teacher(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(distilled=True))).eval()
    vitkit.save(ours, tmp_path / "d", format="hf")
    theirs = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path / "d").eval()
    x = _x(2)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5
    assert same_state(ours, vitkit.load(tmp_path / "d"))


def test_hf_writer_refuses_what_transformers_cannot_express(tmp_path):
    model = vitkit.create_model(tiny_cfg(reg_tokens=2, layer_scale_init=1e-5))
    with pytest.raises(ValueError, match="register tokens; LayerScale"):
        vitkit.save(model, tmp_path / "x", format="hf")
    assert not (tmp_path / "x").exists()


def test_sharded_safetensors_folder(tmp_path):
    theirs = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, num_labels=3))).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = vitkit.load(tmp_path)
    x = _x()
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5


def test_pytorch_model_bin_folder(tmp_path):
    theirs = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, num_labels=3))).eval()
    theirs.save_pretrained(tmp_path)
    # the same folder as older hub repositories hold it: pickle weights only
    state = vitkit.weights.safe_io.read_safetensors(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = vitkit.load(tmp_path)
    x = _x()
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5


def test_deit_single_classifier_is_refused_with_a_reason(tmp_path):
    theirs = transformers.DeiTForImageClassification(transformers.DeiTConfig(**SMALL, num_labels=3))
    theirs.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="DeiTForImageClassification"):
        vitkit.load(tmp_path)


def test_unplaced_tensor_is_listed(tmp_path):
    theirs = transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, num_labels=3))
    theirs.save_pretrained(tmp_path)  # the names as files hold them (transformers 5 renames modules in memory)
    state = vitkit.weights.safe_io.read_safetensors(tmp_path / "model.safetensors")
    state["vit.encoder.layer.0.extra.weight"] = torch.zeros(1)
    del state["vit.encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match="layer.1.output.dense.bias"):
        hf_to_vitkit(state, json.loads(theirs.config.to_json_string()), "x")
    state["vit.encoder.layer.1.output.dense.bias"] = torch.zeros(32)
    with pytest.raises(ValueError, match=r"does not know how to place: \['encoder.layer.0.extra.weight'\]"):
        hf_to_vitkit(state, json.loads(theirs.config.to_json_string()), "x")


def test_hf_weights_file_alone_is_refused_with_a_hint(tmp_path):
    theirs = transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, num_labels=3))
    theirs.save_pretrained(tmp_path / "hf")
    state = vitkit.weights.safe_io.read_safetensors(tmp_path / "hf" / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    for f in (tmp_path / "hf" / "model.safetensors", tmp_path / "pytorch_model.bin"):
        with pytest.raises(ValueError, match="load its folder"):
            vitkit.load(f)


def test_pooler_next_to_a_classifier_is_ignored_and_listed(tmp_path):
    theirs = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, num_labels=3))).eval()
    theirs.save_pretrained(tmp_path)
    state = vitkit.weights.safe_io.read_safetensors(tmp_path / "model.safetensors")
    state.update({"vit.pooler.dense.weight": torch.zeros(32, 32), "vit.pooler.dense.bias": torch.zeros(32)})
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    ours = vitkit.load(tmp_path)
    assert ours.load_info["ignored_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert ours.cfg.representation_size is None
    x = _x()
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5
