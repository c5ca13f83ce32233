"""transformers' ViTMAEForPreTraining <-> vitkit's MAE (weights/convert_hf_mae.py): each option of a ViTMAEConfig
read as transformers has it (and its defaults), each bad value refused naming the file and the field, the decoder
of a file checked key by key, and every encoder option an MAE can have written so that transformers reads back
the same config and the same outputs."""

import json
import re

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import vitkit
from vitkit.config import MAX_WIDTH
from vitkit.ssl import MAE, mae_sincos_pos_embed, read_hf_mae, write_hf_mae
from vitkit.weights.convert_hf_mae import hf_mae_to_vitkit, mae_settings_from_hf, vitkit_mae_to_hf

from helpers import tiny_cfg
from weights_helpers import mae_same_outputs, randomise

HF_SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                decoder_intermediate_size=32)
DEC = dict(decoder_width=16, decoder_depth=1, decoder_heads=2)


def _x(seed=0, c=3):
    return torch.randn(2, c, 32, 32, generator=torch.Generator().manual_seed(seed))


def _noise(seed=0):
    return torch.rand(2, 16, generator=torch.Generator().manual_seed(seed))


def _settings_of(c: transformers.ViTMAEConfig) -> dict:
    """The MAE keyword arguments a transformers ViTMAEConfig describes, read off transformers' own object."""
    return dict(decoder_width=c.decoder_hidden_size, decoder_depth=c.decoder_num_hidden_layers,
                decoder_heads=c.decoder_num_attention_heads,
                decoder_mlp_ratio=c.decoder_intermediate_size / c.decoder_hidden_size, mask_ratio=c.mask_ratio,
                norm_pix_loss=c.norm_pix_loss, decoder_norm_eps=c.layer_norm_eps)


def _hf_mae(folder, **kw):
    """A random ViTMAEForPreTraining saved by transformers in ``folder``, its fixed positions MAE's sin-cos."""
    c = transformers.ViTMAEConfig(**{**HF_SMALL, **kw})
    theirs = randomise(transformers.ViTMAEForPreTraining(c)).eval()
    grid = c.image_size // c.patch_size
    with torch.no_grad():
        theirs.vit.embeddings.position_embeddings.copy_(mae_sincos_pos_embed((grid, grid), c.hidden_size, 1))
        theirs.decoder.decoder_pos_embed.copy_(mae_sincos_pos_embed((grid, grid), c.decoder_hidden_size, 1))
    theirs.save_pretrained(folder)
    return theirs


def _edit_weights(folder, edit):
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


# --- the settings of a ViTMAEConfig -------------------------------------------------------------

SETTINGS_OPTIONS = [
    {}, dict(decoder_num_attention_heads=4), dict(decoder_num_attention_heads=1), dict(decoder_intermediate_size=48),
    dict(decoder_hidden_size=24, decoder_num_attention_heads=3, decoder_intermediate_size=72),
    dict(decoder_num_hidden_layers=3), dict(mask_ratio=0.5), dict(mask_ratio=0.0), dict(norm_pix_loss=True),
    dict(layer_norm_eps=1e-5), dict(layer_norm_eps=1e-6, mask_ratio=0.9, norm_pix_loss=True),
]


@pytest.mark.parametrize("kw", SETTINGS_OPTIONS)
def test_settings_from_hf_read_each_option_the_hf_config_sets(kw):
    c = transformers.ViTMAEConfig(**{**HF_SMALL, **kw})
    got = mae_settings_from_hf(c.to_dict(), "config.json")
    assert got == _settings_of(c)
    assert isinstance(got["mask_ratio"], float) and isinstance(got["decoder_norm_eps"], float)


@pytest.mark.parametrize("drop", [
    ["decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_intermediate_size",
     "mask_ratio", "norm_pix_loss", "layer_norm_eps"],
    ["mask_ratio", "norm_pix_loss", "layer_norm_eps"]])
def test_settings_from_hf_default_as_transformers_does_for_the_fields_a_config_leaves_out(drop):
    """A config.json without a field gets ViTMAEConfig's default for it (ViT-MAE's 512-wide, 8-block decoder)."""
    cfg = {k: v for k, v in transformers.ViTMAEConfig(**HF_SMALL).to_dict().items() if k not in drop}
    assert mae_settings_from_hf(cfg, "config.json") == _settings_of(transformers.ViTMAEConfig.from_dict(cfg))
    assert mae_settings_from_hf({"model_type": "vit_mae"}, "c") == _settings_of(transformers.ViTMAEConfig())


