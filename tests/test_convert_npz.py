"""Google .npz <-> vitkit (weights/convert_npz.py), option by option: foreign files (a JAX export, no vitkit config
entry) of each layout, grid and head variant are read as timm's own npz loader reads them; the hints a caller gives
are used where the arrays cannot say; the writer refuses what the layout cannot hold, naming it."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT, _load_weights
from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid, _resnetv2

import vitkit
from vitkit.weights.convert_npz import CONFIG_KEY, npz_to_vitkit
from vitkit.weights.safe_io import read_npz

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state


def _foreign(tmp_path, model, name="jax.npz", edit=None):
    """``model`` written by vitkit as npz, then as a JAX export holds it: without the ``vitkit/`` entries.
    ``edit(arrays)`` may change the arrays first. Returns (vitkit's own file, the foreign file)."""
    own = tmp_path / "own.npz"
    vitkit.save(model, own, format="npz")
    arrays = {k: v for k, v in read_npz(own).items() if not k.startswith("vitkit/")}
    if edit is not None:
        arrays = edit(arrays)
    np.savez(tmp_path / name, **arrays)
    return own, tmp_path / name


def _timm_args(cfg):
    """timm's VisionTransformer arguments for the model ``cfg`` describes."""
    return dict(img_size=cfg.image_hw, patch_size=cfg.patch_size, in_chans=cfg.channels, num_classes=cfg.num_classes,
                embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                class_token=cfg.class_token, no_embed_class=not cfg.pos_embed_prefix,
                global_pool={"cls": "token", "gap": "avg"}[cfg.pooling], fc_norm=False, act_layer="gelu_tanh")


def _timm_reads(path, cfg):
    """timm's VisionTransformer for ``cfg``, its weights read by timm's own npz loader."""
    theirs = TimmViT(**_timm_args(cfg)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.zero_()
    _load_weights(theirs, str(path))
    return theirs


def _x(cfg, n=2):
    return torch.randn(n, cfg.channels, *cfg.image_hw, generator=torch.Generator().manual_seed(0))


def _agree(ours, theirs, cfg, tol=1e-5):
    x = _x(cfg)
    with torch.no_grad():
        return max_diff(ours(x), theirs(x)) <= tol


JAX = dict(act="gelu_tanh", fc_norm=False)  # what a JAX export is read as: tanh GELU, the norm before pooling

LAYOUTS = {
    "cls": dict(),
    "gap-no-cls": dict(class_token=False, pooling="gap", pos_embed_prefix=False),  # big_vision's So400m-style
    "cls-patch-only-pos": dict(pos_embed_prefix=False),  # big_vision naming with a [CLS]
    "one-block": dict(depth=1),
    "mlp-ratio-2": dict(mlp_ratio=2.0),
    "grayscale": dict(channels=1),
    "no-head": dict(num_classes=0),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_foreign_npz_of_each_layout_reads_the_config_and_outputs_timm_reads(tmp_path, name):
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX, **LAYOUTS[name])), scale=0.1).eval()
    _, jax = _foreign(tmp_path, ours)
    back = vitkit.load(jax).eval()
    assert back.cfg == ours.cfg and same_state(ours, back)
    assert _agree(back, _timm_reads(jax, ours.cfg), ours.cfg)


def test_foreign_npz_read_with_gap_pooling_averages_the_patches_as_timm_does(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX)), scale=0.1).eval()
    _, jax = _foreign(tmp_path, ours)
    back = vitkit.load(jax, pooling="gap").eval()
    assert back.cfg == dataclasses.replace(ours.cfg, pooling="gap")
    assert _agree(back, _timm_reads(jax, back.cfg), ours.cfg)


@pytest.mark.parametrize("depth", [1, 2])
def test_scanned_big_vision_npz_of_any_depth_is_what_timm_reads(tmp_path, depth):
    """big_vision with scan=True stacks every block's tensors along a leading depth axis."""
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX, depth=depth, pos_embed_prefix=False)), scale=0.1).eval()

    def scan(arrays):
        out = {k: v for k, v in arrays.items() if "encoderblock_" not in k}
        for k in [k for k in arrays if "encoderblock_0/" in k]:
            rest = k.split("encoderblock_0/")[1]
            out[f"params/Transformer/encoderblock/{rest}"] = np.stack(
                [arrays[f"params/Transformer/encoderblock_{i}/{rest}"] for i in range(depth)])
        return out

    _, jax = _foreign(tmp_path, ours, edit=scan)
    assert "params/Transformer/encoderblock/LayerNorm_0/scale" in read_npz(jax)
    back = vitkit.load(jax).eval()
    assert back.cfg == ours.cfg and same_state(ours, back)
    assert _agree(back, _timm_reads(jax, ours.cfg), ours.cfg)


