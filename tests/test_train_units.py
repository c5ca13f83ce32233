"""Pieces of the training engine: parameter groups, schedule, mixup/cutmix, EMA, checkpoints, configs."""

import errno
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_cfg
from vitkit import create_model
from vitkit.train import checkpoint as ckpt
from vitkit.train.config import TrainConfig, read_config_file
from vitkit.train.ema import ModelEma
from vitkit.train.mixup import Mixer, smooth_one_hot, soft_target_cross_entropy
from vitkit.train.optim import WarmupCosine, build_optimizer, layer_id, param_groups


def test_no_weight_decay_on_norms_biases_tokens_pos_embed():
    m = create_model(tiny_cfg())
    groups = param_groups(m, weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    free = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= free
    assert {"patch_embed.proj.weight", "blocks.1.mlp.fc1.weight", "head.weight"} <= decayed
    assert decayed | free == {n for n, _ in m.named_parameters()} and not decayed & free


def test_layer_wise_lr_decay_and_frozen_backbone():
    m = create_model(tiny_cfg(depth=3))
    scale = {n: g["lr_scale"] for g in param_groups(m, 0.05, layer_decay=0.5) for n in g["names"]}
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] == 1.0
    assert scale["blocks.2.attn.qkv.weight"] == 0.5 and scale["blocks.0.attn.qkv.weight"] == 0.125
    assert scale["pos_embed"] == scale["patch_embed.proj.weight"] == 0.0625
    opt = build_optimizer(m, "adamw", 1e-3, 0.05, layer_decay=0.5)
    WarmupCosine(opt, 1e-3, total=10, warmup=0)  # sets each group's lr from its lr_scale
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert math.isclose(lrs["blocks.0.mlp.fc2.weight"], 1e-3 * 0.125) and math.isclose(lrs["head.bias"], 1e-3)
    for n, p in m.named_parameters():
        p.requires_grad_(n.startswith("head."))
    assert {n for g in param_groups(m, 0.05) for n in g["names"]} == {"head.weight", "head.bias"}
    assert isinstance(build_optimizer(m, "sgd", 0.1, 0.0), torch.optim.SGD)


def test_warmup_cosine_values_and_state():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosine(opt, peak=1.0, total=12, warmup=2, min_lr=0.1)
    lrs = [s.lr_at(i) for i in range(13)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert math.isclose(lrs[7], 0.1 + 0.9 * 0.5) and math.isclose(lrs[12], 0.1)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    for _ in range(5):
        s.step()
    s2 = WarmupCosine(opt, 1.0, 12, 2, 0.1)
    s2.load_state_dict(s.state_dict())
    assert opt.param_groups[0]["lr"] == lrs[5]


def test_soft_target_loss_and_mixup_cutmix():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    t = smooth_one_hot(y, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(6))
    assert torch.allclose(soft_target_cross_entropy(logits, t), F.cross_entropy(logits, y, label_smoothing=0.1))
    x = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 8, 8).contiguous()
    mix = Mixer(4, mixup=0.8, smoothing=0.0)
    xm, tm = mix(x, y, torch.Generator().manual_seed(1))
    lam = float(tm[0, 0])  # sample 0 (label 0) mixed with sample 5 (label 1)
    assert 0 < lam < 1 and torch.allclose(xm[0], x[0] * lam + x[5] * (1 - lam))
    xm2, tm2 = mix(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(xm, xm2) and torch.equal(tm, tm2)  # same generator state, same mix
    cut = Mixer(4, cutmix=1.0, smoothing=0.0)
    xc, tc = cut(x, y, torch.Generator().manual_seed(3))
    pasted = float((xc[0] == 5).float().mean())  # fraction of sample 0 taken from sample 5
    assert math.isclose(float(tc[0, 1]), pasted, abs_tol=1e-6) and torch.allclose(tc.sum(1), torch.ones(6))


def test_ema_update():
    m = torch.nn.Linear(2, 1)
    ema = ModelEma(m, decay=0.9)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)  # first update: decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, 0.1 * w0 + 0.9 * (w0 + 1))
    ema.updates = 1000
    before = ema.module.weight.clone()
    ema.update(m)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * m.weight)
    assert not ema.module.weight.requires_grad


