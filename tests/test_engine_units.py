"""The training engine's smaller pieces, each pinned by a test a mutation would fail (issue 15):
run_folder_of, the input channels of a data source, train()'s keyword arguments, the Ctrl-C agreement
of several processes (_stop_now) and what a resume restores (_load_resume: the grad scaler, EMA, task
state, best score, last validation and the epoch's losses)."""

import shutil
import types
from pathlib import Path

import pytest
import torch

from vitkit.data.datasets import TensorImageDataset
from vitkit.train import ResumeError, TrainConfig, Trainer, engine, train
from vitkit.train import checkpoint as ckpt
from vitkit.train import distributed as D

# width 16, depth 1 at 16x16 grey: every run here takes well under a second of compute
TINY = dict(model="vit_tiny_patch4_16", model_overrides=dict(width=16, depth=1, heads=2), data="digits",
            progress=False, workers=0)


def _data(n_train=32, n_val=16):
    """In-memory grey 16x16 images of 10 classes (the digits' shape), the same on every call."""
    g = torch.Generator().manual_seed(3)
    make = lambda n, name: TensorImageDataset(torch.rand(n, 1, 16, 16, generator=g), [i % 10 for i in range(n)],
                                              [str(i) for i in range(10)], (16, 16), 1, name)
    return make(n_train, "tiny/train"), make(n_val, "tiny/val")


def _quiet(*a, **kw):
    return None


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    monkeypatch.setattr(engine, "plot_curves", _quiet)  # the PNGs are not what is tested here


# ---------------------------------------------------------------- run_folder_of

def test_run_folder_of_finds_the_run_from_the_run_its_checkpoints_folder_or_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    step = run / "checkpoints" / "step_00000004.pt"
    step.write_bytes(b"")
    assert engine.run_folder_of(run) == run
    assert engine.run_folder_of(run / "checkpoints") == run
    assert engine.run_folder_of(step) == run
    assert engine.run_folder_of(run / "checkpoints" / "best.pt") == run
    # a checkpoint file elsewhere belongs to the folder that holds it; a folder with no checkpoints/ is its own
    loose = tmp_path / "saved" / "mine.pt"
    loose.parent.mkdir()
    loose.write_bytes(b"")
    assert engine.run_folder_of(loose) == tmp_path / "saved"
    assert engine.run_folder_of(tmp_path / "saved") == tmp_path / "saved"
    empty = tmp_path / "fresh"
    empty.mkdir()
    assert engine.run_folder_of(empty) == empty


def test_run_folder_of_a_run_named_checkpoints(tmp_path):
    """--out checkpoints: the run folder is called checkpoints and holds its own checkpoints/ folder; it is
    the run (not its parent), and its checkpoints/ folder leads back to it."""
    run = tmp_path / "checkpoints"
    (run / "checkpoints").mkdir(parents=True)
    assert engine.run_folder_of(run) == run
    assert engine.run_folder_of(run / "checkpoints") == run
    assert engine.run_folder_of(run / "checkpoints" / "step_00000001.pt") == run


# ---------------------------------------------------------------- channels of the data

def test_native_channels_builtins_are_grey_files_rgb():
    assert engine._native_channels("digits") == 1
    assert engine._native_channels("lfw-faces") == 1
    assert engine._native_channels("/data/photos") == 3
    assert engine._native_channels("labels.csv") == 3


class _Items:
    """A minimal data set: its items as given."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_train_ds_channels_reads_the_first_image():
    one = TensorImageDataset(torch.rand(1, 2, 8, 8), [0], ["a"], (8, 8), 2, "one")  # a single image is enough
    assert engine.train_ds_channels(one) == 2
    grey = _Items([(torch.zeros(1, 8, 8), 0), (torch.zeros(3, 8, 8), 0)])
    assert engine.train_ds_channels(grey) == 1
    unreadable_first = _Items([(None, 0), (torch.zeros(1, 8, 8), 0)])  # an unreadable file: RGB assumed
    assert engine.train_ds_channels(unreadable_first) == 3


# ---------------------------------------------------------------- train()

def test_train_passes_data_sets_and_hooks_to_the_trainer(tmp_path):
    tr_ds, val_ds = _data(16, 8)
    events = []
    summary = train(TrainConfig(**TINY, steps=1, batch_size=16, ema=None, out=str(tmp_path / "run")),
                    train_data=tr_ds, val_data=val_ds, hooks=[lambda event, trainer, **info: events.append(event)],
                    log=_quiet)
    assert events == ["step", "epoch"]
    assert summary["steps"] == 1 and summary["val_top1"] is not None


# ---------------------------------------------------------------- Ctrl-C under several processes

def _stopper(monkeypatch, device, requested, others, seen):
    """A Trainer of rank 0 of 2 processes on ``device`` whose Ctrl-C flag is ``requested``; the all-reduce
    adds ``others`` (the flags of the other process). ``seen`` gets the device of the flag tensor."""
    tr = Trainer(TrainConfig(**TINY, steps=1, out="unused"))
    tr.info = D.DistInfo(rank=0, world_size=2, device=device)
    tr._stop_requested = requested

    def all_reduce_sum(t, info):
        assert info is tr.info and info.enabled
        return t + others

    def tensor(data, device=None):
        seen.append(device)
        return torch.tensor(data)  # on the CPU whatever was asked: no CUDA needed to test the choice

    monkeypatch.setattr(D, "all_reduce_sum", all_reduce_sum)
    monkeypatch.setattr(engine, "torch", types.SimpleNamespace(tensor=tensor, device=torch.device))
    return tr


@pytest.mark.parametrize("requested,others,stop", [(False, 0.0, False), (True, 0.0, True), (False, 1.0, True),
                                                    (True, 1.0, True)])
def test_stop_now_is_agreed_by_every_process(monkeypatch, requested, others, stop):
    """A Ctrl-C seen by any process stops them all (the checkpoint is collective); none: all go on."""
    seen = []
    tr = _stopper(monkeypatch, torch.device("cpu"), requested, others, seen)
    assert tr._stop_now() is stop
    assert seen == [torch.device("cpu")]


def test_stop_now_reduces_on_the_cuda_device_under_nccl_else_the_cpu(monkeypatch):
    """NCCL reduces CUDA tensors only, gloo CPU ones: the flag goes to the process's CUDA device, and to the
    CPU for any other device (e.g. mps)."""
    seen = []
    assert _stopper(monkeypatch, torch.device("cuda", 1), True, 1.0, seen)._stop_now() is True
    assert seen == [torch.device("cuda", 1)]
    seen.clear()
    assert _stopper(monkeypatch, torch.device("mps"), False, 0.0, seen)._stop_now() is False
    assert seen == [torch.device("cpu")]


def test_stop_now_one_process_reads_its_own_flag():
    tr = Trainer(TrainConfig(**TINY, steps=1, out="unused"))
    tr.info = D.DistInfo()
    assert tr._stop_now() is False
    tr._stop_requested = True
    assert tr._stop_now() is True


# ---------------------------------------------------------------- resume

# 2 steps per epoch; checkpoints at steps 2 (end of epoch 1, validated), 3 (mid-epoch 2) and 4 (the end)
RUN_CFG = dict(TINY, steps=4, batch_size=16, save_every_steps=3, keep_last=3, log_every=1, ema=0.9, warmup_epochs=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine-units") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(engine, "plot_curves", _quiet)
    try:
        Trainer(TrainConfig(**RUN_CFG, out=str(out)), *_data(), log=_quiet).fit()
    finally:
        mp.undo()
    assert [s for s, _ in ckpt.step_checkpoints(out)] == [2, 3, 4]
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _step3(run):
    return run / "checkpoints" / "step_00000003.pt"


def _resumed(run, checkpoint, **overrides):
    tr = Trainer(TrainConfig(**dict(RUN_CFG, **overrides), out=str(run), resume=str(checkpoint)), *_data(),
                 log=_quiet).setup()
    tr.close()
    return tr


def test_resume_mid_epoch_restores_progress_last_validation_and_the_epochs_losses(run_copy):
    saved = ckpt.load_checkpoint(_step3(run_copy))
    p = saved["progress"]
    assert p["last_val"] and len(p["epoch_losses"]) == 1  # epoch 1 was validated; step 3 is epoch 2's first
    tr = _resumed(run_copy, _step3(run_copy))
    assert (tr.global_step, tr.epoch, tr.batch_in_epoch) == (3, 1, 1)
    assert tr.last_val == p["last_val"] and "top1" in tr.last_val
    assert tr.epoch_losses == p["epoch_losses"]  # epoch 2's train loss includes step 3
    assert tr.best == p["best"] and tr.best["epoch"] == 1
    assert tr.ema.updates == 3
    assert all(torch.equal(v, saved["ema"]["model"][k]) for k, v in tr.ema.module.state_dict().items())


def test_resume_without_ema_from_a_run_with_ema(run_copy):
    """--ema none on resume: the checkpoint's EMA is left out, the rest resumes."""
    tr = _resumed(run_copy, _step3(run_copy), ema=None)
    assert tr.ema is None and tr.global_step == 3
    saved = ckpt.load_checkpoint(_step3(run_copy))["model"]
    assert all(torch.equal(v, saved[k]) for k, v in tr.raw.state_dict().items())


def _rewrite(path, change):
    st = ckpt.load_checkpoint(path)
    st.pop("_path")
    change(st)
    ckpt.save_checkpoint(st, path)


def test_resume_on_the_cpu_of_an_fp16_checkpoint_ignores_its_grad_scaler(run_copy):
    """A checkpoint of a CUDA fp16 run holds the grad scaler's state; resumed without fp16 (no scaler) it is
    not needed and not an error."""
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}
    _rewrite(_step3(run_copy), lambda st: st.update(scaler=scaler))
    tr = _resumed(run_copy, _step3(run_copy))
    assert tr.scaler is None and tr.global_step == 3


def _trainer(run):
    """A set-up Trainer of RUN_CFG (a fresh run into ``run``), its run folder released."""
    tr = Trainer(TrainConfig(**RUN_CFG, out=str(run), overwrite=True), *_data(), log=_quiet).setup()
    tr.close()
    return tr


