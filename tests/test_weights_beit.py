"""BEiT checkpoints: timm's ``beit_*`` state dicts and transformers' Beit folders, each saved by the peer
from a random initialisation, load with the peer's logits; vitkit writes both layouts back."""

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

import vitkit

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise, same_state

TINY_TIMM = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3)
TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
               patch_size=8)
TOL = 1e-4  # fp32; these reach ~1e-6


def _x(seed=0, size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_beit_base_layout_loads_with_timms_logits_and_saves_back(tmp_path, suffix):
    theirs = randomise(timm.create_model("beit_base_patch16_224", **TINY_TIMM)).eval()
    path = tmp_path / f"beit{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(theirs.state_dict(), path)
    ours = vitkit.load(path)
    c = ours.cfg
    assert (c.rel_pos, c.qkv_bias, c.pooling, c.use_fc_norm, c.pos_embed, c.heads, c.image_hw) == \
        ("per_block", "qv", "gap", True, "none", 4, (32, 32))
    assert c.layer_scale_init is not None and ours.load_info["format"] == "timm"
    x = _x()
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= TOL
    # back to timm's Beit layout: gamma_1/gamma_2, read by timm strictly, the same logits
    vitkit.save(ours, tmp_path / f"back{suffix}", format="timm")
    back = vitkit.weights.sniff.read_weights_file(tmp_path / f"back{suffix}")
    assert "blocks.0.gamma_1" in back and "blocks.0.ls1.gamma" not in back
    again = timm.create_model("beit_base_patch16_224", **TINY_TIMM).eval()
    again.load_state_dict(back, strict=True)
    with torch.no_grad():
        assert max_diff(again(x), theirs(x)) <= TOL
    assert same_state(ours, vitkit.load(tmp_path / f"back{suffix}"))


def test_timm_beit_shared_table_token_pooling_and_abs_pos_embed(tmp_path):
    from timm.models.beit import Beit

    theirs = randomise(Beit(**TINY_TIMM, global_pool="token", use_abs_pos_emb=True, use_rel_pos_bias=False,
                            use_shared_rel_pos_bias=True, init_values=1e-5)).eval()
    save_file(theirs.state_dict(), tmp_path / "b.safetensors")
    ours = vitkit.load(tmp_path / "b.safetensors")
    assert (ours.cfg.rel_pos, ours.cfg.pooling, ours.cfg.pos_embed) == ("shared", "cls", "learned")
    with torch.no_grad():
        assert max_diff(ours(_x()), theirs(_x())) <= TOL


def test_old_files_with_a_stored_index_and_loading_at_another_size(tmp_path):
    theirs = randomise(timm.create_model("beit_base_patch16_224", **TINY_TIMM)).eval()
    state = dict(theirs.state_dict())
    for i in range(2):  # older timm and the BEiT repository saved the index as a buffer
        state[f"blocks.{i}.attn.relative_position_index"] = theirs.blocks[i].attn.relative_position_index
    torch.save({"model": state}, tmp_path / "old.pth")
    ours = vitkit.load(tmp_path / "old.pth", image_size=48)  # the tables resampled as timm resamples them
    assert ours.load_info["ignored_keys"] == [f"blocks.{i}.attn.relative_position_index" for i in range(2)]
    big = timm.create_model("beit_base_patch16_224", **dict(TINY_TIMM, img_size=48)).eval()
    big.load_state_dict(timm.models.beit.checkpoint_filter_fn(state, big))
    with torch.no_grad():
        assert max_diff(ours(_x(size=48)), big(_x(size=48))) <= TOL


def test_timm_hub_folder_of_a_beit_written_by_us_loads_in_timm_and_back(tmp_path):
    ours = randomise(vitkit.create_model(tiny_cfg(rel_pos="shared", qkv_bias="qv", pooling="gap",
                                                  pos_embed="none", layer_scale_init=0.1))).eval()
    vitkit.save(ours, tmp_path / "folder", format="timm")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    assert type(theirs).__name__ == "Beit"
    with torch.no_grad():
        assert max_diff(ours(_x()), theirs(_x())) <= TOL
    assert same_state(ours, vitkit.load(tmp_path / "folder"))


def test_timm_cannot_express_a_k_bias_with_relative_positions(tmp_path):
    model = vitkit.create_model(tiny_cfg(rel_pos="per_block"))
    with pytest.raises(ValueError, match=r"timm's Beit cannot express a k bias"):
        vitkit.save(model, tmp_path / "folder", format="timm")


def _hf_beit(tmp_path, cls=transformers.BeitForImageClassification, **kw):
    kw = {**TINY_HF, "use_mean_pooling": True, "use_relative_position_bias": True, "layer_scale_init_value": 0.1,
          **kw}
    theirs = randomise(cls(transformers.BeitConfig(**kw))).eval()
    theirs.save_pretrained(tmp_path)
    return theirs


def test_hf_beit_for_image_classification_mean_pooling_matches_transformers(tmp_path):
    theirs = _hf_beit(tmp_path, num_labels=3, id2label={i: f"c{i}" for i in range(3)})
    ours = vitkit.load(tmp_path)
    c = ours.cfg
    assert (c.rel_pos, c.qkv_bias, c.pooling, c.use_fc_norm, c.pos_embed, c.norm_eps, c.layer_scale_init) == \
        ("per_block", "qv", "gap", True, "none", 1e-12, 0.1)
    assert ours.labels == ["c0", "c1", "c2"] and ours.load_info["model_type"] == "beit"
    with torch.no_grad():
        assert max_diff(ours(_x()), theirs(pixel_values=_x()).logits) <= TOL
    # back to a folder transformers reads: the same logits, and the same tensors when read again
    vitkit.save(ours, tmp_path / "back", format="hf")
    again = transformers.BeitForImageClassification.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert max_diff(again(pixel_values=_x(1)).logits, theirs(pixel_values=_x(1)).logits) <= TOL
    assert same_state(ours, vitkit.load(tmp_path / "back"))


@pytest.mark.parametrize("kw", [
    dict(use_mean_pooling=False, use_relative_position_bias=False, use_shared_relative_position_bias=True,
         use_absolute_position_embeddings=True, layer_scale_init_value=0.0, layer_norm_eps=1e-6),
    dict(use_mean_pooling=True, hidden_act="gelu_pytorch_tanh"),
])
def test_hf_beit_model_shared_bias_cls_pooling_and_abs_pos_embed_match_transformers(tmp_path, kw):
    theirs = _hf_beit(tmp_path, cls=transformers.BeitModel, **kw)
    ours = vitkit.load(tmp_path)
    assert ours.cfg.num_classes == 0 and ours.cfg.norm_eps == kw.get("layer_norm_eps", 1e-12)
    with torch.no_grad():
        out = theirs(pixel_values=_x())
        assert max_diff(ours(_x()), out.pooler_output) <= TOL
        if not kw["use_mean_pooling"]:  # with mean pooling transformers' last_hidden_state has no final norm
            assert max_diff(ours.forward_features(_x()), out.last_hidden_state) <= TOL
    vitkit.save(ours, tmp_path / "back", format="hf")
    again = transformers.BeitModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert max_diff(again(pixel_values=_x()).pooler_output, out.pooler_output) <= TOL


def test_timm_beit_saved_as_hf_and_hf_beit_saved_as_timm(tmp_path):
    theirs = randomise(timm.create_model("beit_base_patch16_224", **TINY_TIMM)).eval()
    save_file(theirs.state_dict(), tmp_path / "t.safetensors")
    vitkit.save(vitkit.load(tmp_path / "t.safetensors"), tmp_path / "hf", format="hf")
    hf = transformers.BeitForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert max_diff(hf(pixel_values=_x()).logits, theirs(_x())) <= TOL


def test_hf_beit_both_tables_and_writer_refusals(tmp_path):
    _hf_beit(tmp_path / "both", use_shared_relative_position_bias=True)
    with pytest.raises(ValueError, match="both per layer and shared"):
        vitkit.load(tmp_path / "both")
    with pytest.raises(ValueError, match="transformers' BEiT cannot express this model: it has a k bias"):
        vitkit.save(vitkit.create_model(tiny_cfg(rel_pos="per_block")), tmp_path / "x", format="hf")
    assert not (tmp_path / "x").exists()


def test_npz_refuses_beit_blocks(tmp_path):
    with pytest.raises(ValueError, match="npz layout cannot express this model: missing qkv/patch biases; a relative"):
        vitkit.save(vitkit.create_model(tiny_cfg(rel_pos="shared", qkv_bias="qv")), tmp_path / "b.npz", format="npz")
    assert not (tmp_path / "b.npz").exists()


# --- the relative-position pieces on what the models above do not reach: non-square grids, dtypes, devices


@pytest.mark.parametrize("old,new", [((3, 4), (5, 6)), ((4, 2), (6, 3)), ((2, 5), (4, 5))])
def test_non_square_rel_pos_tables_resize_as_timm_does(old, new):
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    from vitkit.layers import resize_rel_pos_table

    torch.manual_seed(0)
    rows = lambda g: (2 * g[0] - 1) * (2 * g[1] - 1) + 3
    table = torch.randn(rows(old), 3)
    ours = resize_rel_pos_table(table, new, old)
    theirs = resize_rel_pos_bias_table(table, new, (rows(new), 3), old_window_size=old)
    assert ours.shape == (rows(new), 3) and max_diff(ours, theirs) < 1e-5
    assert torch.equal(ours[-3:], table[-3:])  # the [CLS] rows are kept


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_resized_rel_pos_table_keeps_the_dtype(dtype):
    from vitkit.layers import resize_rel_pos_table

    table = torch.randn(7 * 7 + 3, 2).to(dtype)
    out = resize_rel_pos_table(table, (6, 6), (4, 4))
    assert out.dtype == dtype
    assert torch.equal(out, resize_rel_pos_table(table.float(), (6, 6), (4, 4)).to(dtype))


def test_rel_pos_pieces_stay_on_the_device_asked_for():
    """On the meta device (the only other device a CPU build has): the index, a resized table, and the
    index rebuilt by init_buffers are made where they are asked to be, not on the CPU."""
    from vitkit.layers import RelPosBias, rel_pos_index, resize_rel_pos_table

    assert rel_pos_index((2, 3), device="meta").device.type == "meta"
    assert torch.equal(rel_pos_index((2, 3), device="cpu"), rel_pos_index((2, 3)))
    assert resize_rel_pos_table(torch.randn(5 * 5 + 3, 2, device="meta"), (4, 4), (3, 3)).device.type == "meta"
    bias = RelPosBias(tiny_cfg(image_size=32, patch_size=8, rel_pos="shared"))
    bias.init_buffers("meta")
    assert bias.relative_position_index.device.type == "meta"
    bias.init_buffers()  # default: where the index is
    assert bias.relative_position_index.device.type == "meta"