def test_checkpoint_roundtrip_weights_only_and_rng(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "w": torch.randn(3),
             "rng": ckpt.rng_state(), "nested": {"a": [1, 2.5, "x", None]}}
    expected = (random.random(), np.random.rand(), torch.rand(2))
    path = tmp_path / "checkpoints" / "step_00000003.pt"
    path.parent.mkdir()
    ckpt.save_checkpoint(state, path)
    back = ckpt.load_checkpoint(tmp_path)  # a run folder -> its latest checkpoint
    assert torch.equal(back["w"], state["w"]) and back["nested"] == state["nested"]
    ckpt.set_rng_state(back["rng"])
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "x": Evil()}, p)
    with pytest.raises(ValueError, match="evil.pt"):
        ckpt.load_checkpoint(p)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """RELIABILITY item 22: ENOSPC while saving -> clear error; the old checkpoint kept, no temp file."""
    path = tmp_path / "step_00000001.pt"
    old = {"format": ckpt.FORMAT, "format_version": 1, "w": torch.ones(4)}
    ckpt.save_checkpoint(old, path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", full)
    with pytest.raises(ckpt.CheckpointError, match=r"could not write .*step_00000001.pt: the disk is full; the previous"):
        ckpt.save_checkpoint({**old, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(ckpt.os, "fsync", real_fsync)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_prune_keeps_last_k(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for s in (5, 10, 15, 20):
        (d / f"step_{s:08d}.pt").write_bytes(b"x")
    (d / "best.pt").write_bytes(b"x")
    ckpt.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in d.iterdir()) == ["best.pt", "step_00000015.pt", "step_00000020.pt"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000020.pt"


def test_config_files_and_validation(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.002\nmodel-set: {width: 64}\nbetas: [0.9, 0.95]\n")
    d = read_config_file(y)
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **d})
    assert cfg.lr == 0.002 and cfg.model_overrides == {"width": 64} and cfg.betas == (0.9, 0.95)
    j = tmp_path / "c.json"
    j.write_text('{"learning_rate": 1}')
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict(read_config_file(j), where=str(j))
    with pytest.raises(ValueError, match="--epochs or --steps"):
        TrainConfig(model="m", data="digits", out="o").validate()
    with pytest.raises(ValueError, match="randaugment"):
        TrainConfig(model="m", data="digits", out="o", epochs=1, randaugment="9").validate()


@pytest.mark.parametrize("field,value,message", [
    ("lr", float("inf"), "lr must be a finite number, got inf"),
    ("lr", float("nan"), "lr must be a finite number, got nan"),
    ("lr", 1e38, r"lr must be in \(0, 10\]"),  # finite, but overflows Adam's first fp32 update
    ("lr", 0.0, r"lr must be in \(0, 10\]"),
    ("min_lr", float("nan"), "min_lr must be a finite number"),
    ("weight_decay", float("inf"), "weight_decay must be a finite number"),
    ("weight_decay", 2000.0, r"lr x weight_decay must be below 1"),
    ("warmup_epochs", float("inf"), "warmup_epochs must be a finite number"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("betas", (0.9, float("nan")), r"betas\[1\] must be a finite number"),
    ("betas", (0.9, 1.0), r"betas must each be in \[0, 1\)"),
    ("clip_grad", float("inf"), "clip_grad must be a finite number"),
    ("layer_decay", float("nan"), "layer_decay must be a finite number"),
    ("rotate", float("inf"), "rotate must be a finite number"),
    ("translate", 3.0, r"translate must be in \[0, 1\]"),
    ("mixup", float("inf"), "mixup must be a finite number"),
    ("lr", "fast", "lr must be a number"),
])
def test_float_settings_are_finite_and_bounded(field, value, message):
    """RELIABILITY item 41: inf, NaN and overflowing hyper-parameters are refused by name."""
    cfg = TrainConfig(model="m", data="digits", out="o", epochs=1).replace(**{field: value})
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_yaml_numbers_without_a_dot_are_read_as_numbers(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 1e-3\nweight-decay: 5e-2\n")  # YAML 1.1 reads these as strings
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **read_config_file(y), "model": "m", "data": "digits",
                                 "out": "o", "epochs": 1})
    cfg.validate()
    assert cfg.lr == 1e-3 and cfg.weight_decay == 0.05
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})


def test_run_lock_is_exclusive_and_a_stale_file_does_not_block(tmp_path):
    """RELIABILITY item 36 at the unit level: flock on RUN/.lock, per open file, released on close."""
    from vitkit.train.lock import RunLock, RunLockedError

    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=rf"process {os.getpid()} holds the lock {tmp_path}/.lock"):
        RunLock(tmp_path).acquire()
    first.release()
    assert (tmp_path / ".lock").exists()  # the file stays; only the flock matters
    with RunLock(tmp_path) as again:
        assert again.held