def test_resume_restores_the_grad_scalers_loss_scale(tmp_path):
    """fp16 (CUDA) keeps a grad scaler whose loss scale and growth tracker continue from the checkpoint."""
    tr = _trainer(tmp_path / "run")
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)  # the CPU twin of fp16's CUDA scaler
    st = tr._state()
    other = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    other.load_state_dict({"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 5})
    st["scaler"] = other.state_dict()
    tr._load_resume(st)
    assert tr.scaler.get_scale() == 512.0
    assert tr.scaler.state_dict() == other.state_dict()


@pytest.mark.parametrize("top1,score", [(0.4, 0.4), (0.0, 0.0), (1.0, 1.0), (-1.0, None), (None, None)])
def test_resume_of_a_checkpoint_from_before_the_tasks_reads_its_best_top1(tmp_path, top1, score):
    """Checkpoints written before the tasks keep the best top-1 as progress.best.top1 (-1 for none): it is
    the classification score of the resumed run."""
    tr = _trainer(tmp_path / "run")
    st = tr._state()
    st["progress"]["best"] = {"top1": top1, "epoch": 3, "step": 6}
    tr._load_resume(st)
    assert tr.best == {"score": score, "epoch": 3, "step": 6}


def test_resume_keeps_the_best_score_of_a_current_checkpoint(tmp_path):
    tr = _trainer(tmp_path / "run")
    st = tr._state()
    st["progress"]["best"] = {"score": -0.5, "epoch": 2, "step": 4}  # a score may be negative (e.g. -MSE)
    tr._load_resume(st)
    assert tr.best == {"score": -0.5, "epoch": 2, "step": 4}


def test_resume_of_an_older_checkpoint_without_last_val_or_epoch_losses(tmp_path):
    tr = _trainer(tmp_path / "run")
    st = tr._state()
    tr.last_val, tr.epoch_losses = {"top1": 0.9}, [5.0]
    for key in ("last_val", "epoch_losses"):
        st["progress"].pop(key)
    st.pop("task")
    tr._load_resume(st)
    assert tr.last_val == {} and tr.epoch_losses == []


DINO = dict(TINY, steps=2, batch_size=8, out_dim=32, head_hidden=32, head_bottleneck=16, local_crops=2,
            save_every_steps=1)


def test_resume_restores_the_dino_teacher_and_center(tmp_path):
    """The DINO task's state (the teacher, an EMA of the student, and the loss center) comes back from the
    checkpoint, not from a fresh set-up."""
    out = tmp_path / "dino"
    tr_ds, _ = _data(16, 8)
    Trainer(TrainConfig.pretraining("dino", **DINO, out=str(out)), tr_ds, None, log=_quiet).fit()
    saved = ckpt.load_checkpoint(out / "checkpoints" / "step_00000001.pt")["task"]["state"]
    assert saved["center"].abs().sum() > 0
    tr = Trainer(TrainConfig.pretraining("dino", **DINO, out=str(out), resume=str(out / "checkpoints" /
                                                                                  "step_00000001.pt")),
                 tr_ds, None, log=_quiet).setup()
    tr.close()
    assert torch.equal(tr.task.loss_fn.center, saved["center"])
    teacher = tr.task.teacher.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in saved["teacher"].items())
    fresh = Trainer(TrainConfig.pretraining("dino", **DINO, out=str(tmp_path / "fresh")), tr_ds, None,
                    log=_quiet).setup()
    fresh.close()
    assert not torch.equal(fresh.task.loss_fn.center, saved["center"])  # the test bites
    assert not all(torch.equal(fresh.task.teacher.state_dict()[k], v) for k, v in saved["teacher"].items())


def test_resume_refuses_a_checkpoint_of_another_objective(run_copy):
    tr_ds, val_ds = _data()
    with pytest.raises(ResumeError, match=r"it is a classification \(vitkit train\) run, these settings ask for "
                                          r"DINO pre-training"):
        Trainer(TrainConfig.pretraining("dino", **dict(DINO, steps=4), out=str(run_copy), resume=str(_step3(run_copy))),
                tr_ds, val_ds, log=_quiet).setup()


# ---------------------------------------------------------------- validation batches of each process

def _val_trainer(tmp_path, n_val, batch_size, world=1, rank=0):
    tr = Trainer(TrainConfig(**dict(TINY, steps=1, batch_size=batch_size, ema=None), out=str(tmp_path / "run")),
                 *_data(32, n_val), log=_quiet).setup()
    tr.close()
    tr.info = D.DistInfo(rank=rank, world_size=world)  # this process's share of a run of ``world`` processes
    return tr


def _val_labels(tr, ds=None):
    """The labels of each batch of this process's validation share."""
    return [y.tolist() for _, y, _ in tr.val_batches(ds)]


def test_val_batches_split_the_validation_set_over_the_processes_with_padding(tmp_path):
    """5 images over 2 processes, per-process batch 4 // 2 = 2: process r takes images r, r + 2, ...; the
    shorter share is padded (label PAD) so both run as many batches of the same sizes; the real items are
    each image once."""
    pad = D.PAD_LABEL
    shares = []
    for rank in (0, 1):
        tr = _val_trainer(tmp_path / str(rank), 5, 4, world=2, rank=rank)
        labels = [l for _, l in (tr.val_ds[i] for i in range(5))]
        shares.append(_val_labels(tr))
    assert shares[0] == [[labels[0], labels[2]], [labels[4]]]
    assert shares[1] == [[labels[1], labels[3]], [pad]]


def test_val_batches_of_one_process_are_the_set_in_order(tmp_path):
    tr = _val_trainer(tmp_path, 7, 3)
    labels = [tr.val_ds[i][1] for i in range(7)]
    assert _val_labels(tr) == [labels[0:3], labels[3:6], labels[6:7]]
    xs = torch.cat([x for x, _, _ in tr.val_batches()])
    assert torch.equal(xs, torch.stack([tr.eval_transform(tr.val_ds[i][0]) for i in range(7)]))


def test_val_batches_of_another_data_set(tmp_path):
    """val_batches(ds) batches ``ds`` (e.g. the training set as a k-NN memory), not the validation set."""
    tr = _val_trainer(tmp_path, 4, 8)
    assert _val_labels(tr, tr.train_ds) == [[i % 10 for i in range(j, j + 8)] for j in range(0, 32, 8)]


def test_val_batches_per_process_batch_of_one(tmp_path):
    """batch size 2 on 2 processes: batches of one image each."""
    tr = _val_trainer(tmp_path, 4, 2, world=2, rank=1)
    assert [len(b) for b in _val_labels(tr)] == [1, 1]


def test_val_batches_of_one_image_on_two_processes(tmp_path):
    """A validation set smaller than the processes: the second process runs one padding item (image 0)."""
    tr = _val_trainer(tmp_path, 1, 2, world=2, rank=1)
    assert _val_labels(tr) == [[D.PAD_LABEL]]


# ---------------------------------------------------------------- RUN/model written as a whole

def _model(seed):
    import vitkit

    torch.manual_seed(seed)
    return vitkit.create_model(vitkit.ViTConfig(image_size=16, patch_size=8, channels=1, num_classes=3, width=16,
                                                depth=1, heads=2))


def _saver(tmp_path):
    tr = Trainer(TrainConfig(**TINY, steps=1, out=str(tmp_path)))
    tr.run_dir = tmp_path
    return tr


def _weights(folder):
    import vitkit

    return vitkit.load(folder).state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_final_model_replaces_the_previous_model_and_leaves_nothing_behind(tmp_path):
    import os

    tr = _saver(tmp_path)
    first, second = _model(1), _model(2)
    assert tr._save_final_model(first) == tmp_path / "model"
    assert _same(_weights(tmp_path / "model"), first.state_dict())
    stale = tmp_path / f".model.tmp-{os.getpid()}"  # left by an earlier write of this process id
    stale.mkdir()
    (stale / "stale.txt").write_text("old")
    tr._save_final_model(second)
    assert _same(_weights(tmp_path / "model"), second.state_dict())
    assert not (tmp_path / "model" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _fail_save(monkeypatch, partial):
    import errno

    real = engine.save_model

    def save(model, path):
        if partial:
            real(model, path)  # the bytes are written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "save_model", save)


@pytest.mark.parametrize("partial", [False, True])
def test_save_final_model_full_disk_on_the_first_save(tmp_path, monkeypatch, partial):
    tr = _saver(tmp_path)
    _fail_save(monkeypatch, partial)
    with pytest.raises(ckpt.CheckpointError, match=r"could not write .*model: the disk is full; the trained "
                                                   r"weights are in the checkpoint None") as e:
        tr._save_final_model(_model(1))
    assert "previous model" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_save_final_model_failure_names_the_last_checkpoint(tmp_path, monkeypatch):
    tr = _saver(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    ckpt.save_checkpoint({"progress": {"global_step": 4}}, tmp_path / "checkpoints" / "step_00000004.pt")
    _fail_save(monkeypatch, False)
    with pytest.raises(ckpt.CheckpointError, match=r"the trained weights are in the checkpoint .*step_00000004\.pt"):
        tr._save_final_model(_model(1))


@pytest.mark.parametrize("partial", [False, True])
def test_save_final_model_full_disk_keeps_the_previous_model(tmp_path, monkeypatch, partial):
    tr = _saver(tmp_path)
    first = _model(1)
    tr._save_final_model(first)
    _fail_save(monkeypatch, partial)
    with pytest.raises(ckpt.CheckpointError, match="the previous model is kept"):
        tr._save_final_model(_model(2))
    assert _same(_weights(tmp_path / "model"), first.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_final_model_failed_swap_puts_the_previous_model_back(tmp_path, monkeypatch):
    """The new model is written but moving it into place fails: the previous RUN/model (already moved
    aside) comes back."""
    import errno
    import os

    tr = _saver(tmp_path)
    first = _model(1)
    tr._save_final_model(first)
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".model.tmp-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(src, dst)

    monkeypatch.setattr(engine.os, "replace", replace)
    with pytest.raises(ckpt.CheckpointError, match="model: the file system is read-only; the previous model is kept"):
        tr._save_final_model(_model(2))
    assert _same(_weights(tmp_path / "model"), first.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------- small helpers of the loop

def test_seed_all_seeds_python_numpy_and_torch_also_for_seeds_beyond_32_bits():
    import random

    import numpy as np

    seed = 2 ** 32 + 7  # cfg.seed + 1000003 * rank may pass 2**32; NumPy takes it modulo 2**32
    engine._seed_all(seed)
    got = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(seed)
    np.random.seed(7)
    torch.manual_seed(seed)
    assert got == (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_micro_batches_give_each_process_its_part_of_each_chunk():
    order = list(range(100, 140))
    # step 1 of global batch 8, 2 accumulation chunks of 4, 2 processes: rank r takes part r (2 items) of each
    assert engine._micro_batches(order, 1, 8, 2, 0, 2) == [[108, 109], [112, 113]]
    assert engine._micro_batches(order, 1, 8, 2, 1, 2) == [[110, 111], [114, 115]]
    assert engine._micro_batches(order, 4, 8, 1, 0, 1) == [order[32:40]]


def test_eval_view_reports_unreadable_images_once_and_pads_with_the_pad_label():
    base = _Items([(None, "bad.png: cannot identify image file"), (torch.ones(1, 4, 4), 3)])
    view = engine._EvalView(base, lambda x: x * 2)
    assert view[(0, True)] == (None, "bad.png: cannot identify image file")
    assert view[(0, False)] == (None, "")  # padding: not reported a second time
    x, y = view[(1, False)]
    assert y == D.PAD_LABEL and torch.equal(x, torch.full((1, 4, 4), 2.0))
    assert view[(1, True)][1] == 3


def test_close_releases_the_tensorboard_writer_and_the_run_folder(tmp_path):
    tr = Trainer(TrainConfig(**dict(TINY, steps=1, batch_size=16, ema=None), out=str(tmp_path / "run")), *_data(),
                 log=_quiet).setup()
    assert tr.tb is not None and tr.lock is not None and tr.lock.held
    with pytest.raises(Exception, match="lock|busy|another"):  # a second run into the held folder
        Trainer(TrainConfig(**dict(TINY, steps=1, batch_size=16, ema=None), out=str(tmp_path / "run"),
                            overwrite=True), *_data(), log=_quiet).setup()
    tr.close()
    assert tr.tb is None and not tr.lock.held


def test_ctrl_c_after_the_first_step_writes_its_checkpoint(tmp_path):
    """The first Ctrl-C stops at the next step boundary with that step's checkpoint, also at step 1."""
    def hook(event, trainer, **info):
        if event == "step":
            trainer._stop_requested = True  # what the SIGINT handler sets

    tr = Trainer(TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None), out=str(tmp_path / "run")), *_data(),
                 hooks=[hook], log=_quiet)
    with pytest.raises(engine.TrainingInterrupted) as e:
        tr.fit()
    path = tmp_path / "run" / "checkpoints" / "step_00000001.pt"
    assert (e.value.step, e.value.total, e.value.world_size, e.value.checkpoint) == (1, 4, 1, path)
    assert str(e.value) == f"interrupted at step 1 of 4; checkpoint {path} written"
    assert e.value.resume_command() == f"vitkit train --resume {path}"
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path / "run")] == [1]


def test_the_resume_command_quotes_a_path_for_the_shell():
    e = engine.TrainingInterrupted(Path("/runs/my run/checkpoints/step_00000002.pt"), 2, 9, world_size=4)
    assert (e.step, e.total, e.world_size) == (2, 9, 4)
    assert engine.TrainingInterrupted(Path("c.pt"), 1, 2).world_size == 1  # one process unless told
    assert e.resume_command() == "vitkit train --resume '/runs/my run/checkpoints/step_00000002.pt'"


def test_loader_workers_leave_ctrl_c_to_the_main_process(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGINT)
    try:
        engine._ignore_sigint(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    tr, _ = _setup(tmp_path, workers=2)
    loader = tr._loader(tr.train_ds, [[0, 1]], 0)
    assert loader.worker_init_fn is engine._ignore_sigint and loader.num_workers == 2
    tr, _ = _setup(tmp_path / "none", workers=0)
    assert tr._loader(tr.train_ds, [[0, 1]], 0).worker_init_fn is None


# ---------------------------------------------------------------- the summary and RUN/model at the end

def _finisher(tmp_path, ema=0.9, logs=None, **cfg):
    """A set-up trainer at step 4 of 4 whose later log lines go to `logs`."""
    tr, _ = _setup(tmp_path, ema=ema, **cfg)
    tr._log = logs.append if logs is not None else _quiet
    tr.global_step, tr.epoch = 4, 2
    return tr


def _summary_file(tr):
    import json

    text = (tr.run_dir / "summary.json").read_text()
    return json.loads(text), text


@pytest.mark.parametrize("ema_top1,which", [(0.125, "model"), (0.875, "ema")])
def test_finish_writes_the_summary_the_model_and_the_done_line(tmp_path, ema_top1, which):
    import json

    import vitkit

    logs = []
    tr = _finisher(tmp_path, logs=logs)
    tr.raw.preprocess_cfg = vitkit.PreprocessConfig(size=(16, 16), mode="L", mean=(0.25,), std=(0.5,))
    tr.best = {"score": 0.5, "epoch": 2, "step": 4}
    tr.skipped = {"a.png": "a.png: unreadable"}
    last_val = {"top1": 0.25, "top5": 0.75, "ema_top1": ema_top1, "loss": 1.5}
    summary = tr._finish(last_val, 3.14159, 1)
    run = tmp_path / "run"
    assert summary == {"steps": 4, "epochs": 2, "seconds": 3.1, "val_top1": 0.25, "val_top5": 0.75,
                       "ema_top1": ema_top1, "best_top1": 0.5, "best_epoch": 2, "model_weights": which,
                       "model_dir": str(run / "model"), "skipped_files": 1}
    data, text = _summary_file(tr)
    assert data == summary and text == json.dumps(summary, indent=2)
    top1 = f"{100 * ema_top1:.2f} % (EMA weights)" if which == "ema" else "25.00 %"
    assert logs == [f"vitkit train: done: 3 steps in 3.1 s, val top-1 {top1}, best 50.00 % at epoch 2; model saved "
                    f"to {run / 'model'}; 1 unreadable file(s) skipped"]
    saved = vitkit.load(run / "model")
    assert saved.preprocess_cfg.mean == (0.25,) and saved.preprocess_cfg.std == (0.5,)
    want = (tr.ema.module if which == "ema" else tr.raw).state_dict()
    assert _same(saved.state_dict(), {k: v.cpu() for k, v in want.items()})
    assert saved.preprocess_cfg.to_dict() == tr.raw.preprocess_cfg.to_dict()


def test_finish_without_validation_or_best(tmp_path):
    logs = []
    tr = _finisher(tmp_path, ema=None, logs=logs)
    summary = tr._finish({}, 2.0, 0)
    assert summary["val_top1"] is None and summary["val_top5"] is None and summary["ema_top1"] is None
    assert summary["best_top1"] == -1.0 and summary["best_epoch"] is None and summary["model_weights"] == "model"
    assert summary["skipped_files"] == 0
    assert logs == [f"vitkit train: done: 4 steps in 2.0 s, no validation, best 0.00 % at epoch None; model saved "
                    f"to {tmp_path / 'run' / 'model'}"]


def test_finish_of_a_run_resumed_when_already_complete_keeps_its_seconds(tmp_path):
    logs = []
    tr = _finisher(tmp_path, logs=logs)
    (tmp_path / "run" / "summary.json").write_text('{"seconds": 42.5}')
    summary = tr._finish({"top1": 0.5}, 0.01, 4)  # nothing trained: start step = last step
    assert summary["seconds"] == 42.5 and _summary_file(tr)[0]["seconds"] == 42.5
    assert logs[0] == ("vitkit train: the run was already complete (4 steps); its final model and summary are "
                       "written again from the last checkpoint")
    assert logs[1].startswith("vitkit train: done: 0 steps in 0.0 s, val top-1 50.00 %")
    # a fresh run that trained from step 0 keeps its own time, whatever summary.json held
    tr2 = _finisher(tmp_path / "b")
    (tmp_path / "b" / "run" / "summary.json").write_text('{"seconds": 42.5}')
    tr2.global_step = 0
    assert tr2._finish({}, 1.25, 0)["seconds"] == 1.2
    # trained in this session (resumed at step 1): its own time
    tr3 = _finisher(tmp_path / "c")
    (tmp_path / "c" / "run" / "summary.json").write_text('{"seconds": 42.5}')
    tr3.global_step = 1
    assert tr3._finish({}, 7.0, 1)["seconds"] == 42.5  # resumed at 1 and already complete at 1
    tr3.global_step = 4
    assert tr3._finish({}, 7.0, 1)["seconds"] == 7.0


def test_finish_of_a_pretraining_run(tmp_path):
    logs = []
    tr = Trainer(TrainConfig.pretraining("dino", **dict(DINO, steps=2), out=str(tmp_path / "run")), _data(16, 8)[0],
                 None, log=logs.append).setup()
    tr.close()
    tr.global_step, tr.epoch = 2, 1
    tr.best = {"score": 0.3, "epoch": 1, "step": 2}
    logs.clear()
    summary = tr._finish({"knn_top1": 0.3, "note": "text"}, 1.0, 0)
    assert summary == {"steps": 2, "epochs": 1, "seconds": 1.0, "objective": "dino", "val": {"knn_top1": 0.3},
                       "best_score": 0.3, "best_epoch": 1, "model_weights": "teacher",
                       "model_dir": str(tmp_path / "run" / "model"), "skipped_files": 0}
    assert logs == [f"vitkit pretrain: done: 2 steps in 1.0 s, {tr.task.describe({'knn_top1': 0.3, 'note': 'text'})}"
                    f" (teacher weights); model saved to {tmp_path / 'run' / 'model'}"]
    logs.clear()
    tr._finish({}, 1.0, 0)
    assert "no validation (teacher weights)" in logs[0]


# ---------------------------------------------------------------- set-up checks

def test_resume_of_a_checkpoint_from_before_the_tasks_is_a_classification_run(run_copy):
    _rewrite(_step3(run_copy), lambda st: st.pop("task"))
    tr = _resumed(run_copy, _step3(run_copy))
    assert tr.task.name == "classify" and tr.global_step == 3


def test_resume_refuses_a_pretraining_checkpoint_as_a_classification_run(tmp_path):
    out = tmp_path / "dino"
    tr_ds, val_ds = _data(16, 8)
    Trainer(TrainConfig.pretraining("dino", **dict(DINO, steps=1), out=str(out)), tr_ds, None, log=_quiet).fit()
    with pytest.raises(ResumeError, match=r"it is a DINO pre-training \(vitkit pretrain --method dino\) run, these "
                                          r"settings ask for classification"):
        Trainer(TrainConfig(**dict(TINY, steps=2, batch_size=8), out=str(out), resume="auto"), tr_ds, val_ds,
                log=_quiet).setup()


def test_a_run_folder_with_checkpoints_is_not_overwritten_without_overwrite(run_copy):
    with pytest.raises(ValueError, match="already holds the checkpoints of a run"):
        Trainer(TrainConfig(**RUN_CFG, out=str(run_copy)), *_data(), log=_quiet).setup()
    assert [s for s, _ in ckpt.step_checkpoints(run_copy)] == [2, 3, 4]


@pytest.mark.parametrize("epochs,steps,total,total_epochs", [(3, None, 6, 3), (None, 3, 3, 2), (2, 5, 5, 3)])
def test_run_length_from_epochs_or_steps(tmp_path, epochs, steps, total, total_epochs):
    tr = Trainer(TrainConfig(**dict(TINY, epochs=epochs, steps=steps, batch_size=16, ema=None), out=str(tmp_path)),
                 *_data(), log=_quiet).setup()  # 32 images, batch 16: 2 steps per epoch
    tr.close()
    assert (tr.steps_per_epoch, tr.total_steps, tr.total_epochs) == (2, total, total_epochs)


def test_setup_from_a_builtin_source_uses_its_grey_images_and_the_size_and_patch_asked(tmp_path):
    tr = Trainer(TrainConfig(**dict(TINY, steps=1, batch_size=16, ema=None, image_size=8, patch_size=2,
                               ), out=str(tmp_path)), log=_quiet).setup()
    tr.close()
    c = tr.raw.cfg
    assert (c.channels, c.image_size, c.patch_size, c.width, c.num_classes) == (1, 8, 2, 16, 10)
    assert tr.train_ds[0][0].shape == (1, 8, 8) and len(tr.val_ds) == 360  # digits' own split


def test_setup_with_given_data_sets_takes_their_channels(tmp_path):
    g = torch.Generator().manual_seed(5)
    rgb = TensorImageDataset(torch.rand(16, 3, 16, 16, generator=g), [i % 2 for i in range(16)], ["a", "b"],
                             (16, 16), 3, "rgb")
    tr = Trainer(TrainConfig(**dict(TINY, steps=1, batch_size=16, ema=None), out=str(tmp_path)), rgb, None,
                 log=_quiet).setup()  # cfg.data names the grey digits, but the given images are RGB
    tr.close()
    assert tr.raw.cfg.channels == 3 and tr.classes == ["a", "b"]


# ---------------------------------------------------------------- set-up: where each setting goes

def _setup(tmp_path, given=True, **kw):
    cfg = TrainConfig(**{**TINY, "steps": 4, "batch_size": 16, "ema": None, **kw}, out=str(tmp_path / "run"))
    logs = []
    tr = Trainer(cfg, *(_data() if given else ()), log=logs.append).setup()
    tr.close()
    return tr, logs


def test_setup_log_names_the_data_the_model_the_notes_and_the_schedule(tmp_path):
    tr, logs = _setup(tmp_path, lr=2e-3, min_lr=1e-4, warmup_epochs=1, ema=0.99, linear_probe=True)
    n = sum(p.numel() for p in tr.raw.parameters())
    assert logs == [
        "vitkit train: tiny/train: 32 images, 10 classes; validation tiny/val: 16 images, 10 classes",
        f"  model: 16x16x1 input, patch 4, width 16, depth 1, heads 2, {n / 1e6:.2f}M parameters; 1 process(es) on "
        f"cpu, {torch.get_num_threads()} thread(s) each",
        "  linear probe: backbone frozen, only the head trains",
        "  4 steps (2 per epoch, batch 16), adamw lr 0.002, warm-up 1 steps, cosine to 0.0001, EMA 0.99"]
    tr2, logs2 = _setup(tmp_path / "mae", method="mae", optimizer="sgd", lr=0.5, warmup_epochs=0)
    assert logs2[1] == "  objective: mae"
    assert logs2[-1] == "  4 steps (2 per epoch, batch 16), sgd lr 0.5, warm-up 0 steps, cosine to 1e-05"


def test_setup_gives_the_optimizer_its_settings(tmp_path):
    tr, _ = _setup(tmp_path, betas=(0.8, 0.95), weight_decay=0.07, lr=0.01, warmup_epochs=0)
    groups = tr.optimizer.param_groups
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.95) for g in groups)
    assert sorted({g["weight_decay"] for g in groups}) == [0.0, 0.07]
    assert all(g["lr"] == 0.01 for g in groups)  # no warm-up: the peak at step 0
    tr, _ = _setup(tmp_path / "sgd", optimizer="sgd", momentum=0.5, warmup_epochs=0, layer_decay=0.5)
    groups = tr.optimizer.param_groups
    assert isinstance(tr.optimizer, torch.optim.SGD) and all(g["momentum"] == 0.5 for g in groups)
    assert len({g["lr"] for g in groups}) > 1  # layer decay: the layers nearer the input learn slower


@pytest.mark.parametrize("warmup_epochs,steps,warmup", [(1.8, 100, 4), (3, 10, 2), (3, 9, 2), (0, 10, 0)])
def test_warmup_is_the_rounded_epochs_at_most_a_quarter_of_the_run(tmp_path, warmup_epochs, steps, warmup):
    tr, logs = _setup(tmp_path, warmup_epochs=warmup_epochs, steps=steps)  # 2 steps per epoch
    assert tr.schedule.warmup == warmup and isinstance(tr.schedule.warmup, int)
    assert tr.schedule.total == steps and f"warm-up {warmup} steps" in logs[-1]


def test_linear_probe_trains_without_stochastic_depth(tmp_path):
    tr, _ = _setup(tmp_path, drop_path=0.2)
    assert tr.raw.cfg.drop_path == 0.2
    tr, _ = _setup(tmp_path / "probe", drop_path=0.2, linear_probe=True)
    assert tr.raw.cfg.drop_path == 0.0


def test_linear_probe_of_a_distilled_model_trains_both_heads(tmp_path):
    tr, _ = _setup(tmp_path, linear_probe=True, model_overrides=dict(width=16, depth=1, heads=2, distilled=True))
    trained = sorted(n for n, p in tr.raw.named_parameters() if p.requires_grad)
    assert trained == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]


