"""The training engine: exact resume after SIGKILL (item 20), kill -9 during a checkpoint write
(item 19), non-finite loss (item 18), bad resumes (item 21), fine-tuning, linear probe."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.train import engine
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


# --- the engine's use of clip_grad, warm-up and EMA (issue 15: each survived a mutation) ------------

def _grad_norm(params):
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])))


def _one_step_update(tmp_path, name, clip_grad):
    """One plain-SGD step (no momentum, no weight decay, no warm-up): the update is lr x the gradient
    the optimizer saw. Returns (norm of the gradient the optimizer stepped with, norm of the update)."""
    cfg = TrainConfig(**dict(TINY, steps=1, batch_size=64, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.1,
                             warmup_epochs=0, ema=None, clip_grad=clip_grad), out=str(tmp_path / name))
    tr = Trainer(cfg).setup()
    before = [p.detach().clone() for p in tr.raw.parameters()]
    seen = []
    real_step = tr.optimizer.step

    def step(*a, **kw):
        if not a and not kw:  # the engine's step (the checkpoint's optimizer-state init calls step(closure=None))
            seen.append(_grad_norm(list(tr.raw.parameters())))
        return real_step(*a, **kw)

    tr.optimizer.step = step
    tr.fit()
    update = float(torch.linalg.vector_norm(torch.stack([(p.detach() - b).norm()
                                                         for p, b in zip(tr.raw.parameters(), before)])))
    assert len(seen) == 1
    return seen[0], update


def test_clip_grad_bounds_the_gradient_norm_of_the_step(tmp_path):
    """The engine clips the global gradient norm to clip_grad before the optimizer step: with a tiny
    threshold the step's gradient norm is the threshold and the SGD update lr x threshold, far smaller
    than the unclipped step's."""
    free_norm, free_update = _one_step_update(tmp_path, "free", None)
    clip = 1e-3
    assert free_norm > 100 * clip  # the threshold really bites
    assert math.isclose(free_update, 0.1 * free_norm, rel_tol=1e-3)
    norm, update = _one_step_update(tmp_path, "clipped", clip)
    assert norm <= clip * (1 + 1e-4) and math.isclose(norm, clip, rel_tol=1e-3)
    assert math.isclose(update, 0.1 * clip, rel_tol=1e-3)
    assert update < free_update / 100


def _logged_lrs(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["lr"] for r in rows if r["kind"] == "train"}


def test_engine_warms_the_learning_rate_up_linearly_to_the_peak(tmp_path):
    """The lr logged at step k (the one that step used) is peak * k / warmup through the warm-up, the
    peak at its end, then falls; the warm-up is warmup_epochs x steps per epoch, capped at a quarter of
    the run. layer_decay makes the first group's lr a fraction of the logged (unscaled) one."""
    peak = 2e-3
    base = dict(TINY, batch_size=64, lr=peak, min_lr=0.0, log_every=1, ema=None, layer_decay=0.5)
    tr = Trainer(TrainConfig(**base, steps=12, warmup_epochs=1.0, out=str(tmp_path / "capped"))).setup()
    assert tr.steps_per_epoch == 22 and tr.schedule.warmup == 3  # 22 steps capped to 12 // 4
    assert tr.optimizer.param_groups[0]["lr_scale"] == 0.5 ** 3  # embeddings of a depth-2 model
    tr.fit()
    lrs = _logged_lrs(tmp_path / "capped")
    assert sorted(lrs) == list(range(1, 13))
    for k in (1, 2, 3):
        assert math.isclose(lrs[k], peak * k / 3, rel_tol=1e-9), (k, lrs)
    assert lrs[4] == peak  # the cosine's start (t = 0)
    assert math.isclose(lrs[5], peak * 0.5 * (1 + math.cos(math.pi / 9)), rel_tol=1e-9)  # 1 of 9 cosine steps
    assert all(lrs[k] < lrs[k - 1] for k in range(5, 13))

    # 5/22 of an epoch = 5 steps (under the cap of 40 // 4 = 10)
    train(TrainConfig(**base, steps=40, warmup_epochs=5 / 22, out=str(tmp_path / "epochs")))
    lrs = _logged_lrs(tmp_path / "epochs")
    for k in range(1, 6):
        assert math.isclose(lrs[k], peak * k / 5, rel_tol=1e-9), (k, lrs)
    assert lrs[6] == lrs[5] == peak and lrs[7] < lrs[6]


