"""The timm converter on the options of timm's models that the default-sized checkpoints never set: random timm
peers built with each option, saved in timm's own layouts (a state dict file, ``save_for_hf`` folders), read by
vitkit with timm's config and logits; vitkit's configs written back for timm's classes; every refusal naming
the file and what it cannot read."""

import json
import re

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._hub import save_for_hf
from timm.models.beit import Beit
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid, _resnetv2

import vitkit
from vitkit.weights.convert_timm import infer_config, timm_model_args, timm_to_vitkit, unwrap, vitkit_to_timm

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state

TOL = 1e-4  # fp32 on random tiny peers; these reach ~1e-6
VIT = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3, mlp_ratio=2.0)


def _x(hw=(32, 32), channels=3, seed=0):
    return torch.randn(2, channels, *hw, generator=torch.Generator().manual_seed(seed))


def _agree(ours, theirs, hw=(32, 32), channels=3):
    x = _x(hw, channels)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= TOL


def _file(tmp_path, state, name="m.pth"):
    path = tmp_path / name
    (save_file if name.endswith(".safetensors") else torch.save)(dict(state), path)
    return path


# --- unwrap: the state dict inside what training scripts save ------------------------------------------------

@pytest.mark.parametrize("wrap", [
    lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DistributedDataParallel
    lambda sd: {f"backbone.{k}": v for k, v in sd.items()},  # detection / segmentation frameworks
    lambda sd: {"state_dict": {f"encoder.{k}": v for k, v in sd.items()}, "epoch": 3},
    lambda sd: {"model_ema": {"module": {"model": dict(sd)}}, "optimizer": None},  # three wrappers deep
])
def test_a_state_dict_under_a_wrapper_or_a_prefix_loads_with_timms_logits(tmp_path, wrap):
    theirs = randomise(TimmViT(img_size=32, **VIT)).eval()
    ours = vitkit.load(_file(tmp_path, wrap(theirs.state_dict())), heads=2)
    _agree(ours, theirs)


def test_what_holds_no_flat_state_dict_is_refused_saying_what_it_holds():
    t = torch.zeros(1)
    with pytest.raises(ValueError, match=r"^ck\.pth: no tensors found; top-level keys are \['args', 'epoch'\]"):
        unwrap({"epoch": 3, "args": {"lr": 0.1}}, "ck.pth")
    with pytest.raises(ValueError, match=r"^ck\.pth: entries that are not tensors: \['epoch', 'step'\]"):
        unwrap({"w": t, "epoch": 3, "step": 7}, "ck.pth")
    # three wrappers are looked inside, not a fourth
    assert unwrap({"model": {"state_dict": {"module": {"w": t}}}}, "ck.pth") == {"w": t}
    with pytest.raises(ValueError, match=r"^ck\.pth: entries that are not tensors: \['model'\]"):
        unwrap({"model": {"state_dict": {"module": {"model": {"w": t}}}}}, "ck.pth")


# --- head counts --------------------------------------------------------------------------------------------

def test_an_unpublished_width_without_heads_is_refused_listing_the_head_counts_it_allows(tmp_path):
    theirs = TimmViT(img_size=16, patch_size=8, embed_dim=576, depth=1, num_heads=9, num_classes=0, mlp_ratio=0.25)
    path = _file(tmp_path, theirs.state_dict())
    msg = (f"{path}: a timm state dict does not store its number of attention heads, and width 576 is no "
           "published ViT width that would decide it; pass heads=N (CLI: --heads N); width 576 allows e.g. "
           "12 (head width 48), 16 (head width 36), 18 (head width 32), 24 (head width 24), 32 (head width 18), "
           "36 (head width 16)")
    with pytest.raises(ValueError) as e:
        vitkit.load(path)
    assert str(e.value) == msg
    assert vitkit.load(path, heads=9).cfg.heads == 9
    narrow = TimmViT(img_size=16, patch_size=8, embed_dim=40, depth=1, num_heads=2, num_classes=0)
    with pytest.raises(ValueError, match=r"; width 40 allows e\.g\. 1 \(head width 40\), 2 \(head width 20\)$"):
        infer_config(narrow.state_dict(), "m.pth")