def test_threads_setting_reaches_torch(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    _setup(tmp_path)
    assert calls == []  # unset: torch's own choice
    _setup(tmp_path / "one", threads=1)
    assert calls == [1]


def test_compile_wraps_the_model_and_the_optimizer_trains_the_model_inside(tmp_path, monkeypatch):
    compiled = []

    def compile(m):
        compiled.append(m)
        return types.SimpleNamespace(_orig_mod=m)  # what D.unwrap looks through

    monkeypatch.setattr(torch, "compile", compile)
    tr, _ = _setup(tmp_path)
    assert compiled == [] and tr.model is tr.raw
    tr, _ = _setup(tmp_path / "compiled", compile=True)
    assert compiled == [tr.raw] and tr.model._orig_mod is tr.raw
    params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in tr.raw.parameters()}


@pytest.mark.parametrize("cpus,workers", [(8, 4), (3, 2), (1, 1), (None, 1)])
def test_workers_default_to_the_cpus_but_one_at_most_four_for_files(tmp_path, monkeypatch, cpus, workers):
    _image_folder(tmp_path / "imgs", 2, 8)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: cpus)
    tr, _ = _setup(tmp_path, given=False, data=str(tmp_path / "imgs"), batch_size=4, workers=None)
    assert tr.workers == workers
    tr, _ = _setup(tmp_path / "given", workers=None)
    assert tr.workers == 0  # in-memory images: loaded in this process
    tr, _ = _setup(tmp_path / "asked", given=False, data=str(tmp_path / "imgs"), batch_size=4, workers=3)
    assert tr.workers == 3


