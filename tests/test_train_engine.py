"""The training engine: exact resume after SIGKILL (item 20), kill -9 during a checkpoint write
(item 19), non-finite loss (item 18), bad resumes (item 21), fine-tuning, linear probe."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.train import NonFiniteLossError, ResumeError, TrainConfig, Trainer, train
from vitkit.train.checkpoint import load_checkpoint, step_checkpoints

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = dict(model="vit_tiny_patch4_16", model_overrides=dict(width=32, depth=2, heads=4), data="digits",
            progress=False, workers=0)


def _losses(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _final_params(run_dir):
    return load_checkpoint(step_checkpoints(run_dir)[-1][1])["model"]


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# every source of randomness on: drop path, mixup + cutmix, RandAugment, random erasing, EMA
RESUME_CFG = dict(TINY, steps=30, batch_size=64, save_every_steps=5, log_every=1, keep_last=3,
                  drop_path=0.1, mixup=0.8, cutmix=1.0, randaugment="2,9", random_erasing=0.25, ema=0.99)

KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {src!r})
from vitkit.train import TrainConfig, train
from vitkit.train import checkpoint as ckpt
cfg = TrainConfig(**{cfg!r})
mode = sys.argv[1]
def hook(event, trainer, **info):
    if mode == "step" and event == "step" and info["step"] == 13:  # mid-epoch 1, after the step-10 checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
if mode == "write":  # die inside step 15's checkpoint write: its bytes are in the temporary file, not renamed
    real = os.replace
    def replace(src, dst):
        if str(dst).endswith("step_00000015.pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    ckpt.os.replace = replace
train(cfg, hooks=[hook])
print("finished without being killed")
"""