def test_a_timm_folder_without_num_heads_takes_them_from_its_architecture_name(tmp_path):
    # timm's save_for_hf records the factory's arguments: num_heads=6 came from the name, not model_args
    theirs = randomise(timm.create_model("vit_small_patch16_224", embed_dim=96, depth=1, img_size=32, patch_size=8,
                                         num_classes=3)).eval()
    save_for_hf(theirs, tmp_path / "f", safe_serialization=True)
    assert "num_heads" not in json.loads((tmp_path / "f" / "config.json").read_text())["model_args"]
    ours = vitkit.load(tmp_path / "f")
    assert ours.cfg.heads == 6 and ours.cfg.width == 96
    _agree(ours, theirs)


def test_load_info_notes_say_what_the_shapes_decided_and_only_that(tmp_path):
    theirs = TimmViT(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3, num_classes=0)
    path = _file(tmp_path, theirs.state_dict())
    assert vitkit.load(path).load_info["notes"] == [
        f"{path}: pooling 'cls' (a [CLS] token and no fc_norm, as every timm ViT that pools [CLS])",
        f"{path}: 3 heads, those of every published ViT of width 192 (a state dict does not store them; heads=N "
        "if yours differ)"]
    assert vitkit.load(path, heads=3, pooling="cls").load_info["notes"] == []
    clip = TimmViT(img_size=32, patch_size=8, embed_dim=192, depth=1, num_heads=3, num_classes=0, pre_norm=True,
                   global_pool="avg", class_token=False)
    path = _file(tmp_path, clip.state_dict(), "clip.pth")
    assert vitkit.load(path, heads=3).load_info["notes"] == [
        f"{path}: pooling 'gap' (fc_norm present)",
        f"{path}: LayerNorm eps 1e-5 (norm_pre present: timm's CLIP towers; norm_eps= if not)"]
    # a caller of infer_config who knows the eps says so, and is not told
    notes = []
    cfg = infer_config(clip.state_dict(), "clip.pth", dict(heads=3, pooling="gap", norm_eps=1e-6), notes=notes)
    assert cfg.norm_eps == 1e-6 and cfg.norm_pre and notes == []


def test_a_hint_the_file_cannot_contradict_is_taken_and_gives_timms_logits(tmp_path):
    # mean pooling without fc_norm next to a [CLS] token reads as [CLS] pooling unless the caller says
    theirs = randomise(TimmViT(img_size=32, **VIT, global_pool="avg", fc_norm=False, act_layer="gelu_tanh")).eval()
    path = _file(tmp_path, theirs.state_dict())
    ours = vitkit.load(path, heads=2, pooling="gap", act="gelu_tanh")
    assert (ours.cfg.pooling, ours.cfg.use_fc_norm, ours.cfg.act) == ("gap", False, "gelu_tanh")
    _agree(ours, theirs)


@pytest.mark.parametrize("hints, msg", [
    (dict(pooling="cls", heads=2), r"pooling='cls' \(--pooling\) does not fit this file: ViTConfig.pooling='cls' needs "
                          r"class_token=True"),
    (dict(pooling="gap", heads=3), r"the tensors describe an impossible ViT: ViTConfig.width 32 is not divisible "
                                   r"by heads 3"),
])
def test_an_override_that_cannot_fit_the_file_is_refused_saying_whose_it_is(tmp_path, hints, msg):
    theirs = TimmViT(img_size=32, **VIT, class_token=False, global_pool="avg")
    path = _file(tmp_path, theirs.state_dict())
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {msg}"):
        vitkit.load(path, **hints)


# --- hybrids ------------------------------------------------------------------------------------------------

def _hybrid(layers, stem_chs=64):
    torch.manual_seed(0)
    if stem_chs == 64:
        backbone = _resnetv2(layers=layers)
    else:  # the same ResNet-v2 as timm's hybrids, narrower: stage i is 4 * stem * 2^i wide
        from functools import partial

        from timm.layers import StdConv2dSame
        backbone = ResNetV2(layers=layers, channels=tuple(4 * stem_chs * 2 ** i for i in range(4)),
                            stem_chs=stem_chs, num_classes=0, global_pool="", preact=False, stem_type="same",
                            conv_layer=partial(StdConv2dSame, eps=1e-8))
    model = _create_vision_transformer_hybrid("vit_base_r50_s16_224", backbone=backbone, img_size=32, patch_size=1,
                                              embed_dim=32, depth=1, num_heads=2, num_classes=3)
    return randomise(model, scale=0.1).eval()


