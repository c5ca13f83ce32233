"""`vitkit pretrain` (MAE and DINO) on the one training loop: exact resume, the frozen teacher, the monitor,
the pictures, the encoder saved as a plain model, fine-tuning from it, and a plain folder of images as data."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vitkit
from vitkit.train import TrainConfig, Trainer
from vitkit.train.checkpoint import load_checkpoint, step_checkpoints

from test_tasks import _losses, _small_data, resume_matches_uninterrupted

BASE = dict(model="vit_tiny_patch4_16", model_overrides=dict(width=32, depth=2, heads=2), data="digits",
            progress=False, workers=0, batch_size=16, threads=1, log_every=1, ema=None, label_smoothing=0.0,
            rotate=0.0, translate=0.0, scale=0.0, knn_k=5)
MAE = dict(BASE, method="mae", decoder_width=32, decoder_depth=1, decoder_heads=2, betas=(0.9, 0.95))
DINO = dict(BASE, method="dino", out_dim=64, head_hidden=64, head_bottleneck=32, local_crops=2, crop_scale=(0.4, 1.0),
            warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=1, momentum_teacher=0.9)


@pytest.mark.parametrize("cfg", [MAE, DINO], ids=["mae", "dino"])
def test_pretraining_resumes_exactly(tmp_path, cfg):
    """Stopped after step 5, resumed from its step-4 checkpoint, in the middle of the first epoch (6 steps): the
    same loss at every step, the same epoch lines (the resumed epoch's train loss too), the same student and
    (DINO) the same teacher and centre as the uninterrupted run."""
    a, b = resume_matches_uninterrupted(tmp_path, dict(cfg, steps=9), _small_data, stop_at=5, ckpt_every=4)
    assert a["task"]["name"] == cfg["method"]
    if cfg["method"] == "dino":
        ta, tb = a["task"]["state"], b["task"]["state"]
        assert torch.equal(ta["center"], tb["center"]) and not torch.equal(ta["center"], torch.zeros_like(ta["center"]))
        assert all(torch.equal(ta["teacher"][k], tb["teacher"][k]) for k in ta["teacher"])


def test_mae_run_saves_the_encoder_pictures_and_monitor(tmp_path):
    run = tmp_path / "mae"
    summary = Trainer(TrainConfig(**MAE, epochs=2, out=str(run)), *_small_data(), log=lambda m: None).fit()
    assert summary["model_weights"] == "encoder" and summary["objective"] == "mae"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(val) == 2 and all(0 <= r["knn_top1"] <= 1 and r["val_loss"] > 0 for r in val)
    for png in ("reconstructions.png", "curves.png"):
        assert Image.open(run / png).format == "PNG"
    enc = vitkit.load(run)  # RUN/model: a plain, head-less vitkit ViT
    assert enc.cfg.num_classes == 0 and enc.cfg.width == 32
    ck = load_checkpoint(step_checkpoints(run)[-1][1])
    mae_state = ck["model"]
    assert any(k.startswith("decoder") for k in mae_state)  # the checkpoint holds the decoder too
    from_ckpt = vitkit.load(step_checkpoints(run)[-1][1])  # a checkpoint loads as the encoder alone
    assert all(torch.equal(from_ckpt.state_dict()[k], v) for k, v in enc.state_dict().items())
    assert all(torch.equal(mae_state["encoder." + k], v) for k, v in enc.state_dict().items())


def test_dino_teacher_gets_no_gradients_and_becomes_the_model(tmp_path):
    run = tmp_path / "dino"
    seen = {}

    def hook(event, trainer, **info):
        if event == "step":
            t = trainer.task.teacher
            seen.setdefault("grads", []).append(all(p.grad is None and not p.requires_grad for p in t.parameters()))
            head = trainer.task.student.head
            last = [p for n, p in head.named_parameters() if "last_layer" in n and "original1" in n]
            seen.setdefault("last", []).append(last[0].detach().clone())

    tr = Trainer(TrainConfig(**DINO, epochs=2, out=str(run)), *_small_data(), hooks=[hook], log=lambda m: None)
    summary = tr.fit()
    assert all(seen["grads"])
    per_epoch = len(seen["last"]) // 2
    first, second = seen["last"][:per_epoch], seen["last"][per_epoch:]
    assert all(torch.equal(first[0], t) for t in first)  # frozen during the first epoch
    assert not torch.equal(first[-1], second[-1])  # trained afterwards
    assert summary["model_weights"] == "teacher"
    teacher = tr.task.teacher.backbone.state_dict()
    model = vitkit.load(run)
    assert all(torch.equal(model.state_dict()[k], teacher[k].cpu()) for k in model.state_dict())
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert all("teacher_entropy" in r and "teacher_spread" in r for r in train_rows)
    assert train_rows[0]["momentum"] == pytest.approx(0.9)
    assert Image.open(run / "attention.png").format == "PNG"
    assert [r for r in rows if r["kind"] == "val"][-1]["knn_top1"] >= 0


def _plain_folder(root: Path, n=40):
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(20, 20, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(root / f"img_{i:03d}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_pretrain_cli_on_a_plain_folder_then_fine_tune_from_the_run(tmp_path, capsys):
    from vitkit.cli.main import main

    folder = _plain_folder(tmp_path / "unlabelled")
    run = tmp_path / "mae"
    rc = main(["pretrain", "--method", "mae", "--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=1,heads=2",
               "--data", str(folder), "--epochs", "2", "--batch-size", "8", "--threads", "1", "--no-progress",
               "--decoder-width", "32", "--decoder-depth", "1", "--decoder-heads", "2", "--out", str(run)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    text = out.out + out.err
    assert "vitkit pretrain: done" in text and "skipped unreadable file" in text
    cfg = (run / "config.yaml").read_text()
    assert "method: mae" in cfg
    # no labels: nothing validated, the encoder saved all the same
    assert vitkit.load(run).cfg.num_classes == 0
    ft = tmp_path / "ft"
    rc = main(["train", "--init", str(run), "--data", "digits", "--steps", "3", "--batch-size", "32", "--threads", "1",
               "--no-progress", "--out", str(ft)])
    assert rc == 0
    text = "".join(capsys.readouterr())
    assert "fine-tuning from" in text and "head added: 10 classes" in text
    m = vitkit.load(ft)
    assert m.cfg.num_classes == 10 and m.cfg.width == 32


def test_mae_on_plain_folders_validates_on_the_unlabelled_val_folder(tmp_path, capsys):
    """Unlabelled validation images (label -1) are scored, not dropped as padding: a finite reconstruction
    loss every epoch, and best.pt the epoch with the lowest."""
    from vitkit.cli.main import main

    train, val = _plain_folder(tmp_path / "unlabelled"), _plain_folder(tmp_path / "unlabelled_val", n=11)
    run = tmp_path / "mae"
    rc = main(["pretrain", "--method", "mae", "--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=1,heads=2",
               "--data", str(train), "--val-data", str(val), "--epochs", "2", "--batch-size", "8", "--threads", "1",
               "--no-progress", "--decoder-width", "32", "--decoder-depth", "1", "--decoder-heads", "2",
               "--out", str(run)])
    assert rc == 0, capsys.readouterr().err
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["kind"] == "val"]
    assert len(vals) == 2 and all(0 < r["val_loss"] < 10 for r in vals)
    json.loads((run / "summary.json").read_text(), parse_constant=pytest.fail)  # no NaN in it
    assert (run / "checkpoints" / "best.pt").is_file()


def test_knn_k_above_the_memory_bank_is_said_once(tmp_path):
    logs = []
    Trainer(TrainConfig(**{**MAE, "knn_k": 500}, epochs=2, out=str(tmp_path / "mae")), *_small_data(),
            log=logs.append).fit()
    said = [m for m in logs if "--knn-k 500" in m]
    assert len(said) == 1 and "96 training images" in said[0] and "k = 96" in said[0]


def test_pretrain_resume_of_a_folder_without_checkpoints_says_so(tmp_path, capsys):
    from vitkit.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--method" not in err


def test_pretrain_data_errors_name_the_plain_folder(tmp_path, capsys):
    from vitkit.cli.main import main

    (tmp_path / "notes.txt").write_text("not images")
    args = ["pretrain", "--method", "mae", "--model", "vit_tiny_patch4_16", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main([*args, "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in (err := capsys.readouterr().err) and "a plain folder of images" in err
    assert main([*args, "--data", str(tmp_path / "notes.txt")]) == 2
    assert "expected a folder of images, a folder of class folders or a .csv file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_preview_images_are_spread_over_a_class_sorted_validation_set():
    """A class folder lists its images class by class: the PNG's fixed images come from every class, and an
    unreadable image is replaced by the next readable one."""
    from types import SimpleNamespace

    from vitkit.data.datasets import TensorImageDataset
    from vitkit.tasks.pretrain import PretrainTask

    labels = [c for c in range(3) for _ in range(10)]  # sorted by class, as a folder is read
    images = torch.arange(30, dtype=torch.float32).view(30, 1, 1, 1).expand(30, 1, 4, 4).contiguous()
    ds = TensorImageDataset(images, labels, ["a", "b", "c"], (4, 4), 1, "sorted")
    trainer = SimpleNamespace(val_ds=ds, train_ds=None, eval_transform=lambda x: x)
    task = PretrainTask.__new__(PretrainTask)
    picked = [int(x[0, 0, 0]) for x in task.preview_images(trainer, 4)]
    assert len(picked) == 4 and len(set(picked)) == 4 and {labels[i] for i in picked} == {0, 1, 2}

    class Holes(torch.utils.data.Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return (None, "unreadable") if i % 2 == 0 else ds[i]

    trainer.val_ds = Holes()
    picked = [int(x[0, 0, 0]) for x in task.preview_images(trainer, 4)]
    assert len(picked) == 4 and all(i % 2 == 1 for i in picked) and len(set(picked)) == 4


def test_pretrain_resume_from_the_cli_needs_no_method(tmp_path, capsys):
    from vitkit.cli.main import main

    run = tmp_path / "dino"
    args = ["--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=1,heads=2", "--data", "digits",
            "--batch-size", "64", "--threads", "1", "--no-progress", "--out-dim", "32", "--head-hidden", "32",
            "--head-bottleneck", "16", "--local-crops", "1", "--out", str(run)]
    assert main(["pretrain", "--method", "dino", "--steps", "2", *args]) == 0
    assert main(["pretrain", "--resume", "--out", str(run), "--steps", "3"]) == 0
    assert max(_losses(run)) == 3
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "byol", "--steps", "1", *args])


def test_pretrain_settings_are_checked():
    for bad, match in ((dict(mask_ratio=1.0), "mask_ratio"), (dict(decoder_width=30, decoder_heads=4), "divisible"),
                       (dict(local_scale=(0.5, 0.2)), "local_scale"), (dict(teacher_temp=0), "teacher_temp"),
                       (dict(method="simclr"), "method")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(model="m", data="digits", out="o", steps=1, **bad).validate()


def test_resuming_with_another_objective_is_one_clear_refusal(tmp_path, capsys):
    from vitkit.cli.main import main

    run = tmp_path / "mae"
    args = ["--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=1,heads=2", "--data", "digits",
            "--batch-size", "64", "--threads", "1", "--no-progress", "--decoder-width", "32", "--decoder-heads", "2"]
    assert main(["pretrain", "--method", "mae", "--steps", "2", *args, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--method", "dino", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "it is a MAE pre-training" in err and "DINO pre-training" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run), "--steps", "3"]) == 2
    assert "vitkit pretrain --resume" in capsys.readouterr().err


def test_python_pretraining_config_has_the_cli_recipe(tmp_path):
    from vitkit.cli.pretrain import RECIPES

    for method in ("mae", "dino"):
        cfg = TrainConfig.pretraining(method, model="m", data="digits", out="o", steps=1, lr=2e-3)
        assert cfg.method == method and cfg.lr == 2e-3 and cfg.ema is None
        assert all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v)
                   for k, v in RECIPES[method].items() if k != "lr")
        shown = cfg.relevant()
        assert ("mask_ratio" in shown) == (method == "mae") and ("out_dim" in shown) == (method == "dino")
        assert "distill" not in shown
    with pytest.raises(ValueError, match="method"):
        TrainConfig.pretraining("byol")


def test_local_crops_larger_than_the_image_are_refused(tmp_path):
    with pytest.raises(ValueError, match="local-size 40 is larger than the images"):
        Trainer(TrainConfig(**dict(DINO, local_size=40), steps=1, out=str(tmp_path / "r")), *_small_data(),
                log=lambda m: None).setup()


def test_dino_koleo_weight_adds_the_regulariser_of_the_global_crops_and_zero_leaves_the_loss_as_it_was(
        tmp_path, monkeypatch):
    """--koleo W: the step's loss is DINO's plus W times the sum over the two global crops of koleo_loss of the
    student's features, logged per step as `koleo`; with 0 (the default) nothing is computed and the losses are
    those of a run without the setting."""
    import vitkit.ssl.dino as dino_mod

    for name, extra in (("a", {}), ("b", dict(koleo=0.0))):
        Trainer(TrainConfig(**DINO, steps=3, out=str(tmp_path / name), **extra), *_small_data(),
                log=lambda m: None).fit()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert "koleo" not in (tmp_path / "a" / "metrics.jsonl").read_text()

    parts, calls, terms = [], [], []
    real_forward, real_koleo = dino_mod.DINOLoss.forward, dino_mod.koleo_loss

    def forward_spy(self, s_out, t_out, temp):
        out = real_forward(self, s_out, t_out, temp)
        parts.append(float(out.detach()))
        return out

    def koleo_spy(x, eps=1e-8):
        calls.append(tuple(x.shape))
        out = real_koleo(x, eps)
        terms.append(float(out.detach()))
        return out

    monkeypatch.setattr(dino_mod.DINOLoss, "forward", forward_spy)
    monkeypatch.setattr(dino_mod, "koleo_loss", koleo_spy)
    Trainer(TrainConfig(**DINO, steps=3, koleo=0.5, out=str(tmp_path / "c")), *_small_data(), log=lambda m: None).fit()
    rows = [json.loads(l) for l in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert calls == [(16, 32)] * 6  # 2 global crops x 3 steps: batch 16, width 32
    sums = [terms[i] + terms[i + 1] for i in range(0, 6, 2)]
    assert [r["koleo"] for r in rows] == pytest.approx(sums, abs=1e-5)
    assert [r["loss"] for r in rows] == pytest.approx([p + 0.5 * k for p, k in zip(parts, sums)], rel=1e-5)
    with pytest.raises(ValueError, match="koleo"):
        TrainConfig(model="m", data="digits", out="o", steps=1, koleo=-0.1).validate()
