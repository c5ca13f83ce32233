"""vitkit.pipeline, model.predict and `vitkit predict` on real photographs and a model trained on digits."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.data.builtin import load_digits
from vitkit.data.decode import open_image
from vitkit.inference.device import resolve_device, resolve_dtype
from vitkit.utils import atomic

from helpers import fit

LABELS = ["tabby", "astronaut", "coffee", "rocket", "teapot"]
PHOTOS = {"chelsea.jpg": skimage.data.chelsea, "astronaut.png": skimage.data.astronaut,
          "coffee.jpg": skimage.data.coffee}


def _random_head(model):
    # the default head is zero-initialised (uniform probabilities): give it weights so rankings mean something
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.5)
        model.head.bias.zero_()
    return model


def make_model(labels=LABELS, **kw):
    cfg = vitkit.ViTConfig(image_size=32, patch_size=8, width=32, depth=2, heads=4, num_classes=5, labels=labels, **kw)
    return _random_head(vitkit.create_model(cfg)).eval()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, fn in PHOTOS.items():
        Image.fromarray(fn()).save(folder / name)
    return folder


@pytest.fixture
def model_dir(tmp_path):
    m = make_model()
    m.preprocess_cfg = vitkit.PreprocessConfig(size=(32, 32), resize="shortest", crop_pct=0.875,
                                               interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                                               std=(0.229, 0.224, 0.225))
    return vitkit.save(m, tmp_path / "model")


def test_pipeline_topk_sorted_probabilities_sum_to_one(model_dir, photos):
    clf = vitkit.pipeline(model_dir, dtype="fp32")  # auto may switch to bf16 after the first call on a bf16 CPU
    assert clf.device.type in ("cpu", "cuda", "mps")
    for name in PHOTOS:
        preds = clf(photos / name)  # topk 5 = every class here
        assert [lab for lab, _ in preds] != [] and {lab for lab, _ in preds} == set(LABELS)
        probs = [p for _, p in preds]
        assert probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1) < 1e-5
        assert len(set(round(p, 6) for p in probs)) > 1  # not the uniform output of an untrained head
        top3 = clf(photos / name, topk=3)
        assert top3 == preds[:3]
    many = clf([photos / n for n in PHOTOS], topk=2)
    assert len(many) == 3 and all(len(r) == 2 for r in many)


def test_pipeline_uses_checkpoint_preprocessing(model_dir, photos):
    model = vitkit.load(model_dir)
    assert model.preprocess_cfg.resize == "shortest"
    img = open_image(photos / "chelsea.jpg")
    with torch.no_grad():
        ref = model(vitkit.preprocess(img, model.preprocess_cfg)).softmax(-1)[0]
    clf = vitkit.pipeline(model_dir, device="cpu")
    got = clf.probabilities([img])[0]
    assert torch.allclose(got, ref, atol=1e-6)
    other = vitkit.preprocess(img, vitkit.PreprocessConfig(size=(32, 32)))  # squash, mean/std 0.5
    with torch.no_grad():
        assert not torch.allclose(model(other).softmax(-1)[0], ref, atol=1e-4)  # preprocessing matters here
    # every kind of source gives the same answer
    path = photos / "chelsea.jpg"
    with open(path, "rb") as f:
        from_file = clf(f)
    assert clf(str(path)) == clf(path.read_bytes()) == clf(img) == from_file


def test_model_predict_convenience(model_dir, photos):
    model = vitkit.load(model_dir)
    model.train()
    preds = model.predict(photos / "coffee.jpg", topk=3)
    assert model.training  # the mode is restored
    # the same kernels (a pipeline that loads its own model may pick oneDNN's: float32 rounding apart)
    assert preds == vitkit.pipeline(model_dir, cpu_kernels="aten")(photos / "coffee.jpg", topk=3)
    assert len(model.predict([photos / "coffee.jpg", photos / "chelsea.jpg"])) == 2


def test_default_preprocessing_and_label_fallback(photos):
    model = make_model(labels=None)
    assert model.preprocess_cfg is None
    clf = vitkit.pipeline(model)
    cfg = clf.preprocess_cfg
    assert cfg.size == (32, 32) and cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5) and cfg.mode == "RGB"
    preds = clf(photos / "astronaut.png")
    assert {lab for lab, _ in preds} == {f"class_{i}" for i in range(5)}
    img = open_image(photos / "astronaut.png")
    x = torch.from_numpy(np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255)
    x = ((x - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = model(x).softmax(-1)[0]
    assert abs(dict(preds)[f"class_{int(ref.argmax())}"] - float(ref.max())) < 1e-5


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny ViT trained for a few seconds on scikit-learn's digits, saved with its labels,
    and 120 validation digits written as 8x8 PNG files."""
    torch.manual_seed(0)
    train, val = load_digits()
    cfg = vitkit.ViTConfig(image_size=8, patch_size=4, channels=1, width=64, depth=1, heads=4, num_classes=10,
                           labels=[f"digit {c}" for c in train.classes])
    model = fit(vitkit.create_model(cfg), train.images, train.labels, epochs=6, lr=5e-3, weight_decay=0.0,
                one_cycle=True)
    # the training images are 0..1 grey: files hold 0..255, so rescale 1/255 with mean 0, std 1
    model.preprocess_cfg = vitkit.PreprocessConfig(size=(8, 8), mode="L", mean=(0.0,), std=(1.0,))
    root = tmp_path_factory.mktemp("digits")
    vitkit.save(model, root / "model")
    files, truth = [], []
    for i in range(120):
        a = (val.images[i, 0].numpy() * 255).round().astype(np.uint8)
        f = root / "val" / f"{i:03d}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(a, mode="L").save(f)
        files.append(f)
        truth.append(int(val.labels[i]))
    with torch.no_grad():
        tensor_pred = model(val.images[:120]).argmax(-1).tolist()
    return root / "model", files, truth, tensor_pred


