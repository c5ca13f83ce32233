"""transformers' ViT / DeiT / ViT-MAE / DINOv2 / BEiT <-> vitkit, option by option: what config.json says (or leaves
out) is read as transformers reads it, each peer option gives the peer's outputs, what vitkit writes back is the folder
transformers itself writes, and every refusal names the file and the reason."""

import json
import re

import pytest
import torch
import transformers

import vitkit
from vitkit.config import MAX_DEPTH, MAX_TOKENS_SIDE, MAX_WIDTH
from vitkit.weights.convert_hf import MODEL_TYPES, config_from_hf, hf_to_vitkit
from vitkit.weights.safe_io import read_safetensors

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
             patch_size=8)
TOL = 1e-4  # fp32; these reach ~1e-6
PEER_CONFIGS = {"vit": transformers.ViTConfig, "deit": transformers.DeiTConfig, "vit_mae": transformers.ViTMAEConfig,
                "dinov2": transformers.Dinov2Config, "beit": transformers.BeitConfig}
FILE = "some/folder/config.json"


def _x(cfg, seed=0):
    h, w = cfg.image_hw
    return torch.randn(2, cfg.channels, h, w, generator=torch.Generator().manual_seed(seed))


def _json(peer_cfg) -> dict:
    """A transformers config as its config.json holds it."""
    return json.loads(peer_cfg.to_json_string())


def _read(folder):
    return json.loads((folder / "config.json").read_text()), read_safetensors(folder / "model.safetensors")


def _summary(cfg):
    return None if cfg is None else (cfg, cfg.image_hw, cfg.mlp_dim, cfg.qkv_bias_parts, cfg.layer_scale_init)


# --- reading: what config.json leaves out ------------------------------------------------------------------------

# every field differs from transformers' default, so that leaving one out changes the model
NON_DEFAULT = dict(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96, image_size=112,
                   patch_size=8, num_channels=1, hidden_act="gelu_new", layer_norm_eps=1e-5)
PER_TYPE = {"vit": dict(qkv_bias=False), "deit": dict(qkv_bias=False), "vit_mae": dict(qkv_bias=False),
            "dinov2": dict(qkv_bias=False, mlp_ratio=2, layerscale_value=0.5),
            "beit": dict(use_relative_position_bias=True, use_absolute_position_embeddings=True,
                         use_mean_pooling=False, layer_scale_init_value=0.3)}
OMITTABLE = [(mt, key) for mt in MODEL_TYPES for key in [*NON_DEFAULT, *PER_TYPE[mt], "use_shared_relative_position_bias"]
             if key in PEER_CONFIGS[mt]().to_dict()]


@pytest.mark.parametrize("mt, key", OMITTABLE, ids=[f"{mt}-{key}" for mt, key in OMITTABLE])
def test_config_from_hf_takes_the_peers_default_for_each_field_config_json_leaves_out(mt, key):
    full = _json(PEER_CONFIGS[mt](**{k: v for k, v in {**NON_DEFAULT, **PER_TYPE[mt]}.items()
                                     if k != "intermediate_size" or mt != "dinov2"}))
    default = PEER_CONFIGS[mt]().to_dict()[key]  # what transformers builds when the field is not there

    def read(cfg):
        try:
            c, labels = config_from_hf(cfg, FILE)
        except ValueError as e:  # e.g. the default's heads do not divide the width: both refuse
            return str(e).split(":")[0]
        return _summary(c), labels

    assert read({k: v for k, v in full.items() if k != key}) == read({**full, key: default})


# --- reading: refusals and their bounds --------------------------------------------------------------------------

def _cfg(**kw):
    return {"model_type": "vit", **SMALL, **kw}