def _image_folder(root, classes, per_class):
    from PIL import Image

    g = torch.Generator().manual_seed(11)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            px = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px).save(root / f"c{c}" / f"{i}.png")


def test_setup_reads_a_folder_with_the_models_size_channels_split_and_strictness(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs", 2, 8)
    from vitkit.tasks.base import Task

    specs = []
    real = Task.load_data

    def load_data(self, source, spec, val_source):
        specs.append(spec)
        return real(self, source, spec, val_source)

    monkeypatch.setattr(Task, "load_data", load_data)
    tr, _ = _setup(tmp_path, given=False, data=str(tmp_path / "imgs"), val_fraction=0.25, strict_data=True,
                   image_size=8, patch_size=2, batch_size=4)
    (spec,) = specs
    assert (spec.image_size, spec.channels, spec.val_fraction, spec.strict) == ((8, 8), 3, 0.25, True)
    assert spec.preprocess is tr.raw.preprocess_cfg
    assert len(tr.train_ds) == 12 and len(tr.val_ds) == 4 and tr.classes == ["c0", "c1"]
    assert tr.train_ds[0][0].shape == (3, 8, 8)


def _two_processes(monkeypatch, rank):
    """Set-up as process ``rank`` of 2 (the process group, DDP and barriers faked); the seeds it sets."""
    seeds = []
    real_seed = engine._seed_all
    monkeypatch.setattr(D, "setup", lambda device=None: D.DistInfo(rank=rank, world_size=2))
    monkeypatch.setattr(D, "wrap", lambda model, info, fsdp: model)
    monkeypatch.setattr(D, "barrier", lambda info: None)
    monkeypatch.setattr(engine, "_seed_all", lambda seed: (seeds.append(seed), real_seed(seed)))
    return seeds


@pytest.mark.parametrize("rank", [0, 1])
def test_each_process_starts_from_the_same_weights_and_draws_its_own_randomness(tmp_path, monkeypatch, rank):
    seeds = _two_processes(monkeypatch, rank)
    tr, logs = _setup(tmp_path, seed=7)
    assert seeds == [7, 7 + 1000003 * rank]
    assert (tr.run_dir / "config.yaml").exists() == (rank == 0)  # the run folder is rank 0's
    assert bool(logs) == (rank == 0)
    if rank == 0:
        assert "2 process(es) on cpu (DDP)" in logs[1]


def test_fsdp_keeps_no_ema_and_says_so(tmp_path, monkeypatch):
    _two_processes(monkeypatch, 0)
    tr, logs = _setup(tmp_path, ema=0.9, fsdp=True)
    assert tr.ema is None and "(FSDP)" in logs[1]
    assert "  EMA is not kept under FSDP (the weights are sharded); train without it" in logs
    assert "EMA" not in logs[-1]
    tr, logs = _setup(tmp_path / "ddp", ema=0.9)
    assert tr.ema is not None and tr.ema.decay == 0.9 and logs[-1].endswith(", EMA 0.9")


@pytest.mark.parametrize("batch,accum,ok", [(12, 4, False), (16, 4, True), (10, 2, False), (8, 4, True)])
def test_the_batch_divides_over_the_processes_and_the_accumulation_steps(tmp_path, monkeypatch, batch, accum, ok):
    _two_processes(monkeypatch, 0)
    if ok:
        tr, _ = _setup(tmp_path, batch_size=batch, accum_steps=accum)
        assert tr.steps_per_epoch == 32 // batch
    else:
        with pytest.raises(ValueError, match=f"batch size {batch} must be divisible by processes x accumulation "
                                             f"steps = 2 x {accum}"):
            _setup(tmp_path, batch_size=batch, accum_steps=accum)


def _tiny_checkpoint(path, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3)):
    """A vitkit model folder of the TINY architecture (grey, 10 classes) with its own normalisation."""
    import vitkit
    from vitkit.data.preprocess import PreprocessConfig
    from vitkit.models.factory import resolve_config

    torch.manual_seed(21)
    m = vitkit.VisionTransformer(resolve_config("vit_tiny_patch4_16", width=16, depth=1, heads=2, channels=1,
                                                num_classes=10))
    m.preprocess_cfg = PreprocessConfig(size=(16, 16), mean=mean, std=std)
    return m, vitkit.save(m, path)