def test_layer_id_of_every_kind_of_parameter():
    for name in ("patch_embed.proj.weight", "cls_token", "dist_token", "reg_token", "pos_embed",
                 "rel_pos_bias.relative_position_bias_table"):  # BEiT's table shared by all blocks
        assert layer_id(name, 12) == 0, name
    assert layer_id("blocks.0.attn.qkv.weight", 12) == 1 and layer_id("blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("norm.weight", 12) == layer_id("head.weight", 12) == layer_id("head_dist.bias", 12) == 13
    # a model with every token: layer decay scales each like the embeddings, weight decay skips them
    m = create_model(tiny_cfg(distilled=True, reg_tokens=2))
    groups = param_groups(m, 0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    for name in ("cls_token", "dist_token", "reg_token", "pos_embed"):
        assert scale[name] == 0.5 ** 3 and decay[name] == 0.0, name
    assert scale["head_dist.weight"] == 1.0 and decay["head_dist.weight"] == 0.05


def test_build_optimizer_settings():
    m = create_model(tiny_cfg())
    adam = build_optimizer(m, "adamw", 3e-4, 0.05)
    assert isinstance(adam, torch.optim.AdamW)
    assert adam.defaults["lr"] == 3e-4 and adam.defaults["betas"] == (0.9, 0.999)
    assert all(g["lr"] == 3e-4 for g in adam.param_groups)
    assert build_optimizer(m, "adamw", 1e-3, 0.05, betas=[0.8, 0.95]).defaults["betas"] == (0.8, 0.95)
    sgd = build_optimizer(m, "sgd", 0.1, 0.0)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.1, 0.9, True)
    plain = build_optimizer(m, "sgd", 0.1, 0.0, momentum=0.0)
    assert (plain.defaults["momentum"], plain.defaults["nesterov"]) == (0.0, False)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        build_optimizer(m, "lamb", 0.1, 0.0)


def test_warmup_cosine_edges_and_state_dict():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    one = WarmupCosine(opt, peak=1.0, total=1, warmup=0, min_lr=0.25)  # a one-step run
    assert one.lr_at(0) == 1.0 and one.lr_at(1) == 0.25 and one.lr_at(5) == 0.25
    assert WarmupCosine(opt, 1.0, total=0, warmup=0).total == 1
    none = WarmupCosine(opt, peak=1.0, total=10, warmup=0)  # no warm-up: the cosine starts at step 0
    assert none.warmup == 0 and none.lr_at(0) == 1.0 and none.lr_at(1) < 1.0
    assert math.isclose(none.lr_at(5), 0.5) and none.lr_at(10) == 0.0  # min_lr defaults to 0
    assert WarmupCosine(opt, 1.0, total=4, warmup=9).warmup == 4  # capped at the run
    s = WarmupCosine(opt, peak=2.0, total=20, warmup=3, min_lr=0.1)
    assert opt.param_groups[0]["lr"] == s.lr_at(0) == 2.0 / 3  # applied on construction
    assert s.step() == s.lr_at(1) == opt.param_groups[0]["lr"]
    assert s.state_dict() == {"step_count": 1, "peak": 2.0, "total": 20, "warmup": 3, "min_lr": 0.1}


def test_param_groups_of_any_module():
    """A model without no_weight_decay() works (nothing extra skipped); names it lists may be modules
    (all their parameters skip decay); without layer decay there are just two groups."""
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = param_groups(plain, 0.1)
    assert [(g["names"], g["weight_decay"], g["lr_scale"]) for g in groups] == [
        (["0.weight"], 0.1, 1.0), (["0.bias", "1.weight", "1.bias"], 0.0, 1.0)]

    class WithEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.proj = torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4)

        def no_weight_decay(self):
            return {"emb"}

    decay = {n: g["weight_decay"] for g in param_groups(WithEmbedding(), 0.1) for n in g["names"]}
    assert decay == {"emb.weight": 0.0, "proj.weight": 0.1, "proj.bias": 0.0}
    vit = param_groups(create_model(tiny_cfg(depth=3)), 0.05)
    assert len(vit) == 2 and [g["weight_decay"] for g in vit] == [0.05, 0.0]