def _killed_run(tmp_path, mode):
    out = tmp_path / f"killed-{mode}"
    script = KILL_SCRIPT.format(src=SRC, cfg=dict(RESUME_CFG, out=str(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    p = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    return out


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    """RELIABILITY item 20 (and 19): a run SIGKILLed mid-epoch, and one SIGKILLed inside a checkpoint
    write, each resumed, end with the same per-step losses and torch.equal parameters."""
    full = tmp_path / "full"
    train(TrainConfig(**RESUME_CFG, out=str(full)))
    ref_losses, ref_params = _losses(full), _final_params(full)
    assert sorted(ref_losses) == list(range(1, 31))

    killed = _killed_run(tmp_path, "step")
    assert [s for s, _ in step_checkpoints(killed)] == [5, 10]  # killed at step 13, mid-epoch (22 steps/epoch)
    assert max(_losses(killed)) == 13
    train(TrainConfig(**RESUME_CFG, out=str(killed), resume="auto"))

    # item 19: killed while writing step 15's checkpoint: steps 5 and 10 intact, the temp file ignored
    torn = _killed_run(tmp_path, "write")
    ck = torn / "checkpoints"
    assert [s for s, _ in step_checkpoints(torn)] == [5, 10]
    assert any(p.name.startswith(".step_00000015.pt.tmp") for p in ck.iterdir())
    assert load_checkpoint(ck / "step_00000010.pt")["progress"]["global_step"] == 10
    train(TrainConfig(**RESUME_CFG, out=str(torn), resume="auto"))
    assert not any(p.name.startswith(".") for p in ck.iterdir())  # the torn temporary file is cleaned up

    for run in (killed, torn):
        losses, params = _losses(run), _final_params(run)
        assert losses == ref_losses  # the same float at every step, 1..30
        assert params.keys() == ref_params.keys()
        assert all(torch.equal(params[k], ref_params[k]) for k in ref_params)


def test_non_finite_loss_stops_before_the_step_and_keeps_checkpoint(tmp_path):
    """RELIABILITY item 18: NaN at step 5 -> stops before the optimizer step, names the step;
    the step-3 checkpoint is untouched and no later one is written."""
    cfg = TrainConfig(**dict(TINY, steps=10, batch_size=64, save_every_steps=3, log_every=1, mixup=0.0, cutmix=0.0),
                      out=str(tmp_path / "run"))
    tr = Trainer(cfg).setup()
    bad = tr.epoch_order(0)[4 * 64]  # first image of step 5's batch
    tr.train_ds.images[bad] = float("nan")
    seen = {}

    def hook(event, trainer, **info):
        if event == "step" and info["step"] == 4:
            seen["ckpt"] = _snapshot(tmp_path / "run" / "checkpoints")
            seen["params"] = {k: v.clone() for k, v in trainer.raw.state_dict().items()}

    tr.hooks.append(hook)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5 .*before the optimizer step.*step_00000003.pt"):
        tr.fit()
    assert _snapshot(tmp_path / "run" / "checkpoints") == seen["ckpt"] and list(seen["ckpt"]) == ["step_00000003.pt"]
    assert all(torch.equal(v, seen["params"][k]) for k, v in tr.raw.state_dict().items())  # no step taken


def test_bad_resume_is_refused_and_changes_nothing(tmp_path):
    """RELIABILITY item 21: a missing path, another architecture, another class count."""
    run = tmp_path / "run"
    train(TrainConfig(**TINY, steps=2, batch_size=64, out=str(run)))
    before = _snapshot(run)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        train(TrainConfig(**TINY, steps=4, out=str(run), resume=str(tmp_path / "nope.pt")))
    other = dict(TINY, model_overrides=dict(width=48, depth=2, heads=4))
    with pytest.raises(ResumeError, match=r"another architecture \(width: 32 != 48\)"):
        train(TrainConfig(**other, steps=4, out=str(run), resume=str(run)))
    with pytest.raises(ResumeError, match="10 classes.*the data has 2"):
        train(TrainConfig(**dict(TINY, data="lfw-faces"), steps=4, out=str(run), resume=str(run)))
    assert _snapshot(run) == before


def test_fine_tune_16px_10_classes_to_32px_2_classes_learns(tmp_path):
    """A digits model saved at 16x16 (10 classes) fine-tuned at 32x32 on lfw-faces (2 classes):
    head replaced, position embedding resampled, and it learns (well above 50 % chance)."""
    pre = tmp_path / "pre"
    train(TrainConfig(**dict(TINY, model_overrides=dict(width=48, depth=3, heads=4)), epochs=3, out=str(pre)))
    src = vitkit.load(pre / "model")
    assert src.cfg.image_size == 16 and src.cfg.num_classes == 10
    logs = []
    tr = Trainer(TrainConfig(model=str(pre / "model"), data="lfw-faces", image_size=32, epochs=25, batch_size=32,
                             lr=1e-3, warmup_epochs=2, progress=False, out=str(tmp_path / "ft")), log=logs.append)
    tr.setup()
    text = "\n".join(logs)
    assert "head replaced: 10 -> 2 classes" in text and "grid 4x4 -> 8x8" in text
    m = tr.raw
    assert m.cfg.image_size == 32 and m.cfg.num_classes == 2 and m.cfg.labels == ["face", "non-face"]
    assert torch.equal(m.head.weight, torch.zeros_like(m.head.weight))
    assert torch.equal(m.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)  # backbone carried over
    assert torch.allclose(m.pos_embed, vitkit.resample_pos_embed(src.pos_embed, (8, 8), (4, 4), 1))
    summary = tr.fit()
    best = max(summary["val_top1"], summary["ema_top1"] or 0)
    assert best >= 0.75, summary  # 30 of 40 or more; chance is 50 %
    assert vitkit.load(tmp_path / "ft" / "model").cfg.image_size == 32


def test_linear_probe_trains_only_the_head(tmp_path):
    pre = tmp_path / "pre"
    train(TrainConfig(**TINY, steps=2, out=str(pre)))
    tr = Trainer(TrainConfig(**dict(TINY, model=str(pre / "model"), model_overrides=None), steps=3, linear_probe=True,
                             ema=None,
                             out=str(tmp_path / "probe"))).setup()
    before = {k: v.clone() for k, v in tr.raw.state_dict().items()}
    tr.fit()
    after = tr.raw.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    base = dict(TINY, steps=4, batch_size=32, drop_path=0.0, ema=None, log_every=1, lr=3e-3, warmup_epochs=0)
    train(TrainConfig(**base, out=str(tmp_path / "a1")))
    train(TrainConfig(**base, accum_steps=4, out=str(tmp_path / "a4")))
    l1, l4 = _losses(tmp_path / "a1"), _losses(tmp_path / "a4")
    assert l1.keys() == l4.keys() and all(abs(l1[k] - l4[k]) < 1e-5 for k in l1)
    p1, p4 = _final_params(tmp_path / "a1"), _final_params(tmp_path / "a4")
    assert all(torch.allclose(p1[k], p4[k], atol=1e-5) for k in p1)