def _drop_pos(arrays):
    return {k: v for k, v in arrays.items() if not k.endswith("pos_embedding")}


@pytest.mark.parametrize("layout", ["vision_transformer", "big_vision"])
def test_foreign_npz_without_a_position_table_is_a_fixed_sincos_model_at_224(tmp_path, layout):
    """No position table in the file: big_vision's fixed 2-D sin-cos embedding; nothing says the size, so 224 (the
    size the original models were trained at) unless the caller asks for another."""
    # the big_vision naming (params/, MultiHeadDotProductAttention_0 ...) is what vitkit writes for a patch-only table
    kw = dict(pos_embed_prefix=False) if layout == "big_vision" else dict(pos_embed="sincos2d")
    writer = randomise(vitkit.create_model(tiny_cfg(**JAX, patch_size=16, **kw)), scale=0.1)
    _, jax = _foreign(tmp_path, writer, edit=_drop_pos)
    assert any(k.startswith("params/") for k in read_npz(jax)) == (layout == "big_vision")
    want = tiny_cfg(**JAX, patch_size=16, image_size=224, pos_embed="sincos2d", pos_embed_prefix=False)
    weights = {k: v for k, v in writer.state_dict().items() if k != "pos_embed"}
    for size in (None, 32):
        back = vitkit.load(jax, image_size=size).eval()
        cfg = want if size is None else dataclasses.replace(want, image_size=size)
        ref = vitkit.create_model(cfg).eval()
        ref.load_state_dict(weights)
        assert back.cfg == cfg and same_state(ref, back) and _agree(back, ref, cfg)


def test_big_vision_npz_may_hold_its_position_table_in_the_original_place(tmp_path):
    """params/-prefixed (big_vision) naming with the table under Transformer/posembed_input/ is read, not dropped."""
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX, pos_embed_prefix=False)), scale=0.1).eval()

    def move(arrays):
        arrays["params/Transformer/posembed_input/pos_embedding"] = arrays.pop("params/pos_embedding")
        return arrays

    _, jax = _foreign(tmp_path, ours, edit=move)
    back = vitkit.load(jax).eval()
    assert back.cfg == ours.cfg and same_state(ours, back)


# (the checkpoint's size, its [CLS] and table layout, the size the caller loads at): position tables whose row
# count alone does not say the grid
NON_SQUARE = {
    "cls-4x6-25-rows-look-5x5": (dict(image_size=(32, 48)), (32, 48)),
    "cls-4x8": (dict(image_size=(32, 64)), (32, 64)),
    "gap-4x6": (dict(image_size=(32, 48), class_token=False, pooling="gap", pos_embed_prefix=False), (32, 48)),
    "cls-5x10-51-rows": (dict(image_size=(40, 80)), (40, 80)),
    "square-gap-int-size": (dict(class_token=False, pooling="gap", pos_embed_prefix=False), 32),
}


@pytest.mark.parametrize("name", NON_SQUARE)
def test_foreign_npz_with_a_non_square_grid_is_read_at_the_requested_size(tmp_path, name):
    kw, size = NON_SQUARE[name]
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX, **kw)), scale=0.1).eval()
    _, jax = _foreign(tmp_path, ours)
    back = vitkit.load(jax, image_size=size).eval()
    assert back.cfg == ours.cfg and same_state(ours, back)
    assert _agree(back, _timm_reads(jax, ours.cfg), ours.cfg)


def test_foreign_npz_with_a_non_square_grid_needs_the_size(tmp_path):
    ours = vitkit.create_model(tiny_cfg(**JAX, image_size=(32, 64)))
    _, jax = _foreign(tmp_path, ours)
    with pytest.raises(ValueError, match=r"position embedding has 33 rows, not a square grid; pass the checkpoint"):
        vitkit.load(jax)


# a square checkpoint loaded at another size whose token count could also be read off its table: the table is
# the checkpoint's own grid, resampled to the size asked for (as for the same file with vitkit's config inside)
RESAMPLED = {
    "cls-4x4-at-2x8": (dict(), (16, 64)),  # 17 rows: a [CLS] + 4x4, or a [CLS] + 2x8 at 16x64
    "gap-4x4-at-3x5": (dict(class_token=False, pooling="gap", pos_embed_prefix=False), (24, 40)),  # 16 = 15 + 1
    "cls-4x4-at-6x6": (dict(), 48),
}