def test_checkpoint_files_errors_and_listing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    d = run / "checkpoints"
    d.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds no training checkpoint \(looked for checkpoints/step_\*.pt\)"):
        ckpt.load_checkpoint(run)
    assert ckpt.step_checkpoints(tmp_path / "nowhere") == [] and ckpt.latest_checkpoint(run) is None
    good = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "w": torch.ones(2)}
    for step in (100, 9, 20):
        ckpt.save_checkpoint({**good, "step": step}, d / f"step_{step:08d}.pt")
    (d / "best.pt").write_bytes(b"x")
    (d / "step_7.pt.tmp").write_bytes(b"x")
    expected = [(9, d / "step_00000009.pt"), (20, d / "step_00000020.pt"), (100, d / "step_00000100.pt")]
    assert ckpt.step_checkpoints(run) == ckpt.step_checkpoints(d) == expected  # run folder or its checkpoints
    st = ckpt.load_checkpoint(run)
    assert st["step"] == 100 and st["_path"] == str(d / "step_00000100.pt")
    assert ckpt.load_checkpoint(d / "step_00000009.pt")["step"] == 9

    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk.pt is not a readable vitkit training checkpoint: \w+Error"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "other", "format_version": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a vitkit training checkpoint \\(no format='vitkit-train'"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt is not a vitkit training checkpoint"):
        ckpt.load_checkpoint(tmp_path / "list.pt")
    torch.save({"format": ckpt.FORMAT, "format_version": 2}, tmp_path / "v2.pt")
    with pytest.raises(ValueError, match="v2.pt: unsupported checkpoint format_version 2"):
        ckpt.load_checkpoint(tmp_path / "v2.pt")

    # another write error than a full disk: its own words; nothing about a previous version when none
    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ckpt.os, "replace", denied)
    with pytest.raises(ckpt.CheckpointError, match=r"(?i)could not write .*new.pt: permission denied") as e:
        ckpt.save_checkpoint(good, d / "new.pt")
    assert e.value.errno == errno.EACCES
    with pytest.raises(ckpt.CheckpointError, match=r"(?i)step_00000009.pt: permission denied; the previous version is kept"):
        ckpt.save_checkpoint(good, d / "step_00000009.pt")
    assert sorted(p.name for p in d.iterdir()) == ["best.pt", "step_00000009.pt", "step_00000020.pt",
                                                    "step_00000100.pt", "step_7.pt.tmp"]  # no temporary file left