def test_init_fine_tunes_the_checkpoints_weights_with_its_normalisation(tmp_path):
    m, path = _tiny_checkpoint(tmp_path / "ck")
    tr, logs = _setup(tmp_path, init=str(path))  # --model (TINY's) beside --init: the architecture it must be
    want = {k: v for k, v in m.state_dict().items() if not k.startswith("head.")}
    got = tr.raw.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert f"  fine-tuning from {path} (vitkit)" in logs
    assert (tr.eval_transform.mean, tr.eval_transform.std) == ((0.3, 0.4, 0.5), (0.2, 0.25, 0.3))
    assert tr.raw.cfg.drop_path == 0.1  # the run's stochastic depth, not the checkpoint's 0
    tr, _ = _setup(tmp_path / "own", init=str(path), model=None, model_overrides=None)
    assert tr.raw.cfg.width == 16 and torch.equal(tr.raw.state_dict()["cls_token"], m.state_dict()["cls_token"])


def test_init_checks_the_checkpoint_is_the_model_asked(tmp_path):
    """The architecture but not the input channels (the data's: a grey checkpoint fine-tunes on grey images
    with --model naming its architecture, whose default is RGB) nor the size (resampled)."""
    _, path = _tiny_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match=r"the checkpoint is not a 'vit_tiny_patch4_16' \(width: 32 != 16\)"):
        _setup(tmp_path, init=str(path), model_overrides=dict(width=32, depth=1, heads=2))
    with pytest.raises(ValueError, match="is not a 'vit_small_patch4_16'"):
        _setup(tmp_path / "small", init=str(path), model="vit_small_patch4_16", model_overrides=None)


def test_init_passes_the_loading_options_for_a_file_that_does_not_say_them(tmp_path):
    m, _ = _tiny_checkpoint(tmp_path / "ck")
    torch.save(m.state_dict(), tmp_path / "bare.pt")  # a timm-style state dict: no heads, no pooling
    tr, _ = _setup(tmp_path, init=str(tmp_path / "bare.pt"), model=None, model_overrides=None, heads=2)
    assert tr.raw.cfg.heads == 2
    with pytest.raises(Exception, match="pass heads=N"):
        _setup(tmp_path / "no-heads", init=str(tmp_path / "bare.pt"), model=None, model_overrides=None)


def test_overwrite_starts_the_run_folder_afresh_and_writes_the_resolved_config(run_copy):
    import yaml

    cdir = run_copy / "checkpoints"
    (cdir / "best.pt").write_bytes(b"old best")
    (run_copy / "skipped_files.txt").write_text("old.png: unreadable\n")
    (cdir / ".step_00000009.pt.tmp-123").write_bytes(b"half")  # left by a write that was killed
    keep = run_copy / "notes.txt"
    keep.write_text("mine")
    tr = Trainer(TrainConfig(**RUN_CFG, out=str(run_copy), overwrite=True), *_data(), log=_quiet).setup()
    tr.close()
    assert sorted(p.name for p in cdir.iterdir()) == []
    assert not (run_copy / "metrics.jsonl").exists() and not (run_copy / "skipped_files.txt").exists()
    assert keep.read_text() == "mine"
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["resolved"] == {"model_config": tr.raw.cfg.to_dict(), "classes": tr.classes, "world_size": 1,
                                 "steps_per_epoch": 2, "total_steps": 4}
    assert {k: v for k, v in saved.items() if k != "resolved"} == yaml.safe_load(
        yaml.safe_dump(tr.cfg.relevant(), sort_keys=False))


def test_resume_keeps_the_checkpoints_drops_half_written_files_and_purges_later_tensorboard_steps(run_copy,
                                                                                                   monkeypatch):
    import torch.utils.tensorboard as tb

    writers = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            writers.append((log_dir, purge_step))

        def close(self):
            writers.append("closed")

    monkeypatch.setattr(tb, "SummaryWriter", Writer)
    cdir = run_copy / "checkpoints"
    (cdir / ".step_00000009.pt.tmp-123").write_bytes(b"half")
    tr = Trainer(TrainConfig(**RUN_CFG, out=str(run_copy), resume=str(_step3(run_copy))), *_data(),
                 log=_quiet).setup()
    tr.close()
    assert writers == [(str(run_copy / "tensorboard"), 4), "closed"]  # the steps logged after step 3 are redone
    assert [s for s, _ in ckpt.step_checkpoints(run_copy)] == [2, 3, 4]
    assert not (cdir / ".step_00000009.pt.tmp-123").exists() and (run_copy / "metrics.jsonl").exists()


def test_finish_of_a_distillation_run_reports_top1_like_classification(tmp_path):
    import vitkit

    torch.manual_seed(3)
    teacher = vitkit.create_model("vit_tiny_patch4_16", width=16, depth=1, heads=2, channels=1, num_classes=10)
    vitkit.save(teacher, tmp_path / "teacher")
    logs = []
    tr = _finisher(tmp_path, ema=None, logs=logs, distill="hard", teacher=str(tmp_path / "teacher"),
                   model_overrides=dict(width=16, depth=1, heads=2, distilled=True))
    assert tr.task.name == "distill"
    tr.best = {"score": 0.5, "epoch": 2, "step": 4}
    summary = tr._finish({"top1": 0.25, "top5": 0.75}, 2.0, 0)
    assert summary == {"steps": 4, "epochs": 2, "seconds": 2.0, "val_top1": 0.25, "val_top5": 0.75,
                       "ema_top1": None, "best_top1": 0.5, "best_epoch": 2, "model_weights": "model",
                       "model_dir": str(tmp_path / "run" / "model"), "skipped_files": 0}
    assert logs == [f"vitkit train: done: 4 steps in 2.0 s, val top-1 25.00 %, best 50.00 % at epoch 2; model "
                    f"saved to {tmp_path / 'run' / 'model'}"]


# ---------------------------------------------------------------- the run folder's files

def test_skipped_files_are_listed_in_utf8_whatever_the_locale(tmp_path, monkeypatch):
    import builtins

    def latin1_locale_open(file, mode="r", buffering=-1, encoding=None, **kw):  # open() under a Latin-1 locale
        return builtins.open(file, mode, buffering, encoding=encoding or "latin-1", **kw)

    tr, logs = _setup(tmp_path)
    monkeypatch.setattr(engine, "open", latin1_locale_open, raising=False)
    tr.note_skipped(["photos/café/été.png: cannot identify image file"])
    assert (tr.run_dir / "skipped_files.txt").read_bytes() == "photos/café/été.png: cannot identify image file\n".encode()
    assert logs[-1] == "  skipped unreadable file photos/café/été.png: cannot identify image file"


def test_a_metrics_line_that_cannot_be_written_names_the_last_good_checkpoint(run_copy):
    tr = Trainer(TrainConfig(**RUN_CFG, out=str(run_copy), resume="auto"), *_data(), log=_quiet).setup()
    tr.close()
    (run_copy / "metrics.jsonl").unlink()
    (run_copy / "metrics.jsonl").mkdir()  # open(..., "a") fails: IsADirectoryError, an OSError
    with pytest.raises(ckpt.CheckpointError, match=(
            rf"could not write {run_copy / 'metrics.jsonl'}: .*; the run stopped at step 4; the last good "
            rf"checkpoint {run_copy / 'checkpoints' / 'step_00000004.pt'} is kept")):
        tr._record({"kind": "train", "step": 4, "loss": 1.0})


def test_each_metrics_row_goes_to_tensorboard_but_its_labels(tmp_path):
    import json

    class Board:
        def __init__(self):
            self.scalars, self.flushed = [], 0

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            self.flushed += 1

        def close(self):
            pass

    tr, _ = _setup(tmp_path)
    tr.tb = board = Board()
    row = {"kind": "val", "step": 6, "epoch": 3, "top1": 0.5, "loss": 2, "top5": None, "note": "text", "ok": True}
    tr._record(row)
    assert board.scalars == [("val/top1", 0.5, 6), ("val/loss", 2, 6), ("val/ok", True, 6)] and board.flushed == 1
    assert json.loads(tr.metrics_path.read_text().splitlines()[-1]) == row
    tr.info = D.DistInfo(rank=1, world_size=2)  # another process: rank 0 writes the run's files
    tr._record(dict(row, step=8))
    assert len(board.scalars) == 3 and json.loads(tr.metrics_path.read_text().splitlines()[-1])["step"] == 6


def test_every_validation_pass_draws_the_same_loader_seed(tmp_path):
    tr, _ = _setup(tmp_path, seed=5)
    assert tr.val_batches().generator.initial_seed() == 5 * 7919  # as epoch 0's loader
    assert tr._loader(tr.train_ds, [[0]], 3).generator.initial_seed() == 5 * 7919 + 3


def test_an_unreadable_file_is_reported_once_by_its_path(tmp_path):
    from vitkit.data.datasets import SkippedFile

    tr, logs = _setup(tmp_path)
    logs.clear()
    first = SkippedFile("/data/a.png", "truncated")
    tr.note_skipped([first, SkippedFile("/data/b.png", "not an image")])
    tr.note_skipped([SkippedFile("/data/a.png", "truncated (epoch 2)"), "/data/c.png: plain reason"])
    tr.note_skipped(["/data/c.png: plain reason"])
    assert list(tr.skipped) == ["/data/a.png", "/data/b.png", "/data/c.png: plain reason"]
    assert tr.skipped["/data/a.png"] is first
    assert logs == ["  skipped unreadable file /data/a.png: truncated", "  skipped unreadable file /data/b.png: not an image",
                    "  skipped unreadable file /data/c.png: plain reason"]
    assert (tr.run_dir / "skipped_files.txt").read_text().splitlines() == [
        "/data/a.png: truncated", "/data/b.png: not an image", "/data/c.png: plain reason"]