@pytest.mark.parametrize("kw", [
    dict(decoder_hidden_size=1, decoder_num_attention_heads=1, decoder_intermediate_size=1),
    dict(decoder_hidden_size=MAX_WIDTH), dict(decoder_num_attention_heads=16), dict(decoder_intermediate_size=64 * 16),
    dict(decoder_num_hidden_layers=1), dict(mask_ratio=0), dict(mask_ratio=0.999), dict(layer_norm_eps=0.5),
    dict(layer_norm_eps=1e-30), dict(norm_pix_loss=False),
])
def test_settings_from_hf_accept_every_value_up_to_their_limits(kw):
    cfg = {**HF_SMALL, "model_type": "vit_mae", **kw}
    peer = {k: float(v) if k == "mask_ratio" else v for k, v in kw.items()}  # transformers 5 wants a float there
    assert mae_settings_from_hf(cfg, "config.json") == _settings_of(transformers.ViTMAEConfig(**{**HF_SMALL, **peer}))


@pytest.mark.parametrize("field,value", [
    ("decoder_hidden_size", 0), ("decoder_hidden_size", MAX_WIDTH + 1), ("decoder_hidden_size", 16.0),
    ("decoder_hidden_size", True), ("decoder_num_hidden_layers", 0), ("decoder_num_hidden_layers", "2"),
    ("decoder_num_attention_heads", 0), ("decoder_num_attention_heads", 17), ("decoder_intermediate_size", 0),
    ("decoder_intermediate_size", 64 * 16 + 1), ("mask_ratio", 1), ("mask_ratio", 1.0), ("mask_ratio", 1.5),
    ("mask_ratio", -0.1), ("mask_ratio", False), ("mask_ratio", True), ("mask_ratio", "0.5"), ("mask_ratio", None),
    ("norm_pix_loss", 1), ("norm_pix_loss", "true"), ("norm_pix_loss", None), ("layer_norm_eps", 0),
    ("layer_norm_eps", 1), ("layer_norm_eps", 1.5), ("layer_norm_eps", -1e-6), ("layer_norm_eps", "1e-6"),
    ("layer_norm_eps", None),
])
def test_settings_from_hf_refuse_a_bad_field_naming_the_file_and_the_field(field, value):
    cfg = {**HF_SMALL, "model_type": "vit_mae", field: value}
    with pytest.raises(ValueError, match=f"^dir/config.json: field '{field}' must be"):
        mae_settings_from_hf(cfg, "dir/config.json")


@pytest.mark.parametrize("cfg,got", [({"model_type": "vit"}, "'vit'"), ({"model_type": "beit"}, "'beit'"),
                                     ({}, "None"), ([1, 2], "'list'"), ("vit_mae", "'str'"), (None, "'NoneType'")])
def test_settings_from_hf_refuse_what_is_not_a_vitmae_config_saying_what_it_is(cfg, got):
    with pytest.raises(ValueError, match=f"^c.json: model_type {got}; an MAE with its decoder is transformers' "
                                         "'vit_mae'"):
        mae_settings_from_hf(cfg, "c.json")


# --- reading a ViTMAEForPreTraining folder ------------------------------------------------------

READ_OPTIONS = [
    dict(decoder_num_attention_heads=4), dict(decoder_num_attention_heads=1, decoder_intermediate_size=48),
    dict(decoder_num_hidden_layers=2, mask_ratio=0.5), dict(mask_ratio=0.25), dict(norm_pix_loss=True),
    dict(layer_norm_eps=1e-5, qkv_bias=False), dict(num_channels=1, hidden_act="gelu_pytorch_tanh"),
]


@pytest.mark.parametrize("kw", READ_OPTIONS)
def test_reads_each_option_of_a_transformers_vitmae_with_parity(tmp_path, kw):
    theirs = _hf_mae(tmp_path / "hf", **kw)
    ours = read_hf_mae(tmp_path / "hf")
    assert ours.load_info["settings"] == _settings_of(theirs.config) and ours.load_info["notes"] == []
    assert ours.mask_ratio == theirs.config.mask_ratio and ours.norm_pix_loss == theirs.config.norm_pix_loss
    assert len(ours.decoder_blocks) == theirs.config.decoder_num_hidden_layers
    assert all(n.eps == theirs.config.layer_norm_eps for n in
               [ours.decoder_norm, *(m for b in ours.decoder_blocks for m in (b.norm1, b.norm2))])
    c = theirs.config.num_channels
    for seed in (0, 1):
        mae_same_outputs(ours, theirs, _x(seed, c), _noise(seed))