@pytest.mark.parametrize("layers, stem_chs", [((2,), 64), ((1, 2), 32)])
def test_a_hybrid_with_deeper_stages_or_a_narrower_stem_loads_with_timms_logits(tmp_path, layers, stem_chs):
    theirs = _hybrid(layers, stem_chs)
    ours = vitkit.load(_file(tmp_path, theirs.state_dict()), heads=2)
    assert (ours.cfg.stem, ours.cfg.hybrid_layers, ours.cfg.hybrid_width) == ("hybrid", layers, stem_chs)
    _agree(ours, theirs)


def test_a_hybrid_whose_root_conv_is_not_7x7_is_refused_naming_the_file(tmp_path):
    state = dict(_hybrid((1,)).state_dict())
    key = "patch_embed.backbone.stem.conv.weight"
    state[key] = state[key][:, :, 2:5, 2:5].contiguous()
    path = _file(tmp_path, state)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: tensor '{key}' has shape \(64, 3, 3, 3\), "
                                         r"expected \(None, None, 7, 7\)$"):
        vitkit.load(path, heads=2)


# --- BEiT: the image size from the relative position table ---------------------------------------------------

BEIT = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3, use_abs_pos_emb=False,
            use_rel_pos_bias=True, init_values=0.1)


def _beit(img_size, **kw):
    return randomise(timm.create_model("beit_base_patch16_224", img_size=img_size, **{**BEIT, **kw})).eval()


@pytest.mark.parametrize("img", [16, 40])  # tables of 3x3 and 9x9 offsets
def test_a_beit_of_any_square_grid_reads_its_size_off_the_table(tmp_path, img):
    theirs = _beit(img)
    ours = vitkit.load(_file(tmp_path, theirs.state_dict()))
    assert ours.cfg.image_hw == (img, img) and ours.cfg.rel_pos == "per_block"
    _agree(ours, theirs, (img, img))


def test_a_non_square_beit_loads_at_the_size_the_caller_or_its_folder_gives(tmp_path):
    theirs = _beit((32, 48))
    path = _file(tmp_path, theirs.state_dict())
    ours = vitkit.load(path, image_size=(32, 48))
    assert ours.cfg.image_hw == (32, 48)
    _agree(ours, theirs, (32, 48))
    save_for_hf(theirs, tmp_path / "f", safe_serialization=True)  # pretrained_cfg input_size says (32, 48)
    ours = vitkit.load(tmp_path / "f")
    assert ours.cfg.image_hw == (32, 48)
    _agree(ours, theirs, (32, 48))
    # the table alone cannot say, nor fit a square size
    for size in (None, 32):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: the relative position table has 80 rows, "
                                             r"not \(2g-1\)² \+ 3 for a square grid; pass the checkpoint's own"):
            vitkit.load(path, image_size=size)


def test_a_beit_table_of_no_grid_is_refused_as_such(tmp_path):
    state = dict(_beit(32).state_dict())
    state["blocks.0.attn.relative_position_bias_table"] = torch.zeros(6 * 6 + 3, 2)  # an even side: no grid
    with pytest.raises(ValueError, match=r"^m\.pth: the relative position table has 39 rows, not \(2g-1\)² \+ 3"):
        infer_config(state, "m.pth")
    with pytest.raises(ValueError, match=r"^m\.pth: the relative position table has 39 rows, not those of a 32 image"):
        infer_config(state, "m.pth", dict(image_size=32))


def test_a_beit_folder_at_a_size_the_patch_does_not_divide_is_refused_for_that(tmp_path):
    theirs = _beit(36)  # timm drops the last 4 pixel rows and columns
    save_for_hf(theirs, tmp_path / "f", safe_serialization=True)
    with pytest.raises(ValueError, match=r"ViTConfig.image_size 36x36 is not divisible by patch_size 8"):
        vitkit.load(tmp_path / "f")


def test_heads_given_against_a_beit_table_are_refused_naming_the_table(tmp_path):
    path = _file(tmp_path, _beit(32).state_dict())
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: heads=4 given, but the relative position "
                                         r"table has 2 columns, one per head"):
        vitkit.load(path, heads=4)


