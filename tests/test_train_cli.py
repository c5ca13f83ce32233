"""`vitkit train`, `vitkit eval`, `vitkit demo` driven in-process through vitkit.cli.main.main."""

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.train.checkpoint import load_checkpoint, step_checkpoints
from vitkit.utils import atomic

from helpers import disk_full_on

SRC = str(Path(__file__).resolve().parents[1] / "src")

TINY = ["--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=2,heads=4", "--no-progress"]


def _folder(root, n=6, bad=None):
    rng = np.random.default_rng(0)
    for c, base in (("dark", 40), ("light", 200)):
        for split, k in (("train", n), ("val", 2)):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                a = np.clip(base + rng.integers(-20, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    if bad:
        (root / "train" / "dark" / bad).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")


def test_train_run_folder_eval_and_config_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.002\nbatch-size: 32\nepochs: 5\n")
    run = tmp_path / "run"
    rc = main(["train", *TINY, "--data", "digits", "--config", str(cfg), "--epochs", "2", "--out", str(run),
               "--log-every", "5"])
    out = capsys.readouterr().out
    assert rc == 0 and "vitkit train: done:" in out and "val top-1" in out
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["lr"] == 0.002 and resolved["batch_size"] == 32 and resolved["epochs"] == 2  # flag wins
    assert resolved["resolved"]["model_config"]["width"] == 32
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "curves.png", "summary.json", "model", "checkpoints", "tensorboard"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "val"] == [1, 2]
    assert vitkit.load(run / "model").cfg.labels == [str(i) for i in range(10)]

    rc = main(["eval", str(run), "--data", "digits"])
    out = capsys.readouterr().out
    assert rc == 0 and "top-1:" in out and "top-5:" in out and "per-class accuracy" in out and "confusion matrix" in out
    res = json.loads((run / "eval-digits" / "results.json").read_text())
    assert res["n"] == 360 and len(res["confusion"]) == 10 and sum(map(sum, res["confusion"])) == 360
    assert abs(res["top1"] - json.loads((run / "summary.json").read_text())["val_top1"]) < 0.02 or \
        abs(res["top1"] - json.loads((run / "summary.json").read_text())["ema_top1"]) < 0.02
    assert (run / "eval-digits" / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    # eval of a training checkpoint file; a data set with other classes is refused
    ck = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    assert main(["eval", str(ck), "--data", "digits", "--out", str(tmp_path / "ev")]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", "lfw-faces"]) == 2
    assert "2 classes" in capsys.readouterr().err

    # a fresh run into a run folder with checkpoints is refused (nothing touched); --resume continues it
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main(["train", *TINY, "--data", "digits", "--epochs", "1", "--out", str(run)]) == 2
    assert "already holds the checkpoints" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert main(["train", "--resume", "--epochs", "2", "--no-progress"]) == 2
    assert "--resume without a path needs --out" in capsys.readouterr().err

    # resume with only --resume: settings come from the checkpoint, the run continues to --epochs 3
    rc = main(["train", "--resume", str(ck), "--epochs", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "resumed from" in out
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_folder_with_unreadable_file_is_skipped_and_reported(tmp_path, capsys):
    """RELIABILITY item 17 (documented in docs/training.md): the run goes on, names the skipped file
    on the console and in RUN/skipped_files.txt; --strict-data stops with the file's path instead."""
    _folder(tmp_path / "data", bad="broken.jpg")
    run = tmp_path / "run"
    rc = main(["train", *TINY, "--data", str(tmp_path / "data"), "--epochs", "2", "--batch-size", "4",
               "--image-size", "16", "--workers", "2", "--out", str(run)])  # two loader processes
    out = capsys.readouterr().out
    assert rc == 0
    assert "skipped unreadable file" in out and "broken.jpg" in out and "1 unreadable file(s) skipped" in out
    assert "broken.jpg" in (run / "skipped_files.txt").read_text()
    assert vitkit.load(run / "model").cfg.labels == ["dark", "light"]
    assert main(["eval", str(run), "--data", str(tmp_path / "data")]) == 0
    assert "images: 4 " in capsys.readouterr().out  # the folder's val/ part
    csv = tmp_path / "val.csv"
    csv.write_text("path,label\n" + "".join(f"data/val/{c}/{i}.png,{c}\n" for c in ("dark", "light") for i in range(2))
                   + "data/train/dark/broken.jpg,dark\n")
    assert main(["eval", str(run / "model"), "--data", str(csv), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "images: 4 " in out and "skipped 1 unreadable file" in out and "broken.jpg" in out
    rc = main(["train", *TINY, "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4",
               "--workers", "0", "--strict-data", "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert rc == 2 and "vitkit: error: unreadable image" in err and "broken.jpg" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--data", "nowhere/", "--epochs", "1"], "data source 'nowhere/' does not exist"),
    (["--data", "digits"], "give --epochs or --steps"),
    (["--data", "digits", "--epochs", "1", "--batch-size", "5000"], "larger than the training set"),
    (["--data", "digits", "--epochs", "1", "--model-set", "width=34,heads=4"], "width 34 is not divisible by heads 4"),
    (["--data", "digits", "--epochs", "1", "--resume", "missing.pt"], "missing.pt does not exist"),
])
def test_train_clear_errors(tmp_path, capsys, args, message):
    rc = main(["train", *TINY, *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_empty_image_folder_error(tmp_path, capsys):
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    rc = main(["train", *TINY, "--data", str(tmp_path / "d"), "--epochs", "1", "--out", str(tmp_path / "r")])
    assert rc == 2 and "no images found in" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--layer-decay", "--mixup", "--cutmix", "--randaugment", "--random-erasing", "--ema", "--fsdp",
                 "--resume", "--accum-steps", "--clip-grad", "--linear-probe", "--compile", "--amp", "--config"):
        assert flag in out


def test_demo_trains_saves_and_classifies(tmp_path, capsys):
    out = tmp_path / "demo"
    for _ in range(2):  # a second demo into the same folder starts over
        assert main(["demo", "--epochs", "2", "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert "validation top-1:" in text and "time taken:" in text and "reloaded with vitkit.load" in text
        assert "true " in text and "predicted " in text and "of 8 right" in text
    model = vitkit.load(out)
    assert model.labels == [str(i) for i in range(10)] and model.cfg.channels == 1
    assert (out / "run" / "curves.png").exists()
    assert main(["demo", "--epochs", "0"]) == 2 and "--epochs must be at least 1" in capsys.readouterr().err


def test_full_disk_during_a_run_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """RELIABILITY item 22 through the CLI: ENOSPC while writing step 4's checkpoint."""
    from vitkit.train import checkpoint as ckpt

    disk_full_on(monkeypatch, ckpt, ".step_00000004.pt.tmp")
    run = tmp_path / "run"
    rc = main(["train", *TINY, "--data", "digits", "--steps", "6", "--save-every-steps", "2", "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "step_00000004.pt: the disk is full" in err and "step_00000002.pt is kept" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt"]
    assert ckpt.load_checkpoint(run)["progress"]["global_step"] == 2


def test_recipe_options_run(tmp_path, capsys):
    """SGD, bf16 autocast on the CPU, layer-wise decay, RandAugment, random erasing, mixup+cutmix, accumulation."""
    rc = main(["train", *TINY, "--data", "lfw-faces", "--steps", "3", "--batch-size", "16", "--accum-steps", "2",
               "--optimizer", "sgd", "--lr", "0.05", "--amp", "bf16", "--layer-decay", "0.75", "--randaugment", "2,9",
               "--random-erasing", "0.5", "--mixup", "0.8", "--cutmix", "1.0", "--hflip", "0.5", "--clip-grad", "none",
               "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    import yaml as _yaml

    cfg = _yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["optimizer"] == "sgd" and cfg["amp"] == "bf16" and cfg["clip_grad"] is None and cfg["layer_decay"] == 0.75
    assert main(["train", *TINY, "--data", "digits", "--steps", "1", "--amp", "fp16", "--out", str(tmp_path / "f")]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_strict_data_with_loader_workers_is_the_same_one_line_error(tmp_path, capsys):
    """RELIABILITY item 17 with --workers > 0: the error raised in a loader process reaches the
    user as the same one line as with --workers 0 (not the worker's traceback)."""
    _folder(tmp_path / "data", bad="broken.jpg")
    errs = {}
    for workers in ("0", "2"):
        run = tmp_path / f"strict{workers}"
        rc = main(["train", *TINY, "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4",
                   "--image-size", "16", "--workers", workers, "--strict-data", "--out", str(run)])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and "worker" not in err
        errs[workers] = [l for l in err.splitlines() if l.startswith("vitkit: error:")]
        assert not list((run / "checkpoints").glob("step_*.pt"))
    assert errs["0"] == errs["2"] and len(errs["2"]) == 1
    bad = tmp_path / "data" / "train" / "dark" / "broken.jpg"
    assert errs["2"][0].startswith(f"vitkit: error: unreadable image {bad}: cannot read image header")
    assert errs["2"][0].count(str(bad)) == 1  # named once, not "PATH: PATH: ..."


def test_each_skipped_file_is_reported_once(tmp_path, capsys):
    """Without --strict-data, two loader processes, three epochs, and a bad file in both the
    training and the validation part (one with a name that is not UTF-8): one line per file."""
    _folder(tmp_path / "data", bad="broken.jpg")
    val_bad = os.fsencode(tmp_path / "data" / "val" / "light") + b"/caf\xe9.png"
    with open(val_bad, "wb") as f:
        f.write(b"not a png")
    run = tmp_path / "run"
    rc = main(["train", *TINY, "--data", str(tmp_path / "data"), "--epochs", "3", "--batch-size", "4",
               "--image-size", "16", "--workers", "2", "--out", str(run)])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [l for l in out.splitlines() if "skipped unreadable file" in l]
    assert len(lines) == 2 and "2 unreadable file(s) skipped" in out
    assert sum("broken.jpg" in l for l in lines) == 1 and sum("caf\\xe9.png" in l for l in lines) == 1
    recorded = (run / "skipped_files.txt").read_bytes().decode("utf-8").splitlines()  # valid UTF-8
    assert len(recorded) == 2 and any("caf\\xe9.png" in l for l in recorded)


def test_resume_into_another_run_folder_is_refused(tmp_path, capsys):
    """RELIABILITY item 37: --resume of run A with --out B stops before writing anything in either."""
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        assert main(["train", *TINY, "--data", "digits", "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    before = (_snapshot(a), _snapshot(b))
    ck = a / "checkpoints" / "step_00000002.pt"
    for target in (b, tmp_path / "new"):
        rc = main(["train", "--resume", str(ck), "--steps", "4", "--no-progress", "--out", str(target)])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert f"cannot resume {ck} into --out {target}: the checkpoint belongs to the run folder {a}" in err
        assert f"--model {ck}" in err
    assert (_snapshot(a), _snapshot(b)) == before and not (tmp_path / "new").exists()
    # its own folder, given or not, still resumes
    assert main(["train", "--resume", str(ck), "--steps", "3", "--no-progress", "--out", str(a)]) == 0
    assert json.loads((a / "summary.json").read_text())["steps"] == 3


LOCK_HOLDER = """
import sys
sys.path.insert(0, {src!r})
from vitkit.train.lock import RunLock
RunLock({run!r}).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold it until killed
"""


def test_a_second_run_on_the_same_out_is_refused_and_a_stale_lock_does_not_block(tmp_path, capsys):
    """RELIABILITY item 36: another process holds RUN/.lock -> the second run refuses, naming the lock
    file and the process, and changes nothing; once that process is killed (-9), the .lock file it
    leaves does not block."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", "digits", "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER.format(src=SRC, run=str(run))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        for extra in (["--resume"], ["--overwrite"]):
            rc = main(["train", *TINY, "--data", "digits", "--steps", "4", "--out", str(run), *extra])
            err = capsys.readouterr().err
            assert rc == 2 and "Traceback" not in err
            assert f"{run} is in use by another vitkit train (process {holder.pid} holds the lock {run}/.lock)" in err
        assert _snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (run / ".lock").exists()  # left behind by the killed holder
    assert main(["train", *TINY, "--data", "digits", "--steps", "4", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


SLOW_CLI = """
import sys, time
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from vitkit.train import engine
real = engine.Trainer._train_step
def slow(self, micro):  # the same numbers, slower: time to press Ctrl-C mid-run
    out = real(self, micro)
    time.sleep(0.3)
    return out
engine.Trainer._train_step = slow
from vitkit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_writes_a_checkpoint_prints_the_resume_command_and_resume_is_exact(tmp_path, capsys):
    """RELIABILITY item 40: SIGINT to the whole process group (what a terminal's Ctrl-C sends, loader
    workers included) after the first step -> a step checkpoint at the interruption, the resume
    command on its own line, exit 130; that command continues to the same losses and parameters as
    an uninterrupted run."""
    _folder(tmp_path / "data", n=8)  # 16 training images, 4 steps per epoch at batch 4
    args = [*TINY, "--data", str(tmp_path / "data"), "--steps", "10", "--batch-size", "4", "--image-size", "16",
            "--workers", "2", "--log-every", "1", "--threads", "1"]
    full = tmp_path / "full"
    assert main(["train", *args, "--out", str(full)]) == 0
    capsys.readouterr()

    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", SLOW_CLI.format(src=SRC), "train", *args, "--out", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        m = run / "metrics.jsonl"
        if m.exists() and '"step": 1,' in m.read_text():
            break
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err

    step = int(re.search(r"interrupted at step (\d+) of 10", err).group(1))
    assert 1 <= step < 10 and [s for s, _ in step_checkpoints(run)][-1] == step  # written at the interruption
    ck = run / "checkpoints" / f"step_{step:08d}.pt"
    assert load_checkpoint(ck)["progress"]["global_step"] == step
    command = f"vitkit train --resume {ck}"
    assert command in err.splitlines()  # on a line of its own

    assert main(command.split()[1:]) == 0  # what the user pastes (without the program name)
    capsys.readouterr()

    def losses(r):
        rows = [json.loads(l) for l in (r / "metrics.jsonl").read_text().splitlines() if l.strip()]
        return {x["step"]: x["loss"] for x in rows if x["kind"] == "train"}

    assert losses(run) == losses(full) and sorted(losses(full)) == list(range(1, 11))
    a, b = (load_checkpoint(r)["model"] for r in (run, full))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_without_a_terminal_progress_is_plain_lines_not_bar_redraws(tmp_path, capsys, monkeypatch):
    """`make demo > log`: no tqdm redraws ('\\r') in a log, a line every 50 steps plus one per epoch."""
    run = tmp_path / "run"
    args = ["--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=2,heads=4", "--data", "digits",
            "--steps", "110", "--batch-size", "32", "--eval-every", "2"]  # 44 steps per epoch, 3 epochs
    assert main(["train", *args, "--out", str(run)]) == 0  # progress on (the default), output captured
    out, err = capsys.readouterr()
    assert "\r" not in out + err and len(out + err) < 3000
    steps = [l.split()[1] for l in out.splitlines() if l.startswith("step ")]
    assert steps == ["1/110", "50/110", "100/110", "110/110"]
    epochs = [l for l in out.splitlines() if l.startswith("epoch ")]
    assert len(epochs) == 3 and "train loss" in epochs[0] and "val top-1" in epochs[1]

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # on a terminal: the bar, no plain lines
    assert main(["train", *args, "--steps", "4", "--out", str(tmp_path / "tty")]) == 0
    out, err = capsys.readouterr()
    assert "\r" in err and "training" in err and not any(l.startswith("step ") for l in out.splitlines())


def _fail_writes_of(monkeypatch, needle, err, where="fsync"):
    """Make the atomic writer fail with errno ``err`` for temporary files whose name holds ``needle``:
    at fsync (mid-write: the bytes are in the temporary file) or at the rename."""
    if where == "fsync":
        real = os.fsync

        def fsync(fd):
            if needle in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(err, os.strerror(err))
            return real(fd)

        monkeypatch.setattr(atomic.os, "fsync", fsync)
    else:
        real = os.replace

        def replace(a, b):
            if needle in str(a):
                raise OSError(err, os.strerror(err), str(b))
            return real(a, b)

        monkeypatch.setattr(atomic.os, "replace", replace)


@pytest.mark.parametrize("err,where,why", [(28, "fsync", "the disk is full"),
                                            (30, "replace", "the file system is read-only")])
def test_final_model_save_failure_keeps_the_previous_model(tmp_path, capsys, monkeypatch, err, where, why):
    """RELIABILITY items 22/38 for RUN/model: ENOSPC mid-write or EROFS -> one line, exit 2, the
    previous RUN/model byte for byte, and the run's checkpoint named."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", "digits", "--steps", "2", "--out", str(run)]) == 0
    before = _snapshot(run / "model")
    capsys.readouterr()
    _fail_writes_of(monkeypatch, "model.safetensors", err, where)
    rc = main(["train", *TINY, "--data", "digits", "--steps", "3", "--out", str(run), "--overwrite"])
    out, errtext = capsys.readouterr()
    assert rc == 2 and "Traceback" not in errtext and len(errtext.strip().splitlines()) == 1
    assert f"vitkit: error: could not write {run / 'model'}: {why}; the previous model is kept" in errtext
    assert "step_00000003.pt" in errtext
    assert _snapshot(run / "model") == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".model")) == []


def test_eval_out_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """RELIABILITY item 38 for `vitkit eval --out`: a read-only folder and a full disk."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", "digits", "--steps", "2", "--out", str(run)]) == 0
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--data", "digits", "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()

    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name == "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["eval", str(run), "--data", "digits", "--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert f"vitkit: error: could not create the output folder {tmp_path / 'ro'}: the file system is read-only" in err
    assert "Traceback" not in err

    disk_full_on(monkeypatch, atomic, "results.json")
    assert main(["eval", str(run), "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"could not write {out / 'results.json'}: the disk is full; the previous version is kept" in err
    assert "Traceback" not in err and _snapshot(out)["results.json"] == before["results.json"]
