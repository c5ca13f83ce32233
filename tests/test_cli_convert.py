"""`vitkit convert`: in-process calls, return codes and messages."""

import torch

import vitkit
from vitkit.cli.main import main

from helpers import tiny_cfg
from weights_helpers import randomise, same_state


def test_convert_through_every_format_and_back(tmp_path, capsys):
    model = randomise(vitkit.create_model(tiny_cfg(labels=list("abcde")))).eval()
    vitkit.save(model, tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "m.npz")]) == 0
    assert "(vitkit) ->" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "t.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert "(timm) ->" in out and "width 32, depth 2, heads 4" in out
    back = vitkit.load(tmp_path / "back")
    assert same_state(model, back) and back.labels == list("abcde")


def test_convert_resamples_when_asked(tmp_path, capsys):
    vitkit.save(vitkit.create_model(tiny_cfg()), tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "big"), "--image-size", "48", "64"]) == 0
    assert "image 48x64" in capsys.readouterr().out
    big = vitkit.load(tmp_path / "big")
    assert big.pos_embed.shape == (1, 1 + 6 * 8, 32)
    assert big(torch.randn(1, 3, 48, 64)).shape == (1, 5)


def test_convert_errors_exit_2_without_traceback(tmp_path, capsys):
    vitkit.save(vitkit.create_model(tiny_cfg(layer_scale_init=1e-5)), tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitkit: error: the Google npz layout cannot express this model: LayerScale")
    assert not (tmp_path / "x.npz").exists()
    (tmp_path / "taken").mkdir()
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "taken")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