@pytest.mark.parametrize("name", RESAMPLED)
def test_square_foreign_npz_loaded_at_another_size_is_resampled_like_vitkits_own_file(tmp_path, name):
    kw, size = RESAMPLED[name]
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX, **kw)), scale=0.1).eval()
    own, jax = _foreign(tmp_path, ours)
    want = vitkit.load(own, image_size=size).eval()
    back = vitkit.load(jax, image_size=size).eval()
    assert back.cfg == want.cfg and same_state(want, back)
    assert back.cfg.image_hw == (tuple(size) if isinstance(size, tuple) else (size, size))
    # timm: read at the checkpoint's own size, the table then resampled by timm's resample_abs_pos_embed (timm's
    # npz loader asked for 16x64 directly would copy the 17 rows as a 2x8 grid: the ambiguity itself)
    native = _timm_reads(jax, ours.cfg)
    big = TimmViT(**_timm_args(want.cfg)).eval()
    state = native.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=want.cfg.grid_size,
                                                num_prefix_tokens=0 if native.no_embed_class else 1)
    big.load_state_dict(state)
    assert _agree(back, big, want.cfg, tol=1e-4)


@pytest.mark.parametrize("size", [(32, 52), (36, 48)])
def test_foreign_npz_at_a_size_the_patch_does_not_divide_is_refused_naming_the_file(tmp_path, size):
    _, jax = _foreign(tmp_path, vitkit.create_model(tiny_cfg(**JAX, image_size=(32, 48))))
    with pytest.raises(ValueError, match=re.escape(str(jax)) + r": .*not divisible by patch_size 8"):
        vitkit.load(jax, image_size=size)


def test_npz_to_vitkit_takes_the_hints_for_what_the_arrays_cannot_say(tmp_path):
    """Called directly, the converter takes the size, position embedding, eps and class names from ``hints``."""
    writer = randomise(vitkit.create_model(tiny_cfg(**JAX, pos_embed="sincos2d")), scale=0.1)
    _, jax = _foreign(tmp_path, writer)
    arrays = read_npz(jax)
    labels = [f"class {i}" for i in range(5)]
    hints = dict(image_size=(32, 48), pos_embed="none", norm_eps=1e-5, labels=labels, act="gelu", pooling="gap")
    cfg, state = npz_to_vitkit(arrays, str(jax), hints)
    assert cfg == tiny_cfg(image_size=(32, 48), pos_embed="none", pos_embed_prefix=False, norm_eps=1e-5, act="gelu",
                           pooling="gap", fc_norm=False)
    assert cfg.labels == labels
    assert state.keys() == writer.state_dict().keys()
    cfg, _ = npz_to_vitkit(arrays, str(jax), {})
    assert cfg == tiny_cfg(**JAX, image_size=224, pos_embed="sincos2d", pos_embed_prefix=False) and cfg.labels is None


@pytest.mark.parametrize("size", [(32, 64), (32, 48)])  # 33 rows; 25 rows, which also read as a 5x5 grid
def test_npz_to_vitkit_takes_the_checkpoint_size_from_the_hints_for_a_non_square_table(tmp_path, size):
    ours = randomise(vitkit.create_model(tiny_cfg(**JAX, image_size=size)), scale=0.1)
    _, jax = _foreign(tmp_path, ours)
    cfg, state = npz_to_vitkit(read_npz(jax), str(jax), {"image_size": size})
    assert cfg == ours.cfg
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())


def test_npz_whose_vitkit_config_puts_the_norm_after_pooling_fills_fc_norm(tmp_path):
    """The npz layout has one encoder_norm; a vitkit config entry with fc_norm on (gap pooling) says it is the norm
    after pooling, which is where vitkit puts it."""
    cfg = tiny_cfg(class_token=False, pooling="gap", pos_embed_prefix=False, fc_norm=True)
    ours = randomise(vitkit.create_model(cfg), scale=0.1).eval()
    plain = vitkit.create_model(dataclasses.replace(cfg, fc_norm=False))  # same tensors, the norm named "norm"
    plain.load_state_dict({k.replace("fc_norm.", "norm."): v for k, v in ours.state_dict().items()})

    def with_cfg(arrays):
        arrays[CONFIG_KEY] = np.frombuffer(json.dumps(cfg.to_dict()).encode("utf-8"), dtype=np.uint8).copy()
        return arrays

    _, path = _foreign(tmp_path, plain, name="fc.npz", edit=with_cfg)
    back = vitkit.load(path).eval()
    assert back.cfg == cfg and same_state(ours, back) and _agree(back, ours, cfg)