@pytest.mark.parametrize("kw", [
    dict(hidden_size=1, num_attention_heads=1, intermediate_size=1, patch_size=1, image_size=1, num_channels=1),
    dict(hidden_size=8, num_attention_heads=8),  # one dimension per head
    dict(num_hidden_layers=MAX_DEPTH),
    dict(hidden_size=MAX_WIDTH, num_attention_heads=64, num_hidden_layers=1, intermediate_size=MAX_WIDTH),
    dict(intermediate_size=64 * 32),
    dict(patch_size=2, image_size=2 * MAX_TOKENS_SIDE), dict(patch_size=1, image_size=[MAX_TOKENS_SIDE, 1]),
    dict(patch_size=4096, image_size=4096), dict(patch_size=1, image_size=1, num_channels=4096),
    dict(model_type="dinov2", mlp_ratio=1), dict(model_type="dinov2", mlp_ratio=0.5),
    dict(model_type="dinov2", mlp_ratio=64),
    dict(layer_norm_eps=0.5),
    dict(model_type="beit", layer_scale_init_value=999.0),
], ids=str)
def test_config_from_hf_accepts_each_field_up_to_its_bounds(kw):
    cfg, _ = config_from_hf(_cfg(**kw), FILE)
    assert cfg.width == kw.get("hidden_size", 32) and cfg.depth == kw.get("num_hidden_layers", 2)
    assert cfg.patch_size == kw.get("patch_size", 8) and cfg.channels == kw.get("num_channels", 3)
    size = kw.get("image_size", 32)
    assert cfg.image_hw == (tuple(size) if isinstance(size, list) else (size, size))
    if "mlp_ratio" in kw:
        assert cfg.mlp_ratio == kw["mlp_ratio"]
    if "intermediate_size" in kw:
        assert cfg.mlp_dim == kw["intermediate_size"]


@pytest.mark.parametrize("key, bad", [
    ("hidden_size", 0), ("hidden_size", MAX_WIDTH + 1), ("hidden_size", True), ("hidden_size", "32"),
    ("num_hidden_layers", 0), ("num_hidden_layers", MAX_DEPTH + 1), ("num_hidden_layers", True),
    ("num_hidden_layers", 2.0),
    ("num_attention_heads", 0), ("num_attention_heads", 33), ("num_attention_heads", False),
    ("patch_size", 0), ("patch_size", 4097), ("patch_size", "8"),
    ("num_channels", 0), ("num_channels", 4097), ("num_channels", True), ("num_channels", 3.0),
    ("intermediate_size", 0), ("intermediate_size", 64 * 32 + 1), ("intermediate_size", "64"),
])
def test_config_from_hf_refuses_an_integer_field_out_of_range_naming_file_and_field(key, bad):
    with pytest.raises(ValueError, match=re.escape(f"{FILE}: field {key!r} must be an integer in [")):
        config_from_hf(_cfg(**{key: bad}), FILE)


@pytest.mark.parametrize("kw, field", [
    *[(dict(image_size=v), "image_size") for v in (None, "32", 32.0, 0, [32, 32, 32], [32], [32, "32"],
                                                     [32.0, 32.0], [0, 32], 8 * MAX_TOKENS_SIDE + 8, {"h": 32})],
    *[(dict(model_type="dinov2", mlp_ratio=v), "mlp_ratio") for v in (0, -1, 64.5, 65, "4", None)],
    *[(dict(layer_norm_eps=v), "layer_norm_eps") for v in (0, 1, 1.5, -1e-6, "1e-6", None)],
    *[(dict(model_type="beit", layer_scale_init_value=v), "layer_scale_init_value")
      for v in (-1, -0.5, 1000, 1000.5, True, "0.1", None)],
    *[(dict(model_type="beit", **{k: v}), k) for k in ("use_relative_position_bias", "use_mean_pooling")
      for v in (1, "true", None)],
])
def test_config_from_hf_refuses_a_bad_field_naming_file_and_field(kw, field):
    with pytest.raises(ValueError, match=re.escape(f"{FILE}: field {field!r} must be")):
        config_from_hf(_cfg(**kw), FILE)


def test_config_from_hf_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match=re.escape(f"{FILE}: hidden_act 'relu' is not supported")):
        config_from_hf(_cfg(hidden_act="relu"), FILE)


@pytest.mark.parametrize("id2label, want", [
    (None, None), ({}, None), (["a", "b"], None), ({"0": "a", "1": "b", "5": "c"}, None),
    ({"1": "b", "0": "a"}, ["a", "b"]),
])
def test_config_from_hf_reads_class_names_only_when_they_name_classes_0_to_n(id2label, want):
    cfg = {"model_type": "vit", **SMALL}
    if id2label is not None:
        cfg["id2label"] = id2label
    assert config_from_hf(cfg, FILE)[1] == want


# --- writing: what transformers cannot express ------------------------------------------------------------------