def test_reads_the_hubs_decoder_layout_as_transformers_5s(tmp_path):
    """The hub's files (transformers 4) name the decoder blocks decoder.decoder_layers.i."""
    theirs = _hf_mae(tmp_path / "hf", decoder_num_hidden_layers=2)
    _edit_weights(tmp_path / "hf", lambda s: s.update(
        {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): s.pop(k) for k in list(s)}))
    mae_same_outputs(read_hf_mae(tmp_path / "hf"), theirs, _x(2), _noise(2))


def _state_and_cfg(folder):
    return load_file(folder / "model.safetensors"), json.loads((folder / "config.json").read_text())


def test_a_file_with_more_decoder_blocks_than_its_config_says_is_refused(tmp_path):
    _hf_mae(tmp_path / "hf", decoder_num_hidden_layers=2)
    _edit_config(tmp_path / "hf", decoder_num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"model.safetensors: decoder tensors vitkit does not know how to place: "
                                         r"\['decoder.decoder_encoder.layer.1."):
        read_hf_mae(tmp_path / "hf")


@pytest.mark.parametrize("change", [dict(decoder_intermediate_size=48), dict(image_size=48)])
def test_a_decoder_whose_shapes_do_not_fit_its_config_is_refused_naming_them(tmp_path, change):
    _hf_mae(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    if "image_size" in change:  # the encoder's positions resized too: only the decoder's are left wrong
        state["vit.embeddings.position_embeddings"] = torch.zeros(1, 37, 32)
    _edit_config(tmp_path / "hf", **change)
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors: the decoder does not fit its config: missing \[\], "
                                         r"unexpected \[\], wrong shapes \['decoder_"):
        read_hf_mae(tmp_path / "hf")


@pytest.mark.parametrize("key", ["decoder.decoder_norm.bias", "decoder.mask_token",
                                 "decoder.decoder_encoder.layer.0.attention.attention.value.bias",
                                 "vit.encoder.layer.0.output.dense.bias"])
def test_a_missing_tensor_is_refused_naming_the_weights_file_and_the_key(tmp_path, key):
    _hf_mae(tmp_path / "hf")
    _edit_weights(tmp_path / "hf", lambda s: s.pop(key))
    short = key.removeprefix("vit.")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'hf' / 'model.safetensors'))}: required tensor "
                                         f"'{re.escape(short)}' is missing"):
        read_hf_mae(tmp_path / "hf")


