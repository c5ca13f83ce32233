"""RELIABILITY.md items 1-9: hostile, damaged or mismatched checkpoint files get a clear error and run nothing."""

import argparse
import json
import struct
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.cli.main import main
from vitkit.weights.safe_io import check_safetensors_header, read_npz, read_sharded

from helpers import tiny_cfg


class _Payload:
    """Unpickling this would create a file: the test checks it never does."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def _timm_file(tmp_path, name="m.safetensors", **kw):
    model = vitkit.create_model(tiny_cfg(**kw))
    path = tmp_path / name
    vitkit.save(model, path, format="timm")
    return model, path


# 1 ---------------------------------------------------------------------------------
def test_1_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "x": _Payload(sentinel)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"refused.*pathlib"):
        vitkit.load(tmp_path / "evil.pth")
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitkit: error:") and "weights_only=True" in err and "Traceback" not in err
    assert not sentinel.exists() and not (tmp_path / "out").exists()


# 2 ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_2_torchscript_archive_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ts.pt")
    with pytest.raises(ValueError, match="TorchScript archive"):
        vitkit.load(tmp_path / "ts.pt")


@pytest.mark.parametrize("name", ["old.pth", "old.tar"])
def test_2_legacy_tar_checkpoint_is_refused(tmp_path, name):
    (tmp_path / "storages").write_bytes(b"\0" * 16)
    with tarfile.open(tmp_path / name, "w") as t:
        t.add(tmp_path / "storages", arcname="storages")
    with pytest.raises(ValueError, match="legacy tar"):
        vitkit.load(tmp_path / name)


def test_2_modern_checkpoint_named_pth_tar_loads(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model_best.pth.tar")  # a zip despite its name
    assert vitkit.load(tmp_path / "model_best.pth.tar", heads=4).cfg == model.cfg


# 3 ---------------------------------------------------------------------------------
def test_3_extra_python_objects_are_named(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=0.1), "acc": np.float64(0.5)},
               tmp_path / "ckpt.pth")
    with pytest.raises(ValueError) as e:
        vitkit.load(tmp_path / "ckpt.pth")
    assert "argparse.Namespace" in str(e.value) and "numpy" in str(e.value) and "ckpt.pth" in str(e.value)


# 4 ---------------------------------------------------------------------------------
def _raw_safetensors(path, header: dict, data: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


@pytest.mark.parametrize("header,data,msg", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12, "a gap"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "an overlap"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unknown dtype"),
])
def test_4_bad_safetensors_headers(tmp_path, header, data, msg):
    _raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=msg):
        vitkit.load(tmp_path / "bad.safetensors")


def test_4_header_length_larger_than_file(tmp_path):
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    with pytest.raises(ValueError, match="header claims"):
        check_safetensors_header(tmp_path / "h.safetensors")


# 5 ---------------------------------------------------------------------------------
def test_5_missing_extra_and_misshaped_keys_are_listed(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    state = dict(model.state_dict())
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.proj.weight"] = torch.zeros(32, 16)
    state["blocks.0.attn.q_norm.weight"] = torch.zeros(8)
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(ValueError) as e:
        vitkit.load(tmp_path / "m.safetensors", heads=4)
    msg = str(e.value)
    assert "missing keys ['blocks.1.mlp.fc2.bias']" in msg
    assert "unexpected keys ['blocks.0.attn.q_norm.weight']" in msg
    assert "blocks.0.attn.proj.weight: file (32, 16) != model (32, 32)" in msg


def test_5_vitkit_folder_with_another_grid_is_an_error_unless_resampling_is_asked(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    vitkit.save(model, tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["model"]["image_size"] = 48  # the config now disagrees with the stored 4x4 grid
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="pos_embed"):
        vitkit.load(tmp_path / "ck")
    vitkit.save(model, tmp_path / "ok")
    big = vitkit.load(tmp_path / "ok", image_size=48)  # asked for: resampled 4x4 -> 6x6
    assert big.cfg.image_hw == (48, 48) and big.pos_embed.shape == (1, 1 + 36, 32)


# 6 ---------------------------------------------------------------------------------
def _hf_folder(tmp_path, **overrides):
    cfg = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               image_size=32, patch_size=8)
    cfg.update(overrides)
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_6_auto_map_is_refused_and_nothing_is_imported(tmp_path):
    folder = _hf_folder(tmp_path, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    sentinel = tmp_path / "imported"
    (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    with pytest.raises(ValueError, match="auto_map"):
        vitkit.load(folder)
    assert not sentinel.exists() and "modeling_evil" not in sys.modules


def test_6_unknown_model_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model_type 'swin'"):
        vitkit.load(_hf_folder(tmp_path, model_type="swin"))


def test_6_absurd_sizes_are_refused_before_reading_weights(tmp_path):
    folder = _hf_folder(tmp_path, hidden_size=10 ** 9)
    (folder / "model.safetensors").write_bytes(b"not even read")
    with pytest.raises(ValueError, match="'hidden_size' must be an integer in"):
        vitkit.load(folder)
    folder = _hf_folder(tmp_path, hidden_size=32, image_size=10 ** 7)
    with pytest.raises(ValueError, match="image_size"):
        vitkit.load(folder)


# 7 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shard", ["../../x.safetensors", "/etc/passwd", "sub/../../y.safetensors"])
def test_7_shard_names_escaping_the_folder_are_refused(tmp_path, shard):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(ValueError, match="outside the checkpoint folder"):
        read_sharded(folder / "model.safetensors.index.json")


# 8 ---------------------------------------------------------------------------------
def test_8_npz_with_object_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="holds Python objects"):
        vitkit.load(tmp_path / "obj.npz")


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-5,), }",
    "not a dict at all",
])
def test_8_npz_with_corrupt_header(tmp_path, header):
    h = header.encode()
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + b"\0" * 16
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("embedding/kernel.npy", npy)
    with pytest.raises(ValueError, match="bad.npz"):
        read_npz(tmp_path / "bad.npz")


# 9 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,fmt", [("m.safetensors", "timm"), ("m.pth", "timm"), ("m.npz", "npz")])
def test_9_truncated_checkpoints(tmp_path, name, fmt):
    vitkit.save(vitkit.create_model(tiny_cfg()), tmp_path / name, format=fmt)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=name):
        vitkit.load(tmp_path / name)


def test_failed_save_keeps_the_earlier_file(tmp_path):
    model, path = _timm_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError):  # npz cannot hold LayerScale: refused before writing anything
        vitkit.save(vitkit.create_model(tiny_cfg(layer_scale_init=1e-5)), tmp_path / "x.npz", format="npz")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("kw", [dict(), dict(distilled=True, representation_size=16), dict(reg_tokens=3, pooling="gap",
                                class_token=False, pos_embed_prefix=False, layer_scale_init=0.1, qkv_bias=False),
                                dict(num_classes=0, pos_embed="sincos2d", patch_bias=False, fc_norm=True)])
def test_expected_shapes_are_the_built_models(kw):
    from vitkit.weights.checks import expected_shapes

    model = vitkit.create_model(tiny_cfg(**kw))
    assert expected_shapes(model.cfg) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_loaded_model_is_trainable_and_independent_of_the_file(tmp_path):
    model, path = _timm_file(tmp_path)
    before = path.read_bytes()
    loaded = vitkit.load(path, heads=4)
    assert all(p.requires_grad and not p.is_meta for p in loaded.parameters())
    loaded.train()
    loaded(torch.randn(2, 3, 32, 32)).sum().backward()
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)
    assert path.read_bytes() == before
