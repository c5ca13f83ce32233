"""safe_io on hostile and damaged files: the safetensors library's own header checks (worded by vitkit), dtypes
relabelled over float data, pickles holding foreign objects (zip and legacy), malformed .npy headers inside an
.npz, and sharded checkpoints in a huggingface_hub cache (shards are symlinks into blobs/)."""

import argparse
import hashlib
import json
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitkit
from vitkit.weights.safe_io import (check_safetensors_header, check_tensor_dtypes, read_npz, read_safetensors,
                                    read_safetensors_metadata, read_sharded, read_state_file, read_torch)

from helpers import tiny_cfg

SAFETENSORS_READERS = [check_safetensors_header, read_safetensors, read_safetensors_metadata]


def _raw(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _j(d) -> bytes:
    return json.dumps(d).encode()


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


# --- 1. safetensors: the library validates, vitkit words it ------------------------------------------------
@pytest.mark.parametrize("header,data,reason", [
    (b"[" * 100_000, b"", "not a JSON object"),  # json.loads would hit RecursionError here
    (b'{"a":' * 50_000, b"", "nested too deeply"),
    (b"{not json", b"", "not valid safetensors JSON"),
    (b'{"\xff": 1}', b"", "not UTF-8"),
    (_j({"a": F32x2}), b"\0" * 4, r"need 8 data bytes but the file holds 4 \(truncated\)"),
    (_j({"a": F32x2}), b"\0" * 12, "4 bytes after the last tensor"),
    (_j({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
         "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}), b"\0" * 12, "'b'.*a gap or an overlap"),
    (_j({"a": F32x2, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}), b"\0" * 8,
     "'b'.*a gap or an overlap"),
    (_j({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}), b"\0" * 8, "'a'.*a gap or an overlap"),
    (_j({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}), b"\0" * 8,
     r"'a' of shape \[3\] and dtype F32 needs 12 bytes but its data_offsets \[0, 8\] span 8"),
    (_j({"a": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 8]}}), b"\0" * 8, "overflows"),
    (_j({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}), b"\0", "unknown dtype 'Q9'"),
    (_j({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), b"\0" * 4, "not valid safetensors JSON"),
    (_j({"a": {"dtype": "F32", "shape": [2]}}), b"\0" * 8, "missing field `data_offsets`"),
])
@pytest.mark.parametrize("reader", SAFETENSORS_READERS)
def test_safetensors_header_errors_come_from_the_library_in_plain_words(tmp_path, header, data, reason, reader):
    p = tmp_path / "bad.safetensors"
    _raw(p, header, data)
    with pytest.raises(ValueError, match=rf"bad.safetensors: not a valid safetensors file: .*{reason}") as e:
        reader(p)
    assert "\n" not in str(e.value) and "(safetensors: " in str(e.value)  # one line, with the library's words


@pytest.mark.parametrize("length,body,reason", [
    (10 ** 12, b"{}", "claims 1000000000000 bytes but the file has only 2 after the length field"),
    (1000, b"{}" + b" " * 10, "claims 1000 bytes but the file has only 12"),
    (200_000_000, b"{" + b" " * 100, "claims 200000000 bytes"),
])
def test_safetensors_header_length_larger_than_the_file(tmp_path, length, body, reason):
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", length) + body)
    for reader in SAFETENSORS_READERS:
        with pytest.raises(ValueError, match=f"h.safetensors: .*{reason}"):
            reader(p)


@pytest.mark.parametrize("content", [b"", b"abc", struct.pack("<Q", 0)])
def test_safetensors_too_short_or_empty_header(tmp_path, content):
    (tmp_path / "s.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match="s.safetensors: not a valid safetensors file"):
        read_safetensors(tmp_path / "s.safetensors")


def test_real_safetensors_truncated_in_the_data_and_in_the_header(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    save_file(dict(model.state_dict()), tmp_path / "m.safetensors", metadata={"format": "pt"})
    data = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.safetensors: .*but the file holds \d+ \(truncated\)"):
        read_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(data[: 8 + n // 2])
    with pytest.raises(ValueError, match=r"head.safetensors: .*header claims .*\(truncated or not a safetensors"):
        read_safetensors(tmp_path / "head.safetensors")
    # the complete file still reads, with its header and metadata
    state = read_safetensors(tmp_path / "m.safetensors")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    header = check_safetensors_header(tmp_path / "m.safetensors")
    assert header["cls_token"] == {"dtype": "F32", "shape": [1, 1, 32], "data_offsets": header["cls_token"][
        "data_offsets"]} and "__metadata__" not in header
    assert read_safetensors_metadata(tmp_path / "m.safetensors") == {"format": "pt"}


# --- 2. dtypes relabelled over float data ---------------------------------------------------------------
def test_check_tensor_dtypes_names_keys_and_dtypes_and_never_casts():
    state = {"w": torch.ones(2, 2), "idx": torch.arange(3, dtype=torch.int32), "mask": torch.ones(2, dtype=torch.bool),
             "h": torch.ones(2, dtype=torch.float16)}
    with pytest.raises(ValueError, match=r"ck.pt: 2 tensor\(s\) that must hold floating-point weights are stored as "
                                         r"bool/int32: 'idx' \(int32\), 'mask' \(bool\).*refused, not cast"):
        check_tensor_dtypes(state, "ck.pt")
    assert state["idx"].dtype == torch.int32 and state["mask"].dtype == torch.bool  # untouched
    check_tensor_dtypes(state, "ck.pt", float_keys=["w", "h", "absent"])  # only those must be float
    with pytest.raises(ValueError, match=r"ck.pt: 1 tensor\(s\) .* stored as int32: 'idx' \(int32\) "):
        check_tensor_dtypes(state, "ck.pt", float_keys=["w", "idx"])
    check_tensor_dtypes({"w": torch.ones(1, dtype=torch.bfloat16)}, "ok")  # half precisions are float


def test_relabelled_safetensors_dtype_is_caught_only_by_the_dtype_check(tmp_path):
    model = vitkit.create_model(tiny_cfg())
    save_file(dict(model.state_dict()), tmp_path / "clean.safetensors")
    check_tensor_dtypes(read_safetensors(tmp_path / "clean.safetensors"), "clean.safetensors")  # all float: fine
    p = tmp_path / "m.safetensors"
    data = (tmp_path / "clean.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["pos_embed"]["dtype"] = "I32"  # same 4 bytes an element: the byte span still matches
    header["blocks.0.attn.qkv.weight"]["dtype"] = "I32"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw))  # keep the header length, so the data offsets stay valid
    assert len(raw) == n
    p.write_bytes(data[:8] + raw + data[8 + n:])
    state = read_safetensors(p)  # the format itself is consistent: the library accepts it
    assert state["pos_embed"].dtype == torch.int32
    with pytest.raises(ValueError, match=r"m.safetensors: 2 tensor\(s\) .* int32: 'blocks.0.attn.qkv.weight' "
                                         r"\(int32\), 'pos_embed' \(int32\)"):
        check_tensor_dtypes(state, p)


# --- 3. pickles holding objects outside the weights-only allow-list ---------------------------------------
class _Custom:
    def __init__(self):
        self.x = 1


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("how", ["legacy", "zip", "zip-protocol4"])
@pytest.mark.parametrize("extra,names", [
    ({"args": argparse.Namespace(lr=0.1, model="deit_base")}, ["argparse.Namespace"]),
    ({"acc": np.float64(0.5)}, ["numpy._core.multiarray.scalar", "numpy.dtype"]),
    ({"dt": np.dtype("float32")}, ["numpy.dtype"]),
    ({"obj": _Custom()}, [f"{__name__}._Custom"]),
    ({"args": argparse.Namespace(lr=0.1), "acc": np.float64(0.5), "obj": _Custom()},
     ["argparse.Namespace", "numpy._core.multiarray.scalar", f"{__name__}._Custom"]),
])
def test_foreign_objects_in_a_checkpoint_are_named(tmp_path, how, extra, names):
    p = tmp_path / ("ckpt.pth" if how == "legacy" else "ckpt.pt")
    obj = {"model": {"w": torch.randn(3, 3)}, "tags": {"ok"}, **extra}  # a set is allowed: not named
    kw = dict(_use_new_zipfile_serialization=False) if how == "legacy" else (
        dict(pickle_protocol=4) if how == "zip-protocol4" else {})
    torch.save(obj, p, **kw)
    assert zipfile.is_zipfile(p) == (how != "legacy")
    with pytest.raises(ValueError) as e:
        read_torch(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: refused to load: the pickle holds Python objects other than tensors")
    for name in names:
        assert name in msg
    assert "\x1b" not in msg and "weights_only=False" not in msg and "\n" not in msg
    assert "set" not in msg.split("containers: ")[1].split(". vitkit")[0]
    assert "weights_only=True" in msg


def test_legacy_payload_never_runs_and_plain_legacy_state_loads(tmp_path):
    sentinel = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "x": _Payload(sentinel)}, tmp_path / "evil.pth",
               _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"evil.pth: refused.*builtins.getattr, pathlib.Path"):
        read_torch(tmp_path / "evil.pth")
    assert not sentinel.exists()
    state = {"w": torch.randn(4, 2), "b": torch.arange(3), "tags": {"a", "b"}}  # a set: __builtin__.set, allowed
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    back = read_state_file(tmp_path / "old.pth")
    assert back.keys() == state.keys() and back["tags"] == {"a", "b"}
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])


# --- 4. malformed .npy headers inside an .npz ---------------------------------------------------------------
@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ",  # unbalanced brace: tokenize.TokenError
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '''",  # open triple quote: tokenize.TokenError
    "{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }",  # unbalanced quotes
    "{'descr': \"<f4', 'fortran_order': False, 'shape': (2,)}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 300 + ")" * 300 + "}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }",
    "{'descr': 'zz9', 'fortran_order': False, 'shape': (2,), }",
    "{'descr': [('a', '<f4', (99999999999, 99999999999))], 'fortran_order': False, 'shape': (2,), }",
    "{1: 2}",
    "__import__('os').system('touch pwned')",
])
def test_npz_member_with_malformed_npy_header(tmp_path, header, monkeypatch):
    monkeypatch.chdir(tmp_path)
    h = header.encode()
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + b"\0" * 8
    good = np.lib.format
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        with z.open("ok.npy", "w") as f:
            good.write_array(f, np.zeros(2, np.float32))
        z.writestr("Transformer/encoder_norm/scale.npy", npy)
    with pytest.raises(ValueError, match=r"bad.npz: member 'Transformer/encoder_norm/scale.npy': its .npy header "
                                         r"is not valid \(\w+: ") as e:
        read_npz(tmp_path / "bad.npz")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "pwned").exists()


# --- 5. sharded checkpoints in the huggingface_hub cache ----------------------------------------------------
def _blob(repo, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    (repo / "blobs" / sha).write_bytes(data)
    return sha


def _hub_cache_sharded(tmp_path):
    """A real cache tree ``models--org--tiny/{blobs,refs,snapshots/<rev>}`` of a tiny model saved by vitkit in
    the transformers layout, its weights split in two safetensors shards, every file a relative symlink."""
    model = vitkit.create_model(tiny_cfg())
    vitkit.save(model, tmp_path / "saved", format="hf")
    state = read_safetensors(tmp_path / "saved" / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    repo = tmp_path / "hub" / "models--org--tiny"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    for d in (repo / "blobs", repo / "refs", snap):
        d.mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    files = {"config.json": (tmp_path / "saved" / "config.json").read_bytes()}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, tmp_path / name, metadata={"format": "pt"})
        files[name] = (tmp_path / name).read_bytes()
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
         "weight_map": {k: name for name, ks in shards.items() for k in ks}}).encode()
    for name, data in files.items():
        os.symlink(f"../../blobs/{_blob(repo, data)}", snap / name)
    return model, state, repo, snap


def test_sharded_checkpoint_in_the_hub_cache_loads(tmp_path):
    model, state, repo, snap = _hub_cache_sharded(tmp_path)
    assert (snap / "model-00001-of-00002.safetensors").is_symlink()
    back = read_sharded(snap / "model.safetensors.index.json")
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    loaded = vitkit.load(snap)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model.eval()(x), atol=1e-6)


@pytest.mark.parametrize("target", ["/etc/passwd", "other-repo", "outside-folder"])
def test_shard_symlink_out_of_the_cache_tree_is_refused(tmp_path, target):
    _, _, repo, snap = _hub_cache_sharded(tmp_path)
    shard = snap / "model-00002-of-00002.safetensors"
    real = shard.resolve()
    shard.unlink()
    if target == "other-repo":  # a blob of another repository in the same cache
        other = repo.parent / "models--evil--x" / "blobs"
        other.mkdir(parents=True)
        (other / "abc").write_bytes(real.read_bytes())
        os.symlink("../../../models--evil--x/blobs/abc", shard)
    elif target == "outside-folder":
        (tmp_path / "elsewhere.safetensors").write_bytes(real.read_bytes())
        os.symlink(tmp_path / "elsewhere.safetensors", shard)
    else:
        os.symlink(target, shard)
    with pytest.raises(ValueError, match=r"shard 'model-00002-of-00002.safetensors' is a symlink to .*, outside the "
                                         r"checkpoint folder and its hub cache blobs/; refused"):
        read_sharded(snap / "model.safetensors.index.json")
    with pytest.raises(ValueError, match="refused"):
        vitkit.load(snap)


def test_shard_symlinks_in_a_plain_folder_stay_in_the_folder(tmp_path):
    folder = tmp_path / "ck"
    (folder / "store").mkdir(parents=True)
    save_file({"a": torch.ones(2)}, folder / "store" / "real-a.safetensors")
    save_file({"b": torch.zeros(2)}, tmp_path / "b.safetensors")
    os.symlink("store/real-a.safetensors", folder / "a.safetensors")  # inside the folder: fine
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "a.safetensors"}}))
    assert torch.equal(read_sharded(folder / "model.safetensors.index.json")["a"], torch.ones(2))
    os.symlink("../b.safetensors", folder / "b.safetensors")  # out of a folder that is no hub cache
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "a.safetensors", "b": "b.safetensors"}}))
    with pytest.raises(ValueError, match=r"shard 'b.safetensors' is a symlink to .*, outside the checkpoint "
                                         r"folder; refused"):
        read_sharded(folder / "model.safetensors.index.json")


@pytest.mark.parametrize("shard", ["../../x.safetensors", "/etc/passwd", "sub/../../y.safetensors", "a\\b", "..", ".",
                                   ""])
def test_shard_names_must_be_plain_file_names(tmp_path, shard):
    _, _, _, snap = _hub_cache_sharded(tmp_path)
    index = snap / "evil.index.json"
    index.write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(ValueError, match="points outside the checkpoint folder; refused"):
        read_sharded(index)