def test_save_checkpoint_writes_the_step_and_best_and_remembers_it(tmp_path):
    tr, _ = _setup(tmp_path)
    tr.global_step = 3
    path = tr.save_checkpoint(best=True)
    assert path == tr.run_dir / "checkpoints" / "step_00000003.pt" and tr._saved_at == 3
    best = ckpt.load_checkpoint(tr.run_dir / "checkpoints" / "best.pt")
    assert best["progress"]["global_step"] == 3 and best["model"].keys() == tr.raw.state_dict().keys()


def test_interrupt_writes_the_step_checkpoint_once(tmp_path, monkeypatch):
    tr, _ = _setup(tmp_path)
    tr.global_step = 2
    saves = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda state, path: (saves.append(path), real(state, path)))
    tr.save_checkpoint()
    with pytest.raises(engine.TrainingInterrupted):
        tr._interrupt()
    assert saves == [tr.run_dir / "checkpoints" / "step_00000002.pt"]


def test_save_checkpoint_of_another_process_writes_nothing(tmp_path, monkeypatch):
    tr, _ = _setup(tmp_path)
    tr.info = D.DistInfo(rank=1, world_size=2)
    monkeypatch.setattr(D, "all_gather_objects", lambda obj, info: [obj, obj])
    monkeypatch.setattr(D, "barrier", lambda info: None)
    tr.global_step = 1
    assert tr.save_checkpoint() is None and ckpt.step_checkpoints(tr.run_dir) == []


def test_a_checkpoint_that_cannot_be_written_names_the_last_good_one(tmp_path, monkeypatch):
    tr, _ = _setup(tmp_path)
    tr.global_step = 2
    tr.save_checkpoint()
    tr.global_step = 4

    def full(state, path):
        raise ckpt.CheckpointError(28, f"could not write {path}: no space left on device")

    monkeypatch.setattr(ckpt, "save_checkpoint", full)
    with pytest.raises(ckpt.CheckpointError, match=(
            r"no space left on device; the run stopped at step 4; the last good checkpoint "
            + str(tr.run_dir / "checkpoints" / "step_00000002.pt").replace(".", r"\.") + " is kept")):
        tr.save_checkpoint()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_in_the_runs_dtype_on_its_device(tmp_path, dtype):
    tr, _ = _setup(tmp_path)
    with tr.autocast():
        assert not torch.is_autocast_enabled("cpu")  # --amp none (the CPU default)
    tr.amp_dtype = dtype
    with tr.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype


def test_the_data_order_of_an_epoch_is_a_function_of_the_seed_and_the_epoch(tmp_path):
    """Pinned: a run resumed by another vitkit version must see the same images in the same order."""
    tr, _ = _setup(tmp_path, seed=5)
    for epoch in (0, 3):
        want = torch.randperm(32, generator=torch.Generator().manual_seed(5 * 1_000_003 + epoch)).tolist()
        assert tr.epoch_order(epoch) == want


class _Bar:
    """tqdm's part the engine uses, recorded."""
    made = []

    def __init__(self, **kw):
        self.kw, self.updates, self.postfix, self.written, self.closed = kw, 0, [], [], 0
        _Bar.made.append(self)

    def update(self, n):
        self.updates += n

    def set_postfix(self, **kw):
        self.postfix.append(kw)

    def write(self, line):
        self.written.append(line)

    def close(self):
        self.closed += 1


class _Stderr:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, s):
        return len(s)

    def flush(self):
        pass


@pytest.fixture
def bar(monkeypatch):
    import tqdm

    _Bar.made = []
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    return _Bar.made


@pytest.mark.parametrize("progress,rank,stderr,want", [
    (False, 0, _Stderr(True), (None, False)), (True, 1, _Stderr(True), (None, False)),
    (True, 0, _Stderr(False), (None, True)), (True, 0, object(), (None, True)), (True, 0, _Stderr(True), "bar")])
def test_progress_is_a_bar_on_a_terminal_plain_lines_elsewhere_none_when_off(tmp_path, monkeypatch, bar, progress,
                                                                            rank, stderr, want):
    tr, _ = _setup(tmp_path, steps=9)
    tr.cfg = tr.cfg.replace(progress=progress)
    tr.info = D.DistInfo(rank=rank, world_size=2 if rank else 1)
    tr.global_step = 4
    monkeypatch.setattr(engine.sys, "stderr", stderr)
    got = tr._progress_bar()
    if want != "bar":
        assert got == want and bar == []
    else:
        assert got == (bar[0], False)
        assert bar[0].kw == dict(total=9, initial=4, unit="step", dynamic_ncols=True, desc="training", file=stderr)


def test_ctrl_c_once_asks_to_stop_twice_stops_at_once_and_the_handler_is_put_back(tmp_path, capfd):
    import signal

    tr, _ = _setup(tmp_path)
    outer = signal.getsignal(signal.SIGINT)
    before = lambda signum, frame: None  # the program's own handler, which the run puts back
    signal.signal(signal.SIGINT, before)
    tr._catch_sigint()
    try:
        handler = signal.getsignal(signal.SIGINT)
        assert handler is not before
        handler(signal.SIGINT, None)
        assert tr._stop_requested
        assert capfd.readouterr().err == ("\nvitkit train: Ctrl-C: stopping after this step to write a checkpoint "
                                          "(Ctrl-C again stops at once, without one)\n")
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
    finally:
        tr._restore_sigint()
    try:
        assert signal.getsignal(signal.SIGINT) is before and tr._prev_sigint is None
        tr._restore_sigint()  # twice: nothing to put back
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, outer)


def test_ctrl_c_on_another_process_prints_nothing(tmp_path, capfd):
    import signal

    tr, _ = _setup(tmp_path)
    tr.info = D.DistInfo(rank=1, world_size=2)
    before = signal.getsignal(signal.SIGINT)
    tr._catch_sigint()
    try:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert tr._stop_requested and capfd.readouterr().err == ""
    finally:
        tr._restore_sigint()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_handler_set_outside_python_is_put_back_as_pythons_default(tmp_path):
    import signal

    tr, _ = _setup(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    tr._prev_sigint = (None,)  # what signal.signal returns for a handler not installed from Python
    try:
        tr._restore_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_is_left_alone_outside_the_main_thread(tmp_path):
    import signal
    import threading

    tr, _ = _setup(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=tr._catch_sigint)
    t.start()
    t.join()
    assert signal.getsignal(signal.SIGINT) is before and getattr(tr, "_prev_sigint", None) is None


def test_a_run_in_a_thread_trains_and_leaves_ctrl_c_alone(tmp_path):
    """A notebook's worker or a service: no signal handler can be set there, and none is put back."""
    import signal
    import threading

    before = signal.getsignal(signal.SIGINT)
    out = {}
    run = Trainer(TrainConfig(**dict(TINY, steps=2, batch_size=16, ema=None), out=str(tmp_path / "thread")), *_data(),
                  log=_quiet)
    t = threading.Thread(target=lambda: out.update(summary=run.fit()))
    t.start()
    t.join()
    assert out["summary"]["steps"] == 2 and signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------- the loop's lines, rows and bar

class _Clock:
    """time.time() for the engine: each training step (one loss) takes ``per_step`` seconds."""

    def __init__(self, per_step):
        self.now, self.per_step = 1000.0, per_step

    def time(self):
        return self.now


def _clocked(tr, monkeypatch, per_step=0.25):
    clock = _Clock(per_step)
    monkeypatch.setattr(engine, "time", clock)
    real = tr.task.loss

    def loss(*a, **kw):
        clock.now += clock.per_step
        return real(*a, **kw)

    monkeypatch.setattr(tr.task, "loss", loss)
    return clock


def _rows(tr, kind):
    import json

    return [r for r in map(json.loads, tr.metrics_path.read_text().splitlines()) if r["kind"] == kind]


def test_plain_progress_lines_first_every_fifty_and_last_step_and_the_train_rows(tmp_path, monkeypatch):
    """stderr not a terminal: a line at the run's first step, every 50 steps and the last, each with the mean
    loss since the previous line; metrics.jsonl a train row every --log-every steps and at the end."""
    monkeypatch.setattr(engine.sys, "stderr", _Stderr(False))
    logs, losses = [], []
    cfg = TrainConfig(**dict(TINY, steps=52, batch_size=2, ema=None, progress=True, log_every=25, layer_decay=0.5,
                             warmup_epochs=0, lr=0.01, min_lr=0.001),
                      out=str(tmp_path / "run"))
    tr = Trainer(cfg, *_data(128, 4), log=logs.append,
                 hooks=[_losses_hook(losses)])
    tr.setup()
    _clocked(tr, monkeypatch, per_step=0.3)
    lrs = [tr.schedule.lr_at(s) for s in range(52)]  # the schedule's, not a layer's scaled lr
    assert tr.optimizer.param_groups[0]["lr_scale"] != 1.0
    logs.clear()
    tr.fit()
    assert len(losses) == 52 and all(isinstance(x, float) for x in losses)
    mean = lambda xs: sum(xs) / len(xs)

    def line(step, since):
        t = 0.3 * step
        return (f"step {step}/52 (epoch 1/1): loss {mean(losses[since:step]):.4f}, lr {lrs[step - 1]:.2e}, "
                f"{2 * step / t:.0f} img/s, {t:.0f} s")

    assert [m for m in logs if m.startswith("step ")] == [line(1, 0), line(50, 1), line(52, 50)]
    rows = _rows(tr, "train")
    assert [(r["step"], r["epoch"]) for r in rows] == [(25, 1), (50, 1), (52, 1)]
    for r in rows:
        assert r["loss"] == losses[r["step"] - 1] and r["lr"] == pytest.approx(lrs[r["step"] - 1], rel=1e-12)
        assert r["images_per_s"] == round(2 / 0.3, 1)


def test_images_per_second_count_every_image_of_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.sys, "stderr", _Stderr(False))
    logs = []
    tr = Trainer(TrainConfig(**dict(TINY, steps=3, batch_size=16, ema=None, progress=True), out=str(tmp_path / "r")),
                 *_data(64, 4), log=logs.append).setup()
    _clocked(tr, monkeypatch, per_step=0.5)
    tr.fit()
    steps = [m for m in logs if m.startswith("step ")]
    assert steps[0].endswith(", 32 img/s, 0 s") and steps[1].endswith(", 32 img/s, 2 s")  # 16 images per 0.5 s