@pytest.mark.parametrize("kw, why", [
    (dict(pos_embed="sincos2d"), "a position embedding that is not learned or has no row for the prefix tokens"),
    (dict(pos_embed_prefix=False), "a position embedding that is not learned or has no row for the prefix tokens"),
    (dict(patch_bias=False), "no patch-embedding bias"),
    (dict(qk_norm=True), "qk-norm"),
    (dict(norm_pre=True), "norm_pre (CLIP's LayerNorm before the blocks)"),
    (dict(pooling="map", fc_norm=False, class_token=True), "an attention-pooling head (SigLIP)"),
    (dict(stem="hybrid", hybrid_layers=(), patch_size=1), "a hybrid CNN stem (transformers' ViTHybrid is another "
                                                          "class, not read here)"),
    (dict(layer_scale_init=1e-5), "LayerScale"),
    (dict(pooling="gap", fc_norm=False), "pooling other than the [CLS] token"),
    (dict(fc_norm=True), "fc_norm"),
    (dict(num_classes=0, representation_size=16),
     "a pre-logits layer with a classifier (only a bare ViTModel's width x width pooler can hold one)"),
    (dict(representation_size=32),
     "a pre-logits layer with a classifier (only a bare ViTModel's width x width pooler can hold one)"),
    (dict(num_classes=0, distilled=True, representation_size=32),
     "a pre-logits layer with a classifier (only a bare ViTModel's width x width pooler can hold one)"),
    # BEiT blocks
    (dict(qkv_bias="qv", layer_scale_init=0.0), "LayerScale initialised at 0 (transformers reads 0 as none)"),
    (dict(qkv_bias="qv", qk_norm=True), "qk-norm"),
    (dict(qkv_bias="qv", distilled=True), "a distillation token"),
    (dict(rel_pos="per_block"), "a k bias, or no q/v bias"),
    (dict(qkv_bias="qv", pooling="gap", fc_norm=False), "fc_norm other than with mean pooling"),
    (dict(qkv_bias="qv", representation_size=32), "a pre-logits layer"),
], ids=lambda v: None if isinstance(v, dict) else v[:30])
def test_hf_writer_refuses_each_thing_transformers_cannot_express_by_name(tmp_path, kw, why):
    model = vitkit.create_model(tiny_cfg(**kw))
    with pytest.raises(ValueError, match=re.escape("cannot express this model: it has ") + "(.*; )?"
                       + re.escape(why) + r"[.;] "):
        vitkit.save(model, tmp_path / "x", format="hf")
    assert not (tmp_path / "x").exists()


# --- reading: each option the peer's config sets, and the refusals of whole files ---------------------------------

def _vit_state(tmp_path):
    theirs = transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, num_labels=3))
    theirs.save_pretrained(tmp_path)
    return _read(tmp_path)


@pytest.mark.parametrize("spoil, message", [
    (lambda c, s: c.update(hidden_size="32"), "field 'hidden_size' must be an integer"),
    (lambda c, s: c.update(model_type="beit", use_mean_pooling="yes"), "field 'use_mean_pooling' must be"),
    (lambda c, s: s.pop("vit.encoder.layer.1.output.dense.bias"),
     "required tensor 'encoder.layer.1.output.dense.bias' is missing"),
    (lambda c, s: s.update({"vit.layernorm.weight": torch.zeros(16)}), "the weights do not fit the model"),
    (lambda c, s: s.update({"vit.encoder.layer.0.mlp.weights_in.weight": torch.zeros(4, 4)}), "a SwiGLU MLP"),
], ids=["config", "beit-flag", "missing", "shape", "family"])
def test_hf_to_vitkit_names_the_weights_file_in_each_refusal(tmp_path, spoil, message):
    cfg, state = _vit_state(tmp_path)
    spoil(cfg, state)
    with pytest.raises(ValueError, match=re.escape("the/model.safetensors: ") + ".*" + re.escape(message)):
        hf_to_vitkit(state, cfg, "the/model.safetensors")