def test_digits_trained_model_labels_matter(digits):
    model_dir, files, truth, tensor_pred = digits
    clf = vitkit.pipeline(model_dir, batch_size=50)
    preds = clf(files, topk=3)
    top1 = [p[0][0] for p in preds]
    assert all(lab.startswith("digit ") for lab in top1)
    acc = np.mean([lab == f"digit {t}" for lab, t in zip(top1, truth)])
    assert acc > 0.8, acc  # chance is 0.1
    agree = np.mean([lab == f"digit {t}" for lab, t in zip(top1, tensor_pred)])
    assert agree >= 0.97  # files (8-bit) vs in-memory tensors: only rounding differs


def test_cli_predict_json_csv_and_text_agree_with_pipeline(model_dir, photos, tmp_path, capsys):
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    rc = main(["predict", str(model_dir), str(photos), "--topk", "3", "--batch-size", "2",
               "--json", str(out_json), "--csv", str(out_csv), "--device", "cpu", "--dtype", "fp32"])
    assert rc == 0
    text = capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"schema_version", "model", "topk", "results"} and doc["topk"] == 3
    assert [os.path.basename(r["image"]) for r in doc["results"]] == sorted(PHOTOS)  # folder order: sorted
    clf = vitkit.pipeline(model_dir, dtype="fp32")  # the reference; auto would pick bf16 on a bf16 CPU
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert list(rows[0]) == ["image", "rank", "label", "index", "probability", "error"]
    assert len(rows) == 9
    for r in doc["results"]:
        assert r["error"] is None and set(r) == {"image", "predictions", "error"}
        assert [p["rank"] for p in r["predictions"]] == [1, 2, 3]
        ref = clf(r["image"], topk=3)
        assert [p["label"] for p in r["predictions"]] == [lab for lab, _ in ref]
        assert [LABELS[p["index"]] for p in r["predictions"]] == [lab for lab, _ in ref]
        assert np.allclose([p["probability"] for p in r["predictions"]], [p for _, p in ref], atol=1e-6)
        mine = [c for c in rows if c["image"] == r["image"]]
        assert [c["label"] for c in mine] == [lab for lab, _ in ref]
        assert np.allclose([float(c["probability"]) for c in mine], [p for _, p in ref], atol=1e-5)
        assert r["image"] in text and f"1. {ref[0][0]}" in text


