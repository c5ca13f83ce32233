"""dtype="auto": the candidate per hardware, the first-batch check against fp32 (classifier and embeddings), the
fallback when it disagrees, the service's warm-up not deciding, int8 tried first with calibration images, and
the one line the CLI prints."""

import logging

import pytest
import torch

import vitkit
from helpers import digits_vit
from vitkit.cli.main import main
from vitkit.inference import precision
from vitkit.inference.features import extract_features
from vitkit.inference.pipeline import ModelRunner
from vitkit.inference.precision import AutoPrecision, bf16_hardware


@pytest.fixture(scope="module")
def trained():
    """A small ViT fitted for a few seconds on the 8x8 digits (its top-1 is not a tie: bf16 agrees with fp32),
    and 64 validation images as PIL images."""
    from PIL import Image

    model, (_, val) = digits_vit(epochs=6)
    images = [Image.fromarray((val.images[i, 0].numpy() * 255).round().astype("uint8"), mode="L") for i in range(64)]
    return model, images


@pytest.fixture
def amx(monkeypatch):
    """Pretend this CPU multiplies bf16 natively (the check and the choice are what is tested, not the speed)."""
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "AMX" if device.type == "cpu" else None)


def test_the_candidate_follows_the_cpu_features(monkeypatch):
    cpu = torch.device("cpu")
    for amx_, avx512, want in ((True, True, "AMX"), (False, True, "AVX512-BF16"), (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx_: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        assert bf16_hardware(cpu) == want
    assert bf16_hardware(torch.device("meta")) is None


def test_without_bf16_hardware_auto_is_fp32_at_once(trained, monkeypatch, caplog):
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: None)
    with caplog.at_level(logging.INFO, logger="vitkit"):
        r = ModelRunner(trained[0], device="cpu", dtype="auto")
    assert r.dtype == torch.float32 and not r.auto.pending
    assert r.precision == "fp32 (auto: this CPU has neither AMX nor AVX512-BF16)"
    assert caplog.messages == ["precision: " + r.precision]


def test_the_first_batch_checks_bf16_and_answers_in_fp32(trained, amx, caplog):
    model, images = trained
    r = ModelRunner(model, device="cpu", dtype="auto", batch_size=16)
    assert r.auto.pending and r.dtype == torch.float32 and "to be checked" in r.precision
    x = next(r.batches(images))
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="vitkit"):
        first = r.forward(x)
        assert torch.equal(first, model(x))  # the checked batch's answer is fp32's
        assert r.dtype == torch.bfloat16 and r.precision == \
            "bf16 (auto: AMX; agreed with fp32 on 16 of the first 16 image(s))"
        second = r.forward(x)
        with torch.autocast("cpu", torch.bfloat16):
            assert torch.equal(second, model(x))  # later batches run in what was decided
    assert caplog.messages == ["precision: " + r.precision]


def test_a_disagreeing_first_batch_keeps_fp32(trained, amx):
    model, images = trained
    r = ModelRunner(model, device="cpu", dtype="auto", batch_size=16)
    x = next(r.batches(images))
    with torch.no_grad():
        r.run_model(model, x, lambda ref, low: len(ref) - 1)  # one image of 16 disagrees
        assert r.dtype == torch.float32
        assert "agreed with fp32 on only 15 of the first 16 image(s), below 99.5 %" in r.precision
        assert torch.equal(r.forward(x), model(x))  # and stays fp32
    auto = AutoPrecision(torch.bfloat16, "AMX", 0.9)
    assert auto.decide(9, 10) == torch.bfloat16  # the threshold is min_agreement
    assert AutoPrecision(torch.bfloat16, "AMX", 0.9).decide(8, 10) == torch.float32


def test_embeddings_are_checked_by_cosine(trained, amx):
    model, images = trained
    r = ModelRunner(model, device="cpu", dtype="auto", batch_size=32)
    feats = extract_features(r, images, pool="cls")
    assert feats.shape == (64, 48) and r.dtype == torch.bfloat16
    assert "agreed with fp32 on 32 of the first 32" in r.precision
    fp32 = extract_features(ModelRunner(model, device="cpu"), images[:32], pool="cls")
    assert (feats[:32] == fp32).all()  # the first batch is fp32's
    a, b = torch.ones(3, 4), torch.ones(3, 4)
    b[0] = -1
    assert precision.cosine_agreed(a, b) == 2


def test_the_service_warm_up_does_not_decide(trained, amx):
    from vitkit.serve.handler import BatchingHandler

    model, images = trained
    h = BatchingHandler(model, max_batch=4)  # dtype="auto" is the service's default
    h.warmup()  # blank images: not the check
    assert h.runner.auto.pending and h.describe()["dtype"] == "auto"
    r = ModelRunner(model, device="cpu")
    probs = h.forward(next(r.batches(images[:4])))
    assert probs.shape == (4, 10) and h.describe()["dtype"] == "bfloat16"
    assert h.describe()["precision"].startswith("bf16 (auto: AMX; agreed with fp32 on 4 of the first 4")


def test_pipeline_defaults_to_auto_and_fp32_forces_full_precision(trained, amx):
    model, images = trained
    assert vitkit.pipeline(model, device="cpu").auto.pending
    clf = vitkit.pipeline(model, device="cpu", dtype="fp32")
    assert clf.auto is None and clf.precision == "fp32"
    clf(images[:2])
    assert clf.dtype == torch.float32


def test_auto_with_calibration_images_tries_int8_first_and_falls_back(trained, amx, monkeypatch, caplog):
    from vitkit.data.preprocess import preprocess
    from vitkit.export import int8 as int8_mod

    model, images = trained
    x = preprocess(images, model.preprocess_cfg)
    with caplog.at_level(logging.INFO, logger="vitkit"):
        r = ModelRunner(model, device="cpu", dtype="auto", int8_images=(x[:32], x[32:]), min_agreement=0.9)
    assert r.int8 is not None and r.auto is None and r.precision.startswith("int8 (ONNX Runtime")
    assert caplog.messages == ["precision: " + r.precision]
    monkeypatch.setattr(int8_mod, "top1_agreement", lambda *a, **kw: (1, 32))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitkit"):
        r = ModelRunner(model, device="cpu", dtype="auto", int8_images=(x[:32], x[32:]))
    assert r.int8 is None and r.auto.pending  # int8 refused: bf16 is checked next
    assert caplog.messages[0].startswith("int8 not used: int8 (ONNX Runtime") and "1 of 32" in caplog.messages[0]
    with pytest.raises(int8_mod.Int8AgreementError):  # asked for by name, int8 is not replaced
        ModelRunner(model, device="cpu", dtype="int8", int8_images=(x[:32], x[32:]))


def test_cli_says_which_precision_in_one_line(trained, tmp_path, capsys, monkeypatch):
    model, images = trained
    vitkit.save(model, tmp_path / "m")
    for i, im in enumerate(images[:3]):
        im.save(tmp_path / f"{i}.png")
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: None)
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "0.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("vitkit: precision: fp32 (auto: this CPU has neither AMX nor AVX512-BF16)") == 1
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "0.png"), "--dtype", "fp32"]) == 0
    assert "precision" not in capsys.readouterr().err  # asked for by name: nothing to say
    monkeypatch.setattr(precision, "bf16_hardware", lambda device: "AVX512-BF16")
    assert main(["features", str(tmp_path / "m"), str(tmp_path), "--out", str(tmp_path / "f.npy")]) == 0
    assert "vitkit: precision: bf16 (auto: AVX512-BF16; agreed with fp32 on 3 of the first 3 image(s))" in \
        capsys.readouterr().err