# --- ViT: the image size from the position embedding ---------------------------------------------------------

# (timm's options, the pos_embed_prefix vitkit reads): [CLS] with a row, [CLS] + registers without rows (timm's
# no_embed_class), no prefix tokens at all
PREFIXES = [(dict(), True), (dict(reg_tokens=2, no_embed_class=True), False),
            (dict(class_token=False, global_pool="avg", no_embed_class=True), False)]


@pytest.mark.parametrize("kw, prefix", PREFIXES)
@pytest.mark.parametrize("size", [(32, 48), 32])
def test_a_vit_whose_rows_do_not_tell_its_grid_loads_at_the_size_the_caller_gives(tmp_path, kw, prefix, size):
    theirs = randomise(TimmViT(img_size=size, **VIT, **kw)).eval()
    path = _file(tmp_path, theirs.state_dict())
    ours = vitkit.load(path, heads=2, image_size=size)
    hw = (size, size) if isinstance(size, int) else size
    assert (ours.cfg.image_hw, ours.cfg.pos_embed_prefix) == (hw, prefix) and prefix == (not theirs.no_embed_class)
    _agree(ours, theirs, hw)


@pytest.mark.parametrize("kw, prefix", PREFIXES)
def test_a_timm_folder_gives_its_own_size_and_the_layout_of_its_position_rows(tmp_path, kw, prefix):
    theirs = randomise(timm.create_model("vit_small_patch16_224", img_size=(32, 48), **VIT, **kw)).eval()
    save_for_hf(theirs, tmp_path / "f", safe_serialization=True)
    ours = vitkit.load(tmp_path / "f")
    assert (ours.cfg.image_hw, ours.cfg.pos_embed_prefix) == ((32, 48), prefix)
    _agree(ours, theirs, (32, 48))


def test_a_size_the_patch_does_not_divide_is_refused_for_that(tmp_path):
    # timm crops to 32x48; 24 rows (no_embed_class), no square grid to fall back on
    theirs = timm.create_model("vit_small_patch16_224", img_size=(36, 52), no_embed_class=True, **VIT)
    save_for_hf(theirs, tmp_path / "f", safe_serialization=True)
    with pytest.raises(ValueError, match=r"ViTConfig.image_size 36x52 is not divisible by patch_size 8"):
        vitkit.load(tmp_path / "f")
    path = _file(tmp_path, theirs.state_dict())
    with pytest.raises(ValueError, match=r"ViTConfig.image_size 36x52 is not divisible by patch_size 8"):
        vitkit.load(path, heads=2, image_size=(36, 52))


def test_a_vit_without_position_embedding_loads_at_timms_default_or_its_folders_size(tmp_path):
    theirs = randomise(timm.create_model("vit_small_patch16_224", img_size=32, pos_embed="none", **VIT)).eval()
    ours = vitkit.load(_file(tmp_path, theirs.state_dict()), heads=2)
    assert (ours.cfg.pos_embed, ours.cfg.image_hw) == ("none", (224, 224))  # the size of every timm ViT's name
    save_for_hf(theirs, tmp_path / "f", safe_serialization=True)
    ours = vitkit.load(tmp_path / "f")
    assert (ours.cfg.pos_embed, ours.cfg.image_hw) == ("none", (32, 32))
    _agree(ours, theirs)


def test_a_timm_folders_label_names_become_the_labels_when_they_fit_the_head(tmp_path):
    theirs = randomise(timm.create_model("vit_small_patch16_224", img_size=32, **VIT)).eval()
    save_for_hf(theirs, tmp_path / "f", model_config=dict(label_names=["cat", "dog", "eel"]),
                safe_serialization=True)
    ours = vitkit.load(tmp_path / "f")
    assert ours.labels == ["cat", "dog", "eel"] and ours.cfg.labels == ["cat", "dog", "eel"]
    cfg = json.loads((tmp_path / "f" / "config.json").read_text())
    (tmp_path / "f" / "config.json").write_text(json.dumps(dict(cfg, label_names=["cat", "dog"])))
    ours = vitkit.load(tmp_path / "f")  # two names for three classes: dropped, not misassigned
    assert ours.cfg.labels is None and ours.cfg.num_classes == 3
    _agree(ours, theirs)