def test_hybrid_npz_with_a_patch_only_table_keeps_the_stem_in_the_big_vision_naming(tmp_path):
    """A hybrid without [CLS] rows in its table is written params/-prefixed, its ResNet stem included; timm's npz
    loader and vitkit read it back with parity."""
    def timm_hybrid():
        torch.manual_seed(0)
        return _create_vision_transformer_hybrid("vit_base_r50_s16_224", backbone=_resnetv2(layers=(1,)), img_size=32,
                                                 patch_size=1, embed_dim=32, depth=1, num_heads=2, num_classes=5,
                                                 no_embed_class=True, act_layer="gelu_tanh")

    theirs = randomise(timm_hybrid(), scale=0.1).eval()
    torch.save(theirs.state_dict(), tmp_path / "h.pth")
    ours = vitkit.load(tmp_path / "h.pth", heads=2, act="gelu_tanh").eval()
    assert ours.cfg.pos_embed_prefix is False
    own, jax = _foreign(tmp_path, ours)
    arrays = read_npz(own)
    assert "params/conv_root/kernel" in arrays and "params/block1/unit1/conv1/kernel" in arrays
    assert not any(k.startswith(("conv_root", "gn_root", "block")) for k in arrays)
    again = timm_hybrid().eval()
    again.load_pretrained(str(jax))
    x = torch.randn(2, 3, 32, 32)
    for path in (own, jax):
        back = vitkit.load(path).eval()
        assert (back.cfg.stem, back.cfg.hybrid_layers) == ("hybrid", (1,)) and same_state(ours, back)
        with torch.no_grad():
            assert max_diff(back(x), theirs(x)) <= 1e-4 and max_diff(again(x), theirs(x)) <= 1e-4


# --- malformed files: refused with the reason, naming what is wrong


def _edit(key, value=None):
    def edit(arrays):
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
        return arrays
    return edit


def _rename_all(arrays):
    return {k.replace("embedding", "embed"): v for k, v in arrays.items()}


MALFORMED = {
    "no-patch-kernel": (_rename_all, r"no 'embedding/kernel' \(with or without a .* prefix\); not a ViT npz"),
    "3d-patch-kernel": (_edit("embedding/kernel", np.zeros((8, 8, 32), np.float32)),
                        r"embedding/kernel must be \(P, P, C, D\), got \(8, 8, 32\)"),
    "non-square-patch-kernel": (_edit("embedding/kernel", np.zeros((8, 4, 3, 32), np.float32)),
                                r"embedding/kernel must be \(P, P, C, D\), got \(8, 4, 3, 32\)"),
    "2d-query-kernel": (_edit("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
                              np.zeros((32, 32), np.float32)),
                        r"attention query kernel must be \(D, heads, head_dim\), got \(32, 32\)"),
    "head-kernel-without-bias": (_edit("head/bias"), r"arrays vitkit does not know how to place: \['head/kernel'\]"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_foreign_npz_is_refused_with_the_reason(tmp_path, name):
    edit, message = MALFORMED[name]
    _, jax = _foreign(tmp_path, vitkit.create_model(tiny_cfg(**JAX)), edit=edit)
    with pytest.raises(ValueError, match=re.escape(str(jax)) + ": " + message):
        npz_to_vitkit(read_npz(jax), str(jax))


def test_npz_whose_vitkit_config_does_not_fit_the_arrays_is_refused_naming_the_file(tmp_path):
    def wider(arrays):
        cfg = tiny_cfg(width=64)
        arrays[CONFIG_KEY] = np.frombuffer(json.dumps(cfg.to_dict()).encode("utf-8"), dtype=np.uint8).copy()
        return arrays

    _, path = _foreign(tmp_path, vitkit.create_model(tiny_cfg()), edit=wider)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": the weights do not fit the model they describe"):
        vitkit.load(path)


# --- the writer


@pytest.mark.parametrize("kw, reason", [
    (dict(distilled=True), "distillation/register tokens"),
    (dict(reg_tokens=2), "distillation/register tokens"),
    (dict(class_token=False, pooling="gap", fc_norm=True),
     "fc_norm (the npz layout has one encoder_norm before pooling)"),
    (dict(patch_bias=False), "missing qkv/patch biases"),
    (dict(qkv_bias="qv"), "missing qkv/patch biases"),
    (dict(qkv_bias=False), "missing qkv/patch biases"),
    (dict(qk_norm=True), "qk-norm"),
    (dict(norm_pre=True), "norm_pre or an attention-pooling head"),
    (dict(pooling="map"), "norm_pre or an attention-pooling head"),
    (dict(rel_pos="per_block", pos_embed="none"), "a relative position bias"),
])
def test_npz_writer_refuses_each_thing_the_layout_cannot_hold_by_name(tmp_path, kw, reason):
    with pytest.raises(ValueError) as e:
        vitkit.save(vitkit.create_model(tiny_cfg(**kw)), tmp_path / "x.npz", format="npz")
    assert str(e.value) == (f"the Google npz layout cannot express this model: {reason}. "
                            "Save it as vitkit or timm instead.")
    assert list(tmp_path.iterdir()) == []