def test_the_bar_counts_steps_and_shows_validated_epochs_and_best_is_the_first_highest(tmp_path, monkeypatch, bar):
    monkeypatch.setattr(engine.sys, "stderr", _Stderr(True))
    logs, saved = [], []
    cfg = TrainConfig(**dict(TINY, steps=10, batch_size=16, ema=None, progress=True, eval_every=2,
                             save_every_steps=1, log_every=1), out=str(tmp_path / "run"))
    tr = Trainer(cfg, *_data(), log=logs.append).setup()
    _clocked(tr, monkeypatch, per_step=0.5)
    vals = iter([{"top1": 0.5, "score": 0.5, "note": "text", "top5": None},
                 {"top1": 0.5, "score": 0.5}, {"top1": 0.25, "score": None}])
    monkeypatch.setattr(tr.task, "evaluate", lambda trainer: next(vals))
    monkeypatch.setattr(tr.task, "score", lambda val: val["score"])
    real_save = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda state, path: (saved.append(path.name), real_save(state, path)))
    logs.clear()
    tr.fit()
    (b,) = bar
    assert b.updates == 10 and b.closed == 1 and len(b.postfix) == 10
    assert b.postfix[0]["epoch"] == 1 and b.postfix[-1]["epoch"] == 5 and b.postfix[0]["img_s"] == "32"
    # epochs 2, 4 and 5 are validated (every 2nd, and the last); 1 and 3 show no line under a bar
    assert [w.split(",")[0] for w in b.written] == ["epoch 2/5: val top-1 50.00 %", "epoch 4/5: val top-1 50.00 %",
                                                    "epoch 5/5: val top-1 25.00 %"]
    val_rows = _rows(tr, "val")
    assert [(r["step"], r["epoch"]) for r in val_rows] == [(4, 2), (8, 4), (10, 5)]
    assert val_rows[0] == {"kind": "val", "step": 4, "epoch": 2, "top1": 0.5, "score": 0.5, "top5": None}
    assert tr.best == {"score": 0.5, "epoch": 2, "step": 4}  # the first 0.5; epoch 5's None does not count
    assert ckpt.load_checkpoint(tr.run_dir / "checkpoints" / "best.pt")["progress"]["global_step"] == 4
    assert [r["epoch"] for r in _rows(tr, "train")] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # a checkpoint after each mid-epoch step (--save-every-steps 1) and at each epoch's end, each once
    assert saved == ["step_00000001.pt", "step_00000002.pt", "step_00000003.pt", "step_00000004.pt", "best.pt",
                     "step_00000005.pt", "step_00000006.pt", "step_00000007.pt", "step_00000008.pt",
                     "step_00000009.pt", "step_00000010.pt"]
    assert not any(m.startswith("step ") for m in logs)


def test_a_run_stopped_early_closes_its_bar(tmp_path, monkeypatch, bar):
    monkeypatch.setattr(engine.sys, "stderr", _Stderr(True))

    def hook(event, trainer, **info):
        if event == "step":
            trainer._stop_requested = True

    tr = Trainer(TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None, progress=True), out=str(tmp_path / "r")),
                 *_data(), hooks=[hook], log=_quiet)
    with pytest.raises(engine.TrainingInterrupted):
        tr.fit()
    assert bar[0].updates == 1 and bar[0].closed == 1


def test_a_loop_that_fails_before_its_bar_reports_its_own_error(tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("the view could not be built")

    monkeypatch.setattr(engine, "AugmentedView", broken)
    tr = Trainer(TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None), out=str(tmp_path / "r")), *_data(),
                 log=_quiet)
    with pytest.raises(RuntimeError, match="the view could not be built"):
        tr.fit()


def _losses_hook(losses):
    return lambda event, trainer, **info: losses.append(info["loss"]) if event == "step" else None


def test_epoch_lines_with_and_without_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.sys, "stderr", _Stderr(False))
    for val in (False, True):
        logs, losses = [], []
        tr_ds, val_ds = _data()
        tr = Trainer(TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None, progress=True),
                                 out=str(tmp_path / f"run-{val}")), tr_ds, val_ds if val else None,
                     log=logs.append, hooks=[_losses_hook(losses)]).setup()
        _clocked(tr, monkeypatch, per_step=0.5)
        if val:
            monkeypatch.setattr(tr.task, "evaluate", lambda trainer: {"top1": 0.125, "top5": 0.5, "val_loss": 2.0})
        tr.fit()
        got = [m for m in logs if m.startswith("epoch ")]
        head = "val top-1 12.50 %, " if val else ""
        assert got == [f"epoch 1/2: {head}train loss {(losses[0] + losses[1]) / 2:.4f} (1 s)",
                       f"epoch 2/2: {head}train loss {(losses[2] + losses[3]) / 2:.4f} (2 s)"]


# ---------------------------------------------------------------- one optimizer step

def _micro(n_micro, per=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(per, 1, 16, 16, generator=g) * 2 - 1, torch.arange(per) % 10, []) for _ in range(n_micro)]


def _loss_spy(monkeypatch, tr, values=None):
    """tr.task.loss recorded (its generator's seed, whether under no_sync); with ``values``, the i-th micro-batch's
    loss is values[i] (still backpropagating through the model)."""
    seen = []

    def loss(trainer, model, x, y, g):
        real = torch.nn.functional.cross_entropy(model(x), y)
        seen.append({"seed": g.initial_seed(), "no_sync": getattr(tr, "_in_no_sync", False)})
        return real if values is None else real * 0 + values[len(seen) - 1]

    monkeypatch.setattr(tr.task, "loss", loss)
    return seen


def test_a_step_draws_its_mixing_from_the_seed_and_the_step(tmp_path, monkeypatch):
    """Pinned: mixup/cutmix of step s are the same after a resume and across vitkit versions."""
    tr, _ = _setup(tmp_path, seed=5)
    seen = _loss_spy(monkeypatch, tr)
    tr.global_step = 7
    tr._train_step(_micro(1))
    assert seen[0]["seed"] == 5 * 2_000_003 + 7


def test_a_step_sums_the_micro_batch_losses_in_double_and_leaves_no_gradients(tmp_path, monkeypatch):
    tr, _ = _setup(tmp_path, accum_steps=3, batch_size=15, clip_grad=None)
    values = [1.0, 1e-9, 1e-9]  # float32 would lose the small ones beside a third
    _loss_spy(monkeypatch, tr, values)
    before = {k: v.clone() for k, v in tr.raw.state_dict().items()}
    got = tr._train_step(_micro(3))
    assert got == sum(float((torch.tensor(v) / 3).double()) for v in values)
    assert all(p.grad is None for p in tr.raw.parameters())  # zero_grad(set_to_none=True)
    assert any(not torch.equal(before[k], v) for k, v in tr.raw.state_dict().items())


def test_ddp_synchronises_gradients_on_the_last_micro_batch_only(tmp_path, monkeypatch):
    import contextlib

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        tr, _ = _setup(tmp_path, accum_steps=3, batch_size=15)
        tr.model = torch.nn.parallel.DistributedDataParallel(tr.raw)

        @contextlib.contextmanager
        def no_sync():
            tr._in_no_sync = True
            try:
                yield
            finally:
                tr._in_no_sync = False

        tr.model.no_sync = no_sync
        seen = _loss_spy(monkeypatch, tr)
        tr._train_step(_micro(3))
        assert [s["no_sync"] for s in seen] == [True, True, False]
    finally:
        dist.destroy_process_group()


def test_a_grad_scaler_scales_each_loss_and_unscales_before_the_step(tmp_path, monkeypatch):
    calls = []

    class Scaler:  # torch.amp.GradScaler's part the engine uses (fp16 needs CUDA)
        def scale(self, loss):
            calls.append(("scale", float(loss)))
            return loss * 1.0

        def unscale_(self, opt):
            calls.append(("unscale_", opt))

        def step(self, opt):
            calls.append(("step", opt))
            opt.step()

        def update(self):
            calls.append(("update",))

    tr, _ = _setup(tmp_path, accum_steps=2, batch_size=16)
    tr.scaler = Scaler()
    _loss_spy(monkeypatch, tr, [0.5, 0.25])
    tr._train_step(_micro(2))
    assert calls == [("scale", 0.25), ("scale", 0.125), ("unscale_", tr.optimizer), ("step", tr.optimizer),
                     ("update",)]


@pytest.mark.parametrize("device,moved", [(torch.device("cuda", 1), [torch.device("cuda", 1)]),
                                          (torch.device("mps"), [])])
def test_the_step_loss_is_averaged_over_the_processes_on_the_reducing_device(tmp_path, monkeypatch, device, moved):
    """NCCL reduces CUDA tensors, gloo CPU ones: the loss total goes to the process's CUDA device, else stays."""
    tr, _ = _setup(tmp_path, clip_grad=None)
    tr.info = D.DistInfo(rank=0, world_size=2, device=device)
    _loss_spy(monkeypatch, tr, [0.75])
    seen = []
    real_to = torch.Tensor.to

    def to(self, *a, **kw):
        if a and isinstance(a[0], torch.device) or a and a[0] is None:
            seen.append(a[0])
            return self.clone()  # no CUDA here: the tensor stays on the CPU
        return real_to(self, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(D, "all_reduce_sum", lambda t, info: t + 0.25)  # the other process's loss
    assert tr._train_step(_micro(1)) == (0.75 + 0.25) / 2
    assert seen == moved


def test_the_logged_lr_is_the_schedules_whatever_the_first_groups_layer(tmp_path):
    """Layer decay scales each group's lr; metrics.jsonl logs the schedule's (unscaled) lr. With no [CLS],
    fixed position embeddings and no patch bias, the first layer has only the patch kernel: the first two
    parameter groups are different layers with different scales."""
    over = dict(width=16, depth=1, heads=2, class_token=False, pooling="gap", pos_embed="sincos2d", patch_bias=False)
    tr, _ = _setup(tmp_path, steps=3, model_overrides=over, layer_decay=0.5, warmup_epochs=1, log_every=1)
    g = tr.optimizer.param_groups
    assert g[0]["names"] == ["patch_embed.proj.weight"] and g[0]["lr_scale"] != g[1]["lr_scale"]
    want = [tr.schedule.lr_at(s) for s in range(3)]
    tr.fit()
    assert [r["lr"] for r in _rows(tr, "train")] == pytest.approx(want, rel=1e-12)


def test_one_step_epochs_show_that_steps_loss_and_the_task_hears_of_each_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.sys, "stderr", _Stderr(False))
    for val in (False, True):
        logs, losses, epochs = [], [], []
        tr_ds, val_ds = _data(16, 8)
        tr = Trainer(TrainConfig(**dict(TINY, steps=2, batch_size=16, ema=None, progress=True),
                                 out=str(tmp_path / f"run-{val}")), tr_ds, val_ds if val else None,
                     log=logs.append, hooks=[_losses_hook(losses)]).setup()
        _clocked(tr, monkeypatch, per_step=0.5)
        monkeypatch.setattr(tr.task, "after_epoch", lambda trainer, epoch, v: epochs.append((trainer, epoch, v)))
        tr.fit()
        got = [m.split("train loss ")[1].split(" ")[0] for m in logs if m.startswith("epoch ")]
        assert got == [f"{losses[0]:.4f}", f"{losses[1]:.4f}"]  # one step per epoch: its own loss
        assert [(t, e) for t, e, _ in epochs] == [(tr, 1), (tr, 2)]
        assert all(("top1" in v) == val for _, _, v in epochs) and epochs[-1][2] is not None


