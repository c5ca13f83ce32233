"""Objectives on the one training loop: classification unchanged by the tasks refactor, DeiT distillation
(its loss against its definition, the frozen teacher, exact resume), and what each task stores in a checkpoint."""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.tasks.distill import distillation_loss
from vitkit.train import ResumeError, TrainConfig, Trainer
from vitkit.train import engine
from vitkit.train.checkpoint import load_checkpoint, step_checkpoints

GOLDEN = json.loads((Path(__file__).parent / "data" / "classify_golden.json").read_text())


def _losses(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _init_of_the_golden_runs(self):
    """VisionTransformer.init_weights as it was when the golden losses were recorded (std 0.02 cut at ±2 std
    for Linear and conv alike, zero head); the init has changed since, and this test checks the loop."""
    for m in self.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    if isinstance(self.pos_embed, torch.nn.Parameter):
        torch.nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
    for tok in (self.cls_token, self.dist_token, self.reg_token):
        if tok is not None:
            torch.nn.init.normal_(tok, std=1e-6)
    for head in (self.head, getattr(self, "head_dist", None)):
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)


@pytest.mark.parametrize("name", sorted(GOLDEN["runs"]))
def test_classification_losses_are_those_of_the_engine_before_the_tasks(tmp_path, monkeypatch, name):
    """The same seed gives the losses the engine gave before it ran tasks (plain, and with mixup + cutmix,
    accumulation, RandAugment and random erasing). Bit-equal on the machine that recorded them; other CPUs'
    kernels may round differently, so the check is to 1e-4 relative (a changed loss moves it by far more).
    The model starts from the init of that time, so that what is compared is the loop."""
    monkeypatch.setattr(engine, "plot_curves", lambda *a, **kw: None)
    monkeypatch.setattr(vitkit.models.vit.VisionTransformer, "init_weights", _init_of_the_golden_runs)
    run = GOLDEN["runs"][name]
    summary = Trainer(TrainConfig(**run["cfg"], out=str(tmp_path / name)), log=lambda m: None).setup().fit()
    got = [v for _, v in sorted(_losses(tmp_path / name).items())]
    assert got == pytest.approx(run["losses"], rel=1e-4, abs=1e-6)
    assert len(got) == len(run["losses"])
    assert summary["val_top1"] == pytest.approx(run["val_top1"], abs=1 / 360 + 1e-9)


# --- DeiT distillation ---------------------------------------------------------------------------

def test_hard_distillation_is_cross_entropy_with_the_teachers_argmax():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert torch.allclose(distillation_loss(s, t, "hard"), F.cross_entropy(s, t.argmax(1)))
    assert distillation_loss(s, s * 3, "hard") < distillation_loss(s, -s, "hard")


def test_soft_distillation_follows_deits_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    for tau in (1.0, 3.0):
        ps, pt = F.softmax(s / tau, 1), F.softmax(t / tau, 1)
        want = (pt * (pt.log() - ps.log())).sum() * tau * tau / s.numel()
        assert torch.allclose(distillation_loss(s, t, "soft", tau), want, atol=1e-6)
    assert distillation_loss(t, t, "soft", 2.0).abs() < 1e-6
    with pytest.raises(ValueError, match="hard"):
        distillation_loss(s, t, "medium")


def _small_data(n_train=96, n_val=32, labels=None):
    from vitkit.data.datasets import TensorImageDataset

    labels = labels or [str(i) for i in range(10)]
    g = torch.Generator().manual_seed(7)
    make = lambda n, name: TensorImageDataset(torch.rand(n, 1, 16, 16, generator=g), [i % len(labels) for i in range(n)],
                                              labels, (16, 16), 1, name)
    return make(n_train, "small/train"), make(n_val, "small/val")


def _teacher(tmp_path, labels=None, seed=3, name="teacher"):
    labels = labels or [str(i) for i in range(10)]
    torch.manual_seed(seed)
    t = vitkit.create_model("vit_tiny_patch4_32", width=32, depth=1, heads=2, channels=3, num_classes=len(labels),
                            labels=labels)  # another size and channel count than the 16 px grey students
    path = tmp_path / name
    vitkit.save(t, path)
    return path, t


STUDENT = dict(model="vit_tiny_patch4_16", model_overrides=dict(width=32, depth=2, heads=2, distilled=True), data="digits",
               progress=False, workers=0, batch_size=16, threads=1, log_every=1, randaugment=None)