def test_cli_predict_json_to_stdout(model_dir, photos, capsys):
    assert main(["predict", str(model_dir), str(photos / "coffee.jpg"), "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["results"]) == 1 and len(doc["results"][0]["predictions"]) == 5


def test_cli_predict_skips_and_reports_unreadable_files(model_dir, photos, capsys, tmp_path):
    data = (photos / "chelsea.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "notes.jpg").write_text("not a photo")
    out = tmp_path / "r.json"
    rc = main(["predict", str(model_dir), str(photos), "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "truncated.jpg" in err and "notes.jpg" in err and "2 of 5 image(s) skipped" in err
    res = {os.path.basename(r["image"]): r for r in json.loads(out.read_text())["results"]}
    assert "truncated" in res["truncated.jpg"]["error"] and res["truncated.jpg"]["predictions"] == []
    assert "text file" in res["notes.jpg"]["error"]
    assert res["coffee.jpg"]["error"] is None and len(res["coffee.jpg"]["predictions"]) == 5


@pytest.mark.parametrize("argv_tail,needle", [
    (["MISSING_MODEL", "IMG"], "nope"),  # the error names the missing checkpoint
    (["MODEL", "missing.jpg"], "missing.jpg"),
    (["MODEL", "IMG", "--topk", "0"], "--topk"),
    (["MODEL", "IMG", "--device", "tpu"], "unknown device"),
    (["MODEL", "IMG", "--device", "cpu", "--dtype", "fp16"], "fp16"),
    (["MODEL", "BAD"], "could be read"),
])
def test_cli_predict_errors(model_dir, photos, tmp_path, capsys, monkeypatch, argv_tail, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing path must never become a download
    (tmp_path / "bad.jpg").write_bytes(b"")
    subs = {"MODEL": str(model_dir), "IMG": str(photos / "coffee.jpg"), "BAD": str(tmp_path / "bad.jpg"),
            "MISSING_MODEL": str(tmp_path / "nope"), "missing.jpg": str(tmp_path / "missing.jpg")}
    rc = main(["predict"] + [subs.get(a, a) for a in argv_tail])
    err = capsys.readouterr().err
    assert rc == 2 and "vitkit: error:" in err and needle in err and "Traceback" not in err


def test_exif_rotated_photo_same_prediction(model_dir, tmp_path):
    """RELIABILITY 12: a sideways-stored JPEG with EXIF orientation 6 predicts like the upright one."""
    upright = skimage.data.chelsea()
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    sideways.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    sideways.save(tmp_path / "no_exif.jpg", quality=95)
    clf = vitkit.pipeline(model_dir)
    p_up, p_rot, p_raw = clf.probabilities([open_image(tmp_path / f) for f in ("upright.jpg", "rotated.jpg",
                                                                                "no_exif.jpg")])
    assert clf(tmp_path / "rotated.jpg")[0][0] == clf(tmp_path / "upright.jpg")[0][0]
    d_rot, d_raw = (p_rot - p_up).abs().max().item(), (p_raw - p_up).abs().max().item()
    assert d_rot < 0.01 and d_raw > 3 * d_rot  # ignoring the tag would have changed the output


def test_bf16_on_cpu_and_device_errors(model_dir, photos, monkeypatch):
    fp32 = vitkit.pipeline(model_dir, device="cpu")(photos / "chelsea.jpg")
    bf16 = vitkit.pipeline(model_dir, device="cpu", dtype="bf16")(photos / "chelsea.jpg")
    assert bf16[0][0] == fp32[0][0]
    assert np.allclose([p for _, p in bf16], [p for _, p in fp32], atol=0.03)
    with pytest.raises(ValueError, match="fp16 inference needs a cuda or mps"):
        resolve_dtype("fp16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"


def test_cli_predict_subprocess(model_dir, photos):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                                       os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "vitkit", "predict", str(model_dir), str(photos / "chelsea.jpg"),
                           "--topk", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("chelsea.jpg") and lines[1].strip().startswith("1. ") and len(lines) == 3


def test_degenerate_sizes_and_modes_through_the_pipeline(model_dir, tmp_path):
    """RELIABILITY 13/16 end to end: odd sizes and modes reach the model as ordinary images."""
    files = {"1x1.png": Image.new("RGB", (1, 1), (200, 30, 30)), "strip.png": Image.new("L", (1, 10000), 90),
             "wide.png": Image.new("RGBA", (10000, 1), (0, 0, 255, 128)), "cmyk.jpg": Image.new("CMYK", (40, 20))}
    for name, im in files.items():
        im.save(tmp_path / name)
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    clf = vitkit.pipeline(model_dir)
    results = list(clf.run([tmp_path / n for n in list(files) + ["ramp16.png"]]))
    assert [r.error for r in results] == [None] * 5
    assert all(abs(sum(p for _, p in r.predictions) - 1) < 1e-5 for r in results)


def test_pipeline_call_raises_the_decoders_errors(model_dir, tmp_path):
    from vitkit.data.decode import ImageDecodeError

    clf = vitkit.pipeline(model_dir)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        clf(tmp_path / "nope.jpg")
    (tmp_path / "logo.jpg").write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    with pytest.raises(ImageDecodeError, match="logo.jpg is an SVG"):
        clf([tmp_path / "logo.jpg"])
    results = list(clf.run([tmp_path / "logo.jpg", tmp_path / "nope.jpg"]))
    assert "SVG" in results[0].error and "does not exist" in results[1].error


def test_names_that_are_not_utf8_are_escaped_in_json_csv_and_messages(model_dir, photos, tmp_path, capsys):
    """RELIABILITY item 39: a real file named b'caf\\xe9.jpg' (Latin-1, not UTF-8) and an unreadable
    b'bad\\xff.jpg': the run goes on, JSON and CSV stay valid UTF-8 with the byte written as \\xe9,
    and the error names the file."""
    folder = os.fsencode(photos)
    Image.fromarray(skimage.data.chelsea()).save(folder + b"/caf\xe9.jpg")
    with open(folder + b"/bad\xff.jpg", "wb") as f:
        f.write(b"not an image")
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    rc = main(["predict", str(model_dir), str(photos), "--json", str(out_json), "--csv", str(out_csv)])
    out, err = capsys.readouterr()
    assert rc == 1  # one image skipped
    doc = json.loads(out_json.read_bytes().decode("utf-8"))
    res = {r["image"].rsplit("/", 1)[1]: r for r in doc["results"]}
    assert set(res) == {"caf\\xe9.jpg", "bad\\xff.jpg", *PHOTOS}
    assert len(res["caf\\xe9.jpg"]["predictions"]) == 5 and res["caf\\xe9.jpg"]["error"] is None
    assert res["caf\\xe9.jpg"]["predictions"] == res["chelsea.jpg"]["predictions"]  # the same picture
    assert "bad\\xff.jpg" in res["bad\\xff.jpg"]["error"]
    rows = list(csv.DictReader(io.StringIO(out_csv.read_bytes().decode("utf-8"))))
    assert sum(r["image"].endswith("/caf\\xe9.jpg") for r in rows) == 5
    assert [r["error"] for r in rows if r["image"].endswith("/bad\\xff.jpg")][0].count("bad\\xff.jpg") >= 1
    assert "caf\\xe9.jpg" in out and "bad\\xff.jpg" in err and "Traceback" not in err


@pytest.mark.parametrize("err,where,why", [(28, "fsync", "the disk is full"),
                                            (30, "replace", "the file system is read-only")])
def test_cli_predict_output_that_cannot_be_written_keeps_the_previous_file(model_dir, photos, tmp_path, capsys,
                                                                          monkeypatch, err, where, why):
    """RELIABILITY items 22/38 for `predict --json/--csv`: ENOSPC mid-write, or a read-only file system
    at the rename -> one line, exit 2, the previous file byte for byte, no temporary file left."""
    outs = {"json": tmp_path / "p.json", "csv": tmp_path / "p.csv"}
    real_fsync, real_replace = os.fsync, os.replace  # (atomic.os is the os module: patched once for all)
    for kind, out in outs.items():
        out.write_bytes(b"previous results\n")

        def fsync(fd):
            if where == "fsync" and out.name in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(err, os.strerror(err))
            return real_fsync(fd)

        def replace(a, b):
            if where == "replace" and str(b) == str(out):
                raise OSError(err, os.strerror(err), str(b))
            return real_replace(a, b)

        monkeypatch.setattr(atomic.os, "fsync", fsync)
        monkeypatch.setattr(atomic.os, "replace", replace)
        rc = main(["predict", str(model_dir), str(photos), f"--{kind}", str(out)])
        text = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in text
        assert text.strip().splitlines()[-1] == f"vitkit: error: could not write {out}: {why}; the previous version is kept"
        assert out.read_bytes() == b"previous results\n"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_predict_read_only_output_folder_fails_before_the_work(model_dir, photos, tmp_path, capsys, monkeypatch):
    """As a normal user a chmod 0o555 folder is refused up front (tests run as root, where chmod does
    not stop writes: os.access is what the check asks)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    rc = main(["predict", str(model_dir), str(photos), "--json", str(ro / "p.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"vitkit: error: output folder '{ro}' is not writable" in err
    assert list(ro.iterdir()) == []
