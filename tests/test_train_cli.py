"""`vitkit train`, `vitkit eval`, `vitkit demo` driven in-process through vitkit.cli.main.main."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import vitkit
from vitkit.cli.main import main

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
    import errno
    import os

    from vitkit.train import checkpoint as ckpt

    real = os.fsync

    def fsync(fd):
        if ".step_00000004.pt.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
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