# --- our models in timm's layouts --------------------------------------------------------------------------

ROUND_TRIP = [
    dict(representation_size=24),  # the pre-logits layer of the in21k ViTs, narrower than the width
    dict(layer_scale_init=1e-5, channels=1, mlp_ratio=2.0, qk_norm=True),
    dict(qkv_bias="qv", rel_pos="per_block", pooling="gap", fc_norm=True, pos_embed="none",
         layer_scale_init=0.1),  # BEiT-B
    dict(class_token=False, pooling="gap", pos_embed_prefix=False, fc_norm=False, qkv_bias=False),
    dict(pos_embed="none", image_size=224, patch_size=32),
]


@pytest.mark.parametrize("kw", ROUND_TRIP)
def test_our_model_saved_as_a_timm_pth_reads_back_to_its_config_and_weights(tmp_path, kw):
    ours = randomise(vitkit.create_model(tiny_cfg(**{"heads": 2, **kw}))).eval()
    vitkit.save(ours, tmp_path / "m.pth", format="timm")  # no metadata: all from the shapes
    back = vitkit.load(tmp_path / "m.pth", heads=2, pooling=ours.cfg.pooling)
    assert back.cfg == ours.cfg and same_state(ours, back)


# our configs for timm's classes: timm builds each from timm_model_args, takes our weights strictly, and agrees
TIMM_CLASS = [
    dict(channels=1, mlp_ratio=2.0, layer_scale_init=1e-5, num_classes=7),
    dict(image_size=(32, 48), qkv_bias=False, qk_norm=True),
    dict(reg_tokens=2, pos_embed_prefix=False, pooling="gap", fc_norm=False),
    dict(pooling="cls", fc_norm=True),
    dict(pos_embed="none"),
    dict(norm_pre=True, patch_bias=False, norm_eps=1e-5, class_token=False, pooling="map"),  # CLIP / SigLIP towers
    dict(qkv_bias="qv", rel_pos="per_block", pooling="gap", pos_embed="none", layer_scale_init=0.1),  # BEiT
    dict(qkv_bias=False, rel_pos="shared", pooling="cls", fc_norm=True),  # absolute and shared relative positions
    dict(qkv_bias="qv", pooling="gap", fc_norm=False, pos_embed="none"),  # BEiT's blocks without a table
]


@pytest.mark.parametrize("kw", TIMM_CLASS)
def test_timm_builds_our_config_from_timm_model_args_and_gives_our_logits(kw):
    cfg = tiny_cfg(**{"heads": 2, **kw})
    ours = randomise(vitkit.create_model(cfg)).eval()
    cls = Beit if cfg.is_beit else TimmViT
    kwargs = timm_model_args(cfg)
    if cfg.norm_pre:  # the eps of timm's CLIP towers comes with their names
        kwargs["norm_layer"] = torch.nn.LayerNorm
    theirs = cls(**kwargs).eval()
    theirs.load_state_dict(vitkit_to_timm(ours.state_dict(), cfg), strict=True)
    _agree(ours, theirs, cfg.image_hw, cfg.channels)


@pytest.mark.parametrize("kw", [TIMM_CLASS[i] for i in (1, 2, 4, 7)])
def test_our_model_in_a_timm_folder_loads_in_timm_with_our_logits(tmp_path, kw):
    ours = randomise(vitkit.create_model(tiny_cfg(**{"heads": 2, **kw}))).eval()
    vitkit.save(ours, tmp_path / "f", format="timm")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'f'}", pretrained=True).eval()
    _agree(ours, theirs, ours.cfg.image_hw)
    assert vitkit.load(tmp_path / "f").cfg == ours.cfg