def test_pooler_tensors_in_a_file_without_a_pooler_are_refused_not_dropped(tmp_path):
    transformers.Dinov2Model(transformers.Dinov2Config(**SMALL)).save_pretrained(tmp_path)
    cfg, state = _read(tmp_path)
    state.update({"pooler.dense.weight": torch.zeros(32, 32), "pooler.dense.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match=re.escape("does not know how to place: ['pooler.dense.bias'")):
        hf_to_vitkit(state, cfg, "x")


@pytest.mark.parametrize("peer, kw, want", [
    ("ViTModel", dict(num_channels=1), dict(channels=1)),
    ("ViTModel", dict(image_size=[32, 48]), dict(image_hw=(32, 48))),
    ("ViTModel", dict(qkv_bias=False), dict(qkv_bias_parts="")),
    ("ViTModel", dict(hidden_act="gelu_new", layer_norm_eps=1e-5), dict(act="gelu_tanh", norm_eps=1e-5)),
    ("ViTModel", dict(pooler_output_size=16), dict(representation_size=16)),
    ("ViTForImageClassification", dict(image_size=96, patch_size=16, num_labels=3), dict(num_classes=3)),
    ("DeiTModel", {}, dict(distilled=True, representation_size=32)),
    ("Dinov2Model", dict(layerscale_value=0.5, mlp_ratio=2), dict(layer_scale_init=0.5, mlp_dim=64, norm_eps=1e-6)),
    ("BeitModel", dict(use_relative_position_bias=False, use_shared_relative_position_bias=False,
                       use_absolute_position_embeddings=True, use_mean_pooling=False, layer_scale_init_value=0.2),
     dict(rel_pos="none", pos_embed="learned", pooling="cls", layer_scale_init=0.2)),
    ("BeitModel", dict(use_shared_relative_position_bias=True, layer_scale_init_value=0.0),
     dict(rel_pos="shared", pos_embed="none", pooling="gap", layer_scale_init=None)),
])
def test_peer_models_with_each_option_load_with_the_peers_config_and_outputs(tmp_path, peer, kw, want):
    cls = getattr(transformers, peer)
    theirs = randomise(cls(cls.config_class(**{**SMALL, **kw})))
    theirs.eval().save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert {k: getattr(ours.cfg, k) for k in want} == want
    x = _x(ours.cfg)
    with torch.no_grad():
        out = theirs(pixel_values=x)
        if hasattr(out, "logits"):
            assert max_diff(ours(x), out.logits) <= TOL
            return
        feats = ours.forward_features(x)
        if ours.cfg.pooling == "cls":  # with mean pooling BEiT's last_hidden_state has no final norm
            assert max_diff(feats, out.last_hidden_state) <= TOL
        if getattr(out, "pooler_output", None) is not None:
            assert max_diff(ours.forward_head(feats, pre_logits=True), out.pooler_output) <= TOL


def test_vit_model_saved_without_its_pooler_loads_as_a_bare_encoder(tmp_path):
    theirs = randomise(transformers.ViTModel(transformers.ViTConfig(**SMALL), add_pooling_layer=False)).eval()
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.representation_size is None and ours.cfg.num_classes == 0
    x = _x(ours.cfg)
    with torch.no_grad():
        assert max_diff(ours.forward_features(x), theirs(pixel_values=x).last_hidden_state) <= TOL


def test_a_pooler_with_another_activation_than_tanh_is_refused(tmp_path):
    theirs = transformers.ViTModel(transformers.ViTConfig(**SMALL, pooler_act="relu"))
    theirs.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pooler_act 'relu'"):
        vitkit.load(tmp_path)


def test_dinov2_for_image_classification_is_refused_with_a_reason(tmp_path):
    transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**SMALL, num_labels=3)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Dinov2ForImageClassification's classifier reads"):
        vitkit.load(tmp_path)


def test_class_names_that_do_not_cover_every_class_are_dropped(tmp_path):
    names = {0: "a", 1: "b", 5: "c"}  # three classes, but class 2 has no name
    theirs = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL, id2label=names)))
    theirs.eval().save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.num_classes == 3 and ours.labels is None
    x = _x(ours.cfg)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= TOL


# --- writing: back to the folder transformers writes -------------------------------------------------------------

# keys transformers' own config.json holds that vitkit leaves to transformers' defaults (heads vitkit does not build)
PEER_ONLY_KEYS = {"transformers_version", "pooler_act", "pooler_output_size", "vocab_size", "use_auxiliary_head",
                  "auxiliary_loss_weight", "auxiliary_channels", "auxiliary_num_convs", "auxiliary_concat_input",
                  "semantic_loss_ignore_index", "out_features", "out_indices", "pool_scales", "add_fpn",
                  "reshape_hidden_states", "stage_names"}