def test_a_classifier_beside_the_decoder_is_refused(tmp_path):
    _hf_mae(tmp_path / "hf")
    _edit_weights(tmp_path / "hf", lambda s: s.update({"classifier.weight": torch.zeros(3, 32),
                                                       "classifier.bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match="a classifier or pooler beside an MAE decoder"):
        read_hf_mae(tmp_path / "hf")


def test_a_vit_folder_is_refused_as_an_mae_saying_its_model_type(tmp_path):
    c = transformers.ViTConfig(**{k: v for k, v in HF_SMALL.items() if not k.startswith("decoder")})
    transformers.ViTModel(c).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="config.json: model_type 'vit'; an MAE with its decoder is transformers' "
                                         "'vit_mae'"):
        read_hf_mae(tmp_path / "vit")


def test_state_dict_conversion_names_its_file_in_every_refusal(tmp_path):
    _hf_mae(tmp_path / "hf")
    state, cfg = _state_and_cfg(tmp_path / "hf")
    with pytest.raises(ValueError, match="^w.safetensors: field 'mask_ratio'"):
        hf_mae_to_vitkit(state, {**cfg, "mask_ratio": 1.0}, "w.safetensors")
    with pytest.raises(ValueError, match="^w.safetensors: model_type 'vit'"):
        hf_mae_to_vitkit(state, {**cfg, "model_type": "vit"}, "w.safetensors")
    del state["vit.layernorm.weight"]
    with pytest.raises(ValueError, match="^w.safetensors: required tensor 'layernorm.weight' is missing"):
        hf_mae_to_vitkit(state, cfg, "w.safetensors")


# --- writing a vitkit MAE for transformers ------------------------------------------------------

def _mae(enc_kw=(), **kw):
    enc = randomise(vitkit.create_model(tiny_cfg(**{"num_classes": 0, "depth": 1, **dict(enc_kw)})), seed=3)
    mae = MAE(enc, **{**DEC, **kw})
    return randomise(mae, seed=4).eval()


WRITE_OPTIONS = [
    dict(), dict(enc_kw=dict(act="gelu_tanh")), dict(enc_kw=dict(channels=1)), dict(enc_kw=dict(qkv_bias=False)),
    dict(mask_ratio=0.5, norm_pix_loss=True), dict(mask_ratio=0.25), dict(enc_kw=dict(norm_eps=1e-5)),
    dict(decoder_heads=4, decoder_depth=2, decoder_mlp_ratio=3.0),
    dict(enc_kw=dict(num_classes=5, labels=list("abcde"))),  # the encoder's head has no place in the file
]


@pytest.mark.parametrize("kw", WRITE_OPTIONS)
def test_writes_each_option_so_that_transformers_reads_the_same_config_and_outputs(tmp_path, kw):
    ours = _mae(**kw)
    write_hf_mae(ours, tmp_path / "w")
    theirs = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "w").eval()
    e, d = ours.encoder.cfg, ours.decoder_cfg
    want = transformers.ViTMAEConfig(
        hidden_size=e.width, num_hidden_layers=e.depth, num_attention_heads=e.heads, intermediate_size=e.mlp_dim,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[e.act], layer_norm_eps=e.norm_eps,
        image_size=e.image_size, patch_size=e.patch_size, num_channels=e.channels, qkv_bias=e.qkv_bias,
        decoder_hidden_size=d.width, decoder_num_hidden_layers=d.depth, decoder_num_attention_heads=d.heads,
        decoder_intermediate_size=d.mlp_dim, mask_ratio=ours.mask_ratio, norm_pix_loss=ours.norm_pix_loss)
    skip = {"_name_or_path", "architectures", "transformers_version", "dtype", "vitkit"}
    got = {k: v for k, v in theirs.config.to_dict().items() if k not in skip}
    assert got == {k: v for k, v in want.to_dict().items() if k not in skip}
    assert theirs.config.architectures == ["ViTMAEForPreTraining"]
    for seed in (3, 4):
        mae_same_outputs(ours, theirs, _x(seed, e.channels), _noise(seed))
    back = read_hf_mae(tmp_path / "w")
    sa, sb = ours.state_dict(), back.state_dict()
    sa = {k: v for k, v in sa.items() if not k.startswith("encoder.head.")}
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_mae_held_in_bfloat16_is_loaded_by_transformers_in_float32(tmp_path):
    ours = _mae()
    write_hf_mae(ours.to(torch.bfloat16), tmp_path / "w")
    theirs = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "w").eval()
    assert {p.dtype for p in theirs.parameters()} == {torch.float32}
    mae_same_outputs(ours.float(), theirs, _x(7), _noise(7))


@pytest.mark.parametrize("enc_kw,why", [
    (dict(distilled=True), r"it has a distillation token\. Save the encoder alone"),
    (dict(representation_size=32), r"it has a pre-logits layer\. Save the encoder alone"),
    (dict(pooling="gap", class_token=False), r"; a norm of the latent that is not the encoder's\. Save"),
    (dict(image_size=(32, 48)), r"it has a 32x48 image \(ViTMAE's sin-cos positions are for square grids\)\."),
])
def test_what_transformers_vitmae_cannot_express_is_refused_saying_what(tmp_path, enc_kw, why):
    with pytest.raises(ValueError, match="^transformers' ViTMAEForPreTraining cannot express this MAE: .*" + why):
        vitkit_mae_to_hf(_mae(enc_kw))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_an_mlp_of_no_hidden_unit_is_refused_before_anything_is_written():
    """An MLP that rounds to no hidden unit, in the encoder or the decoder, would be written as intermediate_size 0,
    which no reader (vitkit's or transformers') reads back: the model is refused when it is built."""
    with pytest.raises(ValueError, match="no hidden unit"):
        _mae(dict(mlp_ratio=0.01))
    with pytest.raises(ValueError, match="MAE decoder .*no hidden unit"):
        _mae(decoder_mlp_ratio=0.01)