@pytest.mark.parametrize("kw, why", [
    (dict(pos_embed="sincos2d"), "a fixed sin-cos position embedding"),
    (dict(patch_bias=False), "patch_bias=False with norm_pre=False (timm has a patch-embedding bias exactly when it "
                             "has no norm_pre)"),
    (dict(representation_size=16), "representation_size (timm no longer builds a pre-logits layer)"),
    (dict(act="gelu_tanh"), "act='gelu_tanh', norm_eps=1e-06 (timm uses exact GELU and LayerNorm eps 1e-6 by name, "
                            "1e-5 for its CLIP towers)"),
    (dict(norm_eps=1e-5), "act='gelu', norm_eps=1e-05 (timm uses exact GELU and LayerNorm eps 1e-6 by name, "
                          "1e-5 for its CLIP towers)"),
    (dict(stem="hybrid", hybrid_layers=(), patch_size=2),
     "a hybrid CNN stem in a hub folder (timm builds the ResNet in code, from the architecture name alone: save a "
     ".safetensors or .pth file instead)"),
])
def test_a_vit_timm_cannot_build_is_refused_naming_what_it_cannot_express(kw, why):
    with pytest.raises(ValueError) as e:
        timm_model_args(tiny_cfg(heads=2, **kw))
    assert str(e.value) == f"timm's VisionTransformer cannot express {why}; save it as vitkit instead"


QV = dict(qkv_bias="qv")


@pytest.mark.parametrize("kw, why", [
    (dict(QV, norm_pre=True, patch_bias=False, norm_eps=1e-5), "norm_pre or an attention pool in BEiT's blocks"),
    (dict(QV, pooling="map", class_token=False), "norm_pre or an attention pool in BEiT's blocks; prefix tokens "
                                                 "other than one [CLS]"),
    (dict(rel_pos="per_block"), "a k bias (Beit has q and v biases, or none)"),
    (dict(QV, reg_tokens=1), "prefix tokens other than one [CLS]"),
    (dict(QV, class_token=False, pooling="gap"), "prefix tokens other than one [CLS]"),
    (dict(QV, pos_embed_prefix=False), "a patch-only position embedding"),
    (dict(QV, qk_norm=True), "qk-norm"),
])
def test_a_beit_timm_cannot_build_is_refused_naming_what_it_cannot_express(kw, why):
    with pytest.raises(ValueError) as e:
        timm_model_args(tiny_cfg(heads=2, **kw))
    assert str(e.value) == f"timm's Beit cannot express {why}; save it as vitkit instead"
    assert timm_model_args(tiny_cfg(heads=2, **QV, pos_embed="none", pos_embed_prefix=False))["use_abs_pos_emb"] \
        is False  # nothing to add the position rows to: nothing to refuse


# --- files that are not what they say ------------------------------------------------------------------------

def _state(**kw):
    return dict(TimmViT(img_size=32, **{**VIT, **kw}).state_dict())


def _without(state, key):
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("state, msg", [
    (_without(_state(), "patch_embed.proj.weight"), "required tensor 'patch_embed.proj.weight' is missing"),
    ({**_state(), "patch_embed.proj.weight": torch.zeros(32, 192)},
     r"tensor 'patch_embed.proj.weight' has shape \(32, 192\), expected \(None, None, None, None\)"),
    (_without(_state(), "blocks.0.mlp.fc1.weight"), "required tensor 'blocks.0.mlp.fc1.weight' is missing"),
    ({**_state(), "blocks.0.mlp.fc1.weight": torch.zeros(64, 16)},
     r"tensor 'blocks.0.mlp.fc1.weight' has shape \(64, 16\), expected \(None, 32\)"),
    (_state(mlp_layer=timm.layers.SwiGLU), r"a checkpoint of a SwiGLU MLP \(EVA-02, DINOv2-giant, SigLIP 2 ...\), "
                                           "which vitkit does not build"),
    (_state(embed_dim=40), "a timm state dict does not store its number of attention heads"),
])
def test_a_file_missing_or_misshaping_what_decides_the_architecture_is_refused_naming_it(state, msg):
    with pytest.raises(ValueError, match=f"^m\\.pth: {msg}"):
        infer_config(state, "m.pth")


def test_a_key_the_architecture_has_no_place_for_is_refused_naming_the_file():
    state = _state()
    cfg = infer_config(state, "m.pth", dict(heads=2))
    assert timm_to_vitkit(state, cfg, "m.pth")[1] == []
    with pytest.raises(ValueError, match=r"^m\.pth: the weights do not fit the model they describe: unexpected keys "
                                         r"\['head_dist.weight'\]$"):
        timm_to_vitkit({**state, "head_dist.weight": torch.zeros(3, 32)}, cfg, "m.pth")