# ---------------------------------------------------------------- set-up, continued

def test_setup_asks_for_the_device_given(tmp_path, monkeypatch):
    asked, real = [], D.setup
    monkeypatch.setattr(D, "setup", lambda device=None: (asked.append(device), real(device))[1])
    _setup(tmp_path, device="cpu")
    assert asked == ["cpu"]


def test_the_model_moves_to_the_processes_device(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "setup", lambda device=None: D.DistInfo(device=torch.device("meta")))
    cfg = TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None), out=str(tmp_path / "run"))
    tr = Trainer(cfg, *_data(), log=_quiet).setup()
    tr.close()
    assert tr.raw.pos_embed.device.type == "meta"


@pytest.mark.parametrize("mode,device,bf16_ok,want", [
    ("none", "cpu", True, None), ("none", "cuda", True, None), ("auto", "cpu", True, None),
    ("auto", "cuda", True, torch.bfloat16), ("auto", "cuda", False, None), ("bf16", "cpu", True, torch.bfloat16),
    ("bf16", "cuda", True, torch.bfloat16), ("fp16", "cuda", True, torch.float16), ("fp16", "cpu", True, "error")])
def test_amp_dtype_of_each_mode_and_device(tmp_path, monkeypatch, mode, device, bf16_ok, want):
    tr, _ = _setup(tmp_path)
    tr.cfg = tr.cfg.replace(amp=mode)
    tr.info = D.DistInfo(device=torch.device(device))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **kw: bf16_ok)
    if want == "error":
        with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device; use bf16 or none on the CPU"):
            tr._amp_dtype()
    else:
        assert tr._amp_dtype() == want


def test_amp_setting_reaches_the_run_and_fp16_gets_a_grad_scaler(tmp_path, monkeypatch):
    tr, logs = _setup(tmp_path, amp="bf16")
    assert tr.amp_dtype == torch.bfloat16 and tr.scaler is None and logs[-1].endswith(", bfloat16")
    monkeypatch.setattr(Trainer, "_amp_dtype", lambda self: torch.float16)  # fp16 needs CUDA: asked for directly
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns that CUDA is not available here
        tr, _ = _setup(tmp_path / "fp16")
    assert isinstance(tr.scaler, torch.amp.GradScaler) and tr.scaler._device == "cuda"


def test_pretraining_keeps_no_ema_of_its_own(tmp_path):
    tr, _ = _setup(tmp_path, method="mae", ema=0.9)
    assert tr.ema is None
    tr, _ = _setup(tmp_path / "classify", ema=0.9)
    assert tr.ema is not None


def test_the_schedule_ends_at_the_min_lr(tmp_path):
    tr, _ = _setup(tmp_path, lr=0.01, min_lr=0.002)
    assert (tr.schedule.peak, tr.schedule.min_lr, tr.schedule.total) == (0.01, 0.002, 4)


def test_fsdp_is_asked_of_the_wrapper(tmp_path, monkeypatch):
    _two_processes(monkeypatch, 0)
    wrapped = []
    monkeypatch.setattr(D, "wrap", lambda model, info, fsdp: (wrapped.append(fsdp), model)[1])
    _setup(tmp_path, fsdp=True)
    _setup(tmp_path / "ddp")
    assert wrapped == [True, False]


def test_a_validation_folder_is_the_validation_set(tmp_path):
    _image_folder(tmp_path / "train", 2, 4)
    _image_folder(tmp_path / "val", 2, 3)
    tr, _ = _setup(tmp_path, given=False, data=str(tmp_path / "train"), val_data=str(tmp_path / "val"), batch_size=4)
    assert len(tr.train_ds) == 8 and len(tr.val_ds) == 6


def test_a_checkpoints_state_holds_what_a_resume_and_inference_read(tmp_path):
    tr, _ = _setup(tmp_path)
    st = tr._state()
    assert set(st) == {"format", "format_version", "model", "model_config", "classes", "preprocess", "train_config",
                       "optimizer", "scheduler", "scaler", "ema", "task", "progress", "rng", "world_size"}
    assert st["preprocess"] == tr.raw.preprocess_cfg.to_dict() and st["train_config"] == tr.cfg.to_dict()
    assert st["scaler"] is None and st["world_size"] == 1
    assert st["task"] == {"name": "classify", "state": tr.task.state_dict(), "inference": tr.task.inference_source()}

    class Scaler:
        def state_dict(self):
            return {"scale": 1024.0}

    tr.scaler = Scaler()
    assert tr._state()["scaler"] == {"scale": 1024.0}
    tr, _ = _setup(tmp_path / "mae", method="mae")
    assert tr._state()["task"]["inference"] == tr.task.inference_source() is not None


def test_resume_trims_metrics_lines_written_after_the_checkpoint(tmp_path):
    tr, _ = _setup(tmp_path)
    lines = ['{"kind": "train", "step": 1}', '{"kind": "tr', '{"kind": "train", "step": 2}', '{"kind": "note"}',
             '{"kind": "train", "step": 3}']
    tr.metrics_path.write_text("\n".join(lines) + "\n")
    tr.global_step = 2
    tr._trim_metrics()  # the cut line goes, the lines after it stay; a row without a step is kept
    assert tr.metrics_path.read_text() == "\n".join([lines[0], lines[2], lines[3]]) + "\n"
    tr.metrics_path.write_text('{"kind": "train", "step": 3}\n{"step": 4}\n')
    tr._trim_metrics()
    assert tr.metrics_path.read_bytes() == b""
    tr.metrics_path.write_text('{"kind": "note"}\n')
    tr.global_step = 0
    tr._trim_metrics()
    assert tr.metrics_path.read_text() == '{"kind": "note"}\n'


@pytest.mark.parametrize("device,pin", [("cuda", True), ("cpu", False)])
def test_loaders_pin_memory_for_cuda_only(tmp_path, device, pin):
    tr, _ = _setup(tmp_path)
    tr.info = D.DistInfo(device=torch.device(device))
    assert tr._loader(tr.train_ds, [[0]], 0).pin_memory is pin


def test_curves_hooks_and_seconds_of_each_epoch(tmp_path, monkeypatch):
    plots, events = [], []
    monkeypatch.setattr(engine, "plot_curves", lambda metrics, png: plots.append((metrics, png)))
    tr = Trainer(TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None), out=str(tmp_path / "run")), *_data(),
                 log=_quiet, hooks=[lambda event, trainer, **info: events.append((event, trainer, info))]).setup()
    _clocked(tr, monkeypatch, per_step=0.5)
    summary = tr.fit()
    run = tmp_path / "run"
    assert plots == [(run / "metrics.jsonl", run / "curves.png")] * 2
    ends = [(t, info) for e, t, info in events if e == "epoch"]
    assert [t for t, _ in ends] == [tr, tr] and [info["epoch"] for _, info in ends] == [1, 2]
    assert all("top1" in info for _, info in ends)
    assert summary["seconds"] == 2.0  # four steps of 0.5 s on the run's clock


def test_ctrl_c_at_an_epochs_end_stops_there_but_not_after_the_last(tmp_path):
    def hook(event, trainer, **info):
        if event == "epoch":
            trainer._stop_requested = True

    tr = Trainer(TrainConfig(**dict(TINY, steps=4, batch_size=16, ema=None), out=str(tmp_path / "run")), *_data(),
                 hooks=[hook], log=_quiet)
    with pytest.raises(engine.TrainingInterrupted) as e:
        tr.fit()
    assert e.value.step == 2
    tr = Trainer(TrainConfig(**dict(TINY, steps=2, batch_size=16, ema=None), out=str(tmp_path / "one")), *_data(),
                 hooks=[hook], log=_quiet)
    assert tr.fit()["steps"] == 2  # the last epoch: the run is complete, nothing to stop


def test_setup_tidies_what_a_killed_model_swap_left(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".model.old-11").mkdir()
    (run / ".model.old-11" / "config.json").write_text("{}")  # killed between the renames: RUN/model is gone
    (run / ".model.tmp-12").mkdir()
    (run / ".model.tmp-13").write_text("a file, not a folder")  # not ours to remove: left, and no error
    _setup(tmp_path)
    assert (run / "model" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in run.glob(".model*")) == [".model.tmp-13"]
    (run / ".model.old-14").mkdir()  # the swap finished its second rename: the old copy goes
    _setup(tmp_path)
    assert not (run / ".model.old-14").exists() and (run / "model" / "config.json").exists()


def test_a_checkpoint_before_any_validation_holds_an_empty_best(tmp_path):
    tr, _ = _setup(tmp_path)
    tr.global_step = 1
    tr.save_checkpoint()
    st = ckpt.load_checkpoint(tr.run_dir / "checkpoints" / "step_00000001.pt")
    assert st["progress"]["best"] == {"score": None, "epoch": None, "step": None}


def test_a_stray_file_named_like_an_old_model_does_not_stop_the_run(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / ".model.old-15").write_text("a file, not a folder")  # not ours to remove: left, and no error
    _setup(tmp_path)
    assert (run / ".model.old-15").read_text() == "a file, not a folder"


def test_config_yaml_keeps_the_settings_order(tmp_path):
    """RUN/config.yaml lists the settings in TrainConfig's order (model, data, ... as --help shows them), then
    what was resolved; not alphabetically."""
    import yaml

    tr, _ = _setup(tmp_path)
    saved = yaml.safe_load((tr.run_dir / "config.yaml").read_text())
    assert list(saved) == list(tr.cfg.relevant()) + ["resolved"]
    assert list(saved["resolved"]) == ["model_config", "classes", "world_size", "steps_per_epoch", "total_steps"]