def test_write_bytes_atomic_goes_through_a_synced_temporary_file(tmp_path, monkeypatch):
    seen = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: seen.append(("fsync", fd)) or real_fsync(fd))
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: seen.append(("replace", a, b)) or real_replace(a, b))
    ckpt.write_bytes_atomic(tmp_path / "f.bin", b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"
    assert [s[0] for s in seen] == ["fsync", "replace", "fsync"]  # the file, the rename, then the folder
    assert seen[1][1] == tmp_path / f".f.bin.tmp-{os.getpid()}" and seen[1][2] == tmp_path / "f.bin"


def test_prune_keeps_everything_when_there_are_fewer_and_tolerates_a_vanished_file(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for s in (1, 2):
        (d / f"step_{s:08d}.pt").write_bytes(b"x")
    ckpt.prune(tmp_path, keep_last=3)
    assert len(list(d.iterdir())) == 2
    real = type(d).unlink

    def unlink(p, *a, **kw):
        real(p, *a, **kw)
        raise FileNotFoundError(p)  # removed by someone else meanwhile

    monkeypatch.setattr(type(d), "unlink", unlink)
    ckpt.prune(tmp_path, keep_last=1)
    assert [p.name for p in d.iterdir()] == ["step_00000002.pt"]


def test_rng_state_includes_cuda_generators_when_there_are_some(monkeypatch):
    got = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([1], dtype=torch.uint8)] * 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: got.setdefault("cuda", states))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    st = ckpt.rng_state()
    assert len(st["cuda"]) == 2
    ckpt.set_rng_state(st)
    assert got["cuda"] is st["cuda"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # another machine: the CUDA states are skipped
    got.clear()
    ckpt.set_rng_state(st)
    assert not got
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ckpt.rng_state()["cuda"] == []
    ckpt.set_rng_state(st)
    assert not got


def test_load_checkpoint_reads_onto_the_cpu_with_weights_only(tmp_path, monkeypatch):
    """A checkpoint written on a GPU must load on a CPU-only machine, and never unpickle code whatever
    torch's defaults: load_checkpoint asks torch.load for both (not observable with CPU tensors alone)."""
    path = tmp_path / "step_00000001.pt"
    ckpt.save_checkpoint({"format": ckpt.FORMAT, "format_version": 1, "w": torch.ones(2)}, path)
    calls = []
    real = torch.load
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    assert torch.equal(ckpt.load_checkpoint(path)["w"], torch.ones(2))
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_rng_state_types_and_an_os_error_without_text(tmp_path, monkeypatch):
    st = ckpt.rng_state()
    assert st["numpy"]["keys"].dtype == torch.int64 and st["torch"].dtype == torch.uint8

    def odd(src, dst):
        raise OSError("odd failure")  # no errno, no strerror

    monkeypatch.setattr(ckpt.os, "replace", odd)
    with pytest.raises(ckpt.CheckpointError, match=r"could not write .*x.pt: odd failure$"):
        ckpt.write_bytes_atomic(tmp_path / "x.pt", b"data")


# --- which weights a checkpoint infers with (checkpoint.prefers_ema / inference_weights), rule by rule


@pytest.mark.parametrize("last_val,has_ema,want", [
    ({"top1": 0.5, "ema_top1": 0.6}, True, True),     # the EMA validated higher
    ({"top1": 0.6, "ema_top1": 0.6}, True, False),    # a tie keeps the raw weights
    ({"top1": 0.6, "ema_top1": 0.5}, True, False),
    ({"top1": 0.5, "ema_top1": 0.6}, False, False),   # no EMA kept
    ({"ema_top1": 0.0}, True, False),                 # an EMA score of 0 counts as none
    ({"top1": 0.0}, True, False),                     # EMA never validated
    ({"top1": 0.0, "ema_top1": 0.0}, True, False),
    ({"top1": None, "ema_top1": 0.3}, True, True),
    ({}, True, False), (None, True, False), (None, False, False),
])
def test_prefers_ema_follows_the_last_validation(last_val, has_ema, want):
    from vitkit.train.checkpoint import prefers_ema

    assert prefers_ema(last_val, has_ema) is want


def test_inference_weights_of_each_kind_of_checkpoint():
    from vitkit.train.checkpoint import inference_weights

    raw, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    better_ema = {"top1": 0.4, "ema_top1": 0.5}
    assert inference_weights({"model": raw}) == ("model", raw)
    assert inference_weights({"model": raw, "ema": {"model": ema}, "progress": {"last_val": better_ema}}) == ("ema", ema)
    assert inference_weights({"model": raw, "ema": {"model": ema},
                              "progress": {"last_val": {"top1": 0.6, "ema_top1": 0.5}}}) == ("model", raw)
    assert inference_weights({"model": raw, "ema": None, "progress": {"last_val": better_ema}}) == ("model", raw)
    # a pre-training task names where its ViT is: a dotted key and a prefix (MAE's encoder, DINO's teacher)
    mae = {"model": {"encoder.a": torch.zeros(1), "decoder.b": torch.ones(1)},
           "task": {"inference": {"key": "model", "prefix": "encoder.", "which": "encoder"}}}
    which, sd = inference_weights(mae)
    assert which == "encoder" and list(sd) == ["a"]
    dino = {"model": {}, "task": {"state": {"teacher": {"backbone.x": torch.ones(1), "head.y": torch.ones(1)}},
                                  "inference": {"key": "task.state.teacher", "prefix": "backbone."}}}
    which, sd = inference_weights(dino)
    assert which == "model" and list(sd) == ["x"]  # "which" defaults to model
    with pytest.raises(ValueError, match="holds no task.state.teacher state dict"):
        inference_weights({"_path": "c.pt", "task": {"inference": {"key": "task.state.teacher", "prefix": ""}}})
    with pytest.raises(ValueError, match="c.pt: holds no model state dict"):
        inference_weights({"_path": "c.pt", "model": None})