def test_distillation_loss_of_a_step_is_its_definition_and_the_teacher_stays_frozen(tmp_path):
    teacher_dir, _ = _teacher(tmp_path)
    for kind, alpha in (("hard", 0.5), ("soft", 0.3)):
        cfg = TrainConfig(**STUDENT, steps=2, distill=kind, teacher=str(teacher_dir), distill_alpha=alpha,
                          distill_tau=2.0, label_smoothing=0.0, drop_path=0.0, out=str(tmp_path / kind))
        tr = Trainer(cfg, *_small_data(), log=lambda m: None).setup()
        task = tr.task
        assert task.name == "distill" and task.distilled
        assert not any(p.requires_grad for p in task.teacher.parameters())
        x = torch.rand(8, 1, 16, 16) * 2 - 1  # normalised like the student's input (mean = std = 0.5)
        y = torch.arange(8)
        got = task.loss(tr, tr.model, x, y, torch.Generator().manual_seed(0))
        cls, dist = tr.raw.forward_distilled(x)
        # the teacher sees the image in its own terms: 32 px, three channels, its normalisation
        x01 = (x * 0.5 + 0.5).expand(-1, 3, -1, -1)
        t_in = F.interpolate(x01, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
        t = task.teacher((t_in - 0.5) / 0.5)
        want = (1 - alpha) * F.cross_entropy(cls, y) + alpha * distillation_loss(dist, t, kind, 2.0)
        assert torch.allclose(got, want, atol=1e-5)
        before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
        tr.fit()
        assert all(torch.equal(before[k], v) for k, v in task.teacher.state_dict().items())
        assert all(p.grad is None for p in task.teacher.parameters())
        m = vitkit.load(tmp_path / kind)  # the student, as trained (distillation head and all)
        assert m.cfg.distilled and m.cfg.num_classes == 10


class _Stop(Exception):
    pass


def resume_matches_uninterrupted(tmp_path, cfg: dict, data, stop_at: int, ckpt_every: int):
    """Run ``cfg`` whole; run it again stopped (by an exception) after ``stop_at`` steps, resume it from its
    last checkpoint; the two must log the same loss at every step and end with the same weights and task state."""
    engine_plot = engine.plot_curves
    engine.plot_curves = lambda *a, **kw: None
    try:
        full = tmp_path / "full"
        full_log, resumed_log = [], []
        Trainer(TrainConfig(**cfg, save_every_steps=ckpt_every, out=str(full)), *data(), log=full_log.append).fit()

        def stop(event, trainer, **info):
            if event == "step" and info["step"] == stop_at:
                raise _Stop

        run = tmp_path / "run"
        with pytest.raises(_Stop):
            Trainer(TrainConfig(**cfg, save_every_steps=ckpt_every, out=str(run)), *data(), hooks=[stop],
                    log=lambda m: None).fit()
        Trainer(TrainConfig(**cfg, save_every_steps=ckpt_every, out=str(run), resume="auto"), *data(),
                log=resumed_log.append).fit()
    finally:
        engine.plot_curves = engine_plot
    assert _losses(run) == _losses(full)
    # the epoch lines after the resume, the resumed epoch's train loss included, are the uninterrupted run's
    epochs = lambda log: [re.sub(r" \(\d+ s\)$", "", m) for m in log if re.match(r"epoch \d+/\d+: ", m)]
    assert epochs(resumed_log) and epochs(resumed_log) == epochs(full_log)[-len(epochs(resumed_log)):]
    a, b = (load_checkpoint(step_checkpoints(r)[-1][1]) for r in (full, run))
    assert a["progress"] == b["progress"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    return a, b


def test_distillation_resumes_exactly(tmp_path):
    teacher_dir, _ = _teacher(tmp_path)
    cfg = dict(STUDENT, steps=9, distill="soft", teacher=str(teacher_dir), mixup=0.8, cutmix=1.0)
    a, b = resume_matches_uninterrupted(tmp_path, cfg, _small_data, stop_at=7, ckpt_every=3)
    assert a["task"]["name"] == "distill" and a["task"]["state"] == b["task"]["state"]


def test_a_student_without_the_distillation_token_distils_through_its_head(tmp_path):
    teacher_dir, _ = _teacher(tmp_path)
    cfg = TrainConfig(**dict(STUDENT, model_overrides=dict(width=32, depth=2, heads=2)), steps=1, distill="hard",
                      teacher=str(teacher_dir), distill_alpha=1.0, drop_path=0.0, out=str(tmp_path / "r"))
    tr = Trainer(cfg, *_small_data(), log=lambda m: None).setup()
    x, y = torch.rand(4, 1, 16, 16), torch.arange(4)
    got = tr.task.loss(tr, tr.model, x, y, torch.Generator().manual_seed(0))
    want = F.cross_entropy(tr.raw(x), tr.task.teacher_logits(tr, x).argmax(1))
    assert torch.allclose(got, want, atol=1e-6)


def test_the_teacher_must_predict_the_datas_classes(tmp_path):
    labels = [str(i) for i in range(10)]
    shuffled, _ = _teacher(tmp_path, labels=labels[::-1], name="reversed")
    tr = Trainer(TrainConfig(**STUDENT, steps=1, distill="hard", teacher=str(shuffled), out=str(tmp_path / "a")),
                 *_small_data(), log=lambda m: None).setup()
    x = torch.rand(4, 1, 16, 16)
    raw_t = tr.task.teacher(tr.task.teacher_input(x))
    assert torch.allclose(tr.task.teacher_logits(tr, x), raw_t.flip(1))  # re-ordered into the data's order
    other, _ = _teacher(tmp_path, labels=[f"c{i}" for i in range(10)], name="other")
    with pytest.raises(ValueError, match="other classes"):
        Trainer(TrainConfig(**STUDENT, steps=1, distill="hard", teacher=str(other), out=str(tmp_path / "b")),
                *_small_data(), log=lambda m: None).setup()
    few, _ = _teacher(tmp_path, labels=["a", "b"], name="few")
    with pytest.raises(ValueError, match="2 classes"):
        Trainer(TrainConfig(**STUDENT, steps=1, distill="hard", teacher=str(few), out=str(tmp_path / "c")),
                *_small_data(), log=lambda m: None).setup()


def test_resuming_with_another_teacher_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "plot_curves", lambda *a, **kw: None)
    teacher_dir, _ = _teacher(tmp_path)
    cfg = dict(STUDENT, steps=2, distill="hard", teacher=str(teacher_dir), out=str(tmp_path / "run"))
    Trainer(TrainConfig(**cfg), *_small_data(), log=lambda m: None).fit()
    _teacher(tmp_path, seed=99)  # the same path now holds other weights
    with pytest.raises(ResumeError, match="teacher"):
        Trainer(TrainConfig(**dict(cfg, steps=4), resume="auto"), *_small_data(), log=lambda m: None).setup()


@pytest.mark.parametrize("bad, match", [(dict(distill="hard"), "--teacher"), (dict(teacher="x"), "without --distill"),
                                        (dict(distill="warm", teacher="x"), "hard or soft"),
                                        (dict(distill="soft", teacher="x", distill_alpha=1.5), "distill_alpha"),
                                        (dict(distill="soft", teacher="x", distill_tau=0.0), "distill_tau")])
def test_distillation_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(model="m", data="digits", out="o", steps=1, **bad).validate()


def test_train_cli_distils(tmp_path, capsys):
    from vitkit.cli.main import main

    teacher_dir, _ = _teacher(tmp_path)
    rc = main(["train", "--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=1,heads=2,distilled=true",
               "--data", "digits", "--steps", "3", "--batch-size", "32", "--threads", "1", "--no-progress",
               "--distill", "soft", "--teacher", str(teacher_dir), "--out", str(tmp_path / "run")])
    assert rc == 0
    err = capsys.readouterr()
    assert "distillation: soft" in err.out + err.err
    assert vitkit.load(tmp_path / "run").cfg.distilled


def test_a_torchvision_cnn_teaches(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    spec = f"torchvision:resnet18={tmp_path / 'r18.pth'}"
    cfg = TrainConfig(**STUDENT, steps=1, distill="hard", teacher=spec, out=str(tmp_path / "r"))
    tr = Trainer(cfg, *_small_data(), log=lambda m: None).setup()
    t = tr.task.teacher
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    # the CNN gets three channels at the student's size, normalised with ImageNet's mean and std
    x01 = (x * 0.5 + 0.5).expand(-1, 3, -1, -1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
    net.eval()
    assert torch.allclose(tr.task.teacher_logits(tr, x), net((x01 - mean) / std), atol=1e-5)
    tr.fit()
    for bad, match in (("torchvision:resnet18", "ARCH=WEIGHTS"), (f"torchvision:nonet={tmp_path / 'r18.pth'}", "no model"),
                       (f"torchvision:resnet34={tmp_path / 'r18.pth'}", "not a resnet34"),
                       (f"torchvision:resnet18={tmp_path / 'none.pth'}", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            Trainer(TrainConfig(**STUDENT, steps=1, distill="hard", teacher=bad, out=str(tmp_path / "x")),
                    *_small_data(), log=lambda m: None).setup()