def test_engine_ema_is_the_running_average_of_the_steps(tmp_path):
    """After each optimizer step the engine's EMA is d_t * ema + (1 - d_t) * weights with
    d_t = min(decay, (1 + t) / (10 + t)), starting from the initial weights; the checkpoint carries the
    configured decay, the number of updates and those weights."""
    decay, steps = 0.15, 4  # d_t = 0.1, 0.15, 0.15, 0.15: the configured decay matters from step 2
    cfg = TrainConfig(**dict(TINY, steps=steps, batch_size=64, lr=3e-3, warmup_epochs=0, ema=decay),
                      out=str(tmp_path / "run"))
    tr = Trainer(cfg).setup()
    expected = {k: v.detach().double().clone() for k, v in tr.raw.named_parameters()}
    assert all(torch.equal(p, tr.raw.get_parameter(k)) for k, p in tr.ema.module.named_parameters())

    def hook(event, trainer, **info):
        if event != "step":
            return
        t = info["step"] - 1
        d = min(decay, (1 + t) / (10 + t))
        for k, w in trainer.raw.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * w.detach().double()

    tr.hooks.append(hook)
    tr.fit()
    moved = False
    for k, p in tr.ema.module.named_parameters():
        assert torch.allclose(p.double(), expected[k], atol=1e-6, rtol=1e-5), k
        moved |= not torch.allclose(p, tr.raw.get_parameter(k), atol=1e-6)
    assert moved  # the EMA is not simply the weights
    st = load_checkpoint(step_checkpoints(tmp_path / "run")[-1][1])
    assert st["ema"]["decay"] == decay and st["ema"]["updates"] == steps
    for k, p in tr.ema.module.state_dict().items():
        assert torch.equal(st["ema"]["model"][k], p), k


class _Stop(Exception):
    pass


def _small_data():
    """96 training and 32 validation images of digits' shape (16x16, grey, 10 classes), in memory."""
    from vitkit.data.datasets import TensorImageDataset

    g = torch.Generator().manual_seed(7)
    make = lambda n, name: TensorImageDataset(torch.rand(n, 1, 16, 16, generator=g), [i % 10 for i in range(n)],
                                              [str(i) for i in range(10)], (16, 16), 1, name)
    return make(96, "small/train"), make(32, "small/val")


def test_resume_in_process_mid_epoch_matches_uninterrupted_run(tmp_path, monkeypatch):
    """The in-process twin of the SIGKILL test, small enough for mutation runs: a run stopped (by an
    exception) after step 10, mid-epoch, resumed from its step-8 checkpoint, ends like the uninterrupted
    run: the same loss and lr at every step, the same parameters, EMA, schedule and progress."""
    cfg = dict(RESUME_CFG, steps=14, batch_size=16, save_every_steps=4, keep_last=2,  # 6 steps per epoch
               randaugment=None, random_erasing=0.0)  # their per-image seeding is the SIGKILL test's; here they cost time
    monkeypatch.setattr(engine, "plot_curves", lambda *a, **kw: None)  # the PNGs are not what is tested
    full = tmp_path / "full"
    Trainer(TrainConfig(**cfg, out=str(full)), *_small_data()).fit()

    def stop(event, trainer, **info):
        if event == "step" and info["step"] == 10:
            raise _Stop

    run = tmp_path / "run"
    with pytest.raises(_Stop):
        Trainer(TrainConfig(**cfg, out=str(run)), *_small_data(), hooks=[stop]).fit()
    assert [s for s, _ in step_checkpoints(run)] == [6, 8]  # 4, 6 (end of epoch 1), 8; the last two kept
    assert max(_losses(run)) == 10
    tr = Trainer(TrainConfig(**cfg, out=str(run), resume="auto"), *_small_data()).setup()
    assert (tr.global_step, tr.epoch, tr.batch_in_epoch) == (8, 1, 2)
    assert tr.ema.updates == 8 and tr.schedule.step_count == 8
    assert max(_losses(run)) == 8  # the metrics of steps 9 and 10 (after the checkpoint) are dropped
    tr.fit()
    assert _losses(run) == _losses(full) and _logged_lrs(run) == _logged_lrs(full)
    assert sorted(_losses(full)) == list(range(1, 15))
    a, b = (load_checkpoint(step_checkpoints(r)[-1][1]) for r in (full, run))
    assert a["progress"] == b["progress"] and a["scheduler"] == b["scheduler"]
    assert a["progress"]["global_step"] == 14
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 14
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])
