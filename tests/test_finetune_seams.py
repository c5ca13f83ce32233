"""Seams between a finished or pre-trained run and the next command: fine-tuning a checkpoint with another
pooling (MAE's mean-pooled fine-tune), resuming a run that is already complete, settings of the other
pre-training method."""

import json

import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.config import ViTConfig
from vitkit.models.vit import VisionTransformer
from vitkit.train.model_setup import build_model

from test_train_cli import _folder as _class_folder

TINY = ["--model", "vit_tiny_patch4_16", "--model-set", "width=32,depth=2,heads=4", "--no-progress",
        "--threads", "1", "--workers", "0"]


def _saved_cls_model(path, pooling="cls"):
    torch.manual_seed(0)
    m = VisionTransformer(ViTConfig(image_size=16, patch_size=4, width=32, depth=2, heads=4, num_classes=3,
                                    pooling=pooling))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    vitkit.save(m, path)
    return m


def _folder(root, n=4):
    _class_folder(root, n)  # dark / light 10x10 images, train/ and val/
    return root


def test_fine_tune_with_mean_pooling_keeps_every_trained_weight(tmp_path):
    src = _saved_cls_model(tmp_path / "cls")
    m, notes = build_model(str(tmp_path / "cls"), ["a", "b"], 3, architecture_overrides={"pooling": "gap"})
    assert m.cfg.pooling == "gap" and m.cfg.use_fc_norm
    assert any("the mean of the patch tokens" in n and "from norm to fc_norm" in n for n in notes)
    ref = src.state_dict()
    got = m.state_dict()
    # the encoder is unchanged, the final norm's weights moved after the pooling, the new head starts at zero
    for k, v in ref.items():
        if k.startswith("norm."):
            assert torch.equal(got["fc_norm." + k[5:]], v)
        elif not k.startswith("head."):
            assert torch.equal(got[k], v), k
    assert not any(k.startswith("norm.") for k in got)
    assert torch.count_nonzero(got["head.weight"]) == 0
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        raw = m.forward_features(x)  # gap: no norm before pooling, so these are the blocks' outputs
        normed = src.forward_features(x)  # cls: the same tokens after the checkpoint's final norm
        feats = m.forward_head(raw, pre_logits=True)
    assert torch.allclose(src.norm(raw), normed, atol=1e-6)  # the encoder is the checkpoint's
    assert torch.allclose(feats, src.norm(raw[:, 1:].mean(1)), atol=1e-6)  # its norm, on the patch mean


def test_mean_pooled_fine_tune_back_to_cls_moves_the_norm_back(tmp_path):
    _saved_cls_model(tmp_path / "gap", pooling="gap")
    m, notes = build_model(str(tmp_path / "gap"), ["a", "b", "c"], 3, architecture_overrides={"pooling": "cls"})
    src = vitkit.load(tmp_path / "gap")
    assert m.cfg.pooling == "cls" and not m.cfg.use_fc_norm
    assert torch.equal(m.state_dict()["norm.weight"], src.state_dict()["fc_norm.weight"])
    assert any("from fc_norm to norm" in n for n in notes)


def test_fine_tune_may_change_only_the_head_side(tmp_path):
    _saved_cls_model(tmp_path / "cls")
    with pytest.raises(ValueError, match=r"--model-set width: a checkpoint's architecture is its own; only "
                                         r"fc_norm, pooling"):
        build_model(str(tmp_path / "cls"), ["a", "b"], 3, architecture_overrides={"width": 64, "pooling": "gap"})
    with pytest.raises(ValueError, match="attention-pooling head that the checkpoint does not have"):
        build_model(str(tmp_path / "cls"), ["a", "b"], 3, architecture_overrides={"pooling": "map"})
    # the same pooling as the checkpoint's changes nothing; the checkpoint's own width is no change either
    m, notes = build_model(str(tmp_path / "cls"), ["a", "b"], 3, architecture_overrides={"pooling": "cls",
                                                                                        "width": 32})
    assert m.cfg.pooling == "cls" and not any("pooling:" in n for n in notes)
    # fc_norm alone: the norm moves, the pooling is said to stay
    m, notes = build_model(str(tmp_path / "cls"), ["a", "b"], 3, architecture_overrides={"fc_norm": True})
    assert m.cfg.pooling == "cls" and m.cfg.use_fc_norm
    assert "the final norm moved from norm to fc_norm" in notes and not any("pooling:" in n for n in notes)
    assert "head replaced: 3 -> 2 classes (a, b)" in notes


def test_train_init_with_model_set_pooling_gap_through_the_cli(tmp_path, capsys):
    _saved_cls_model(tmp_path / "cls")
    data = _folder(tmp_path / "d")
    for flag in ("--init", "--model"):
        out = tmp_path / f"r{flag}"
        assert main(["train", flag, str(tmp_path / "cls"), "--model-set", "pooling=gap", "--data", str(data),
                     "--steps", "1", "--batch-size", "4", "--out", str(out), "--no-progress", "--threads", "1",
                     "--workers", "0"]) == 0
        assert "pooling: the [CLS] token -> the mean of the patch tokens" in capsys.readouterr().out
        assert vitkit.load(out / "model").cfg.pooling == "gap"
    rc = main(["train", "--init", str(tmp_path / "cls"), "--model-set", "depth=4", "--data", str(data),
               "--steps", "1", "--out", str(tmp_path / "bad"), "--no-progress"])
    assert rc == 2 and "--model-set depth: a checkpoint's architecture is its own" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model").exists()


def test_resume_of_a_complete_run_keeps_its_summary_and_model(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--data", "digits", "--steps", "3", "--ema", "0.5", "--out", str(run)]) == 0
    before = json.loads((run / "summary.json").read_text())
    weights = {k: v.clone() for k, v in vitkit.load(run / "model").state_dict().items()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert "the run was already complete (3 steps)" in capsys.readouterr().out
    after = json.loads((run / "summary.json").read_text())
    assert after == before  # val numbers, chosen weights and the run's seconds all kept
    again = vitkit.load(run / "model").state_dict()
    assert all(torch.equal(again[k], v) for k, v in weights.items())


@pytest.mark.parametrize("method,flag,value", [("mae", "--koleo", "0.1"), ("mae", "--local-crops", "2"),
                                               ("dino", "--mask-ratio", "0.5"), ("dino", "--norm-pix-loss", None)])
def test_pretrain_refuses_the_other_methods_settings(tmp_path, capsys, method, flag, value):
    args = ["pretrain", "--method", method, *TINY, "--data", "digits", "--steps", "1",
            "--out", str(tmp_path / "r"), flag] + ([value] if value else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{flag}: " in err and f"--method {method} does not use" in err
    assert not (tmp_path / "r").exists()


def test_pretrain_refuses_the_other_methods_settings_in_a_config_file(tmp_path, capsys):
    (tmp_path / "k.yaml").write_text("koleo: 0.1\nlr: 1.0e-3\n")
    assert main(["pretrain", "--method", "mae", "--config", str(tmp_path / "k.yaml"), *TINY, "--data", "digits",
                 "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert f"koleo (in {tmp_path / 'k.yaml'}): DINO setting(s), which --method mae does not use" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_batch_larger_than_the_data_says_which_setting_to_change(tmp_path, capsys):
    data = _folder(tmp_path / "d", n=3)  # 6 training images, the default batch is 64
    assert main(["pretrain", "--method", "mae", *TINY, "--data", str(data), "--epochs", "1",
                 "--out", str(tmp_path / "r")]) == 2
    assert "batch size 64 is larger than the training set (6 images); give a smaller --batch-size" in \
        capsys.readouterr().err