# what vitkit writes out in full rather than leave to a reader's defaults (which differ by version and class)
SPELLED_OUT = {"hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "dtype", "image_size",
               "num_channels", "hidden_act", "layer_norm_eps", "intermediate_size", "architectures", "model_type"}


@pytest.mark.parametrize("peer, kw, extra", [
    ("ViTForImageClassification", dict(id2label={i: f"c{i}" for i in range(5)},
                                       label2id={f"c{i}": i for i in range(5)}), {}),
    ("ViTForImageClassification", dict(image_size=[32, 48], num_channels=1, hidden_act="gelu_pytorch_tanh",
                                       qkv_bias=False, layer_norm_eps=1e-6, num_labels=3), {}),
    ("ViTModel", {}, {}),
    ("ViTModel", {}, dict(add_pooling_layer=False)),
    ("DeiTForImageClassificationWithTeacher", dict(num_labels=3), {}),
    ("DeiTModel", {}, dict(add_pooling_layer=False)),
    ("BeitForImageClassification", dict(use_shared_relative_position_bias=True, use_mean_pooling=True,
                                        layer_scale_init_value=0.1, num_labels=3), {}),
    ("BeitModel", dict(use_relative_position_bias=True, use_absolute_position_embeddings=True,
                       use_mean_pooling=False, layer_scale_init_value=0.0), {}),
    ("BeitModel", dict(use_absolute_position_embeddings=True, use_mean_pooling=True, layer_scale_init_value=0.2), {}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_transformers_folder_read_and_written_back_is_the_folder_transformers_writes(tmp_path, peer, kw, extra):
    cls = getattr(transformers, peer)
    mt = cls.config_class.model_type
    # what vitkit means by the model: no dropout or drop path, an MIM decoder's stride equal to the patch size
    kw = {**SMALL, **({"drop_path_rate": 0.0} if mt == "beit" else {"encoder_stride": 8}), **kw}
    theirs = randomise(cls(cls.config_class(**kw), **extra)).eval()
    theirs.save_pretrained(tmp_path / "peer")
    ours = vitkit.load(tmp_path / "peer")
    vitkit.save(ours, tmp_path / "ours", format="hf")
    (peer_cfg, peer_state), (our_cfg, our_state) = _read(tmp_path / "peer"), _read(tmp_path / "ours")
    # the same tensors under the same names
    assert sorted(our_state) == sorted(peer_state)
    assert all(torch.equal(our_state[k], peer_state[k]) for k in peer_state)
    # the same config: every field vitkit writes is one transformers writes, with its value
    our_cfg.pop("vitkit", None)
    assert set(our_cfg) - set(peer_cfg) == set() and set(peer_cfg) - set(our_cfg) <= PEER_ONLY_KEYS
    assert SPELLED_OUT <= set(our_cfg)
    assert {k: our_cfg[k] for k in peer_cfg if k in our_cfg} == {k: peer_cfg[k] for k in peer_cfg if k in our_cfg}
    # transformers reads what vitkit wrote into the same model, which computes what vitkit's does (training too)
    again, info = cls.from_pretrained(tmp_path / "ours", output_loading_info=True, **extra)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert again.config.label2id == {n: i for i, n in again.config.id2label.items()}
    assert getattr(again.config, "drop_path_rate", 0.0) == 0.0
    x = _x(ours.cfg, 1)
    for train in (False, True):
        again.train(train), ours.train(train)
        with torch.no_grad():
            out = again(pixel_values=x)
            mine = ours(x) if hasattr(out, "logits") else ours.forward_head(ours.forward_features(x), pre_logits=True)
            ref = out.logits if hasattr(out, "logits") else \
                out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
            assert max_diff(mine, ref) <= TOL
    assert same_state(ours, vitkit.load(tmp_path / "ours")) and vitkit.load(tmp_path / "ours").cfg == ours.cfg


def test_a_vit_written_for_masked_image_modeling_reconstructs_at_the_input_size(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(num_classes=0))).eval()
    vitkit.save(ours, tmp_path / "hf", format="hf")
    mim = transformers.ViTForMaskedImageModeling.from_pretrained(tmp_path / "hf").eval()
    x = _x(ours.cfg)
    with torch.no_grad():
        assert mim(pixel_values=x).reconstruction.shape == x.shape
