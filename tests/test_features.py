"""Embeddings: `vitkit features` and extract_features against the model's own forward pass."""

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.data.decode import open_image
from vitkit.inference import ModelRunner, extract_features
from vitkit.utils import atomic

from helpers import disk_full_on

PHOTOS = {"astronaut.png": skimage.data.astronaut, "chelsea.jpg": skimage.data.chelsea,
          "coffee.jpg": skimage.data.coffee}


def make_model(**kw):
    base = dict(image_size=32, patch_size=8, width=32, depth=3, heads=4, num_classes=5)
    base.update(kw)
    model = vitkit.create_model(vitkit.ViTConfig(**base)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    return model


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, fn in PHOTOS.items():
        Image.fromarray(fn()).save(folder / name)
    return folder


def _inputs(model, folder):
    imgs = [open_image(folder / n) for n in sorted(PHOTOS)]
    return imgs, vitkit.preprocess(imgs, vitkit.inference.default_preprocess_cfg(model.cfg))


def test_pools_match_the_model(photos):
    model = make_model(reg_tokens=2)
    imgs, x = _inputs(model, photos)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (3, 1 + 2 + 16, 32)
        pooled = model.forward_head(tokens, pre_logits=True)  # what the cls head reads
    cls = extract_features(model, imgs, pool="cls")
    assert cls.shape == (3, 32) and cls.dtype == np.float32
    assert np.allclose(cls, pooled.numpy(), atol=1e-5)
    toks = extract_features(model, imgs, pool="tokens")
    assert toks.shape == (3, 19, 32) and np.allclose(toks, tokens.numpy(), atol=1e-5)
    gap = extract_features(model, imgs, pool="gap")
    assert np.allclose(gap, tokens[:, 3:].mean(1).numpy(), atol=1e-5)  # registers and [CLS] left out
    assert not np.allclose(gap, tokens.mean(1).numpy(), atol=1e-4)
    assert not np.allclose(cls[0], cls[1], atol=1e-3)  # different photos, different embeddings


def test_gap_model_features_equal_its_head_input(photos):
    model = make_model(class_token=False, pooling="gap", reg_tokens=4, pos_embed_prefix=False, num_classes=0)
    imgs, x = _inputs(model, photos)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)  # fc_norm(mean of patches)
    assert np.allclose(extract_features(model, imgs, pool="gap"), ref.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"pool='cls' needs a model with a \[CLS\] token"):
        extract_features(model, imgs, pool="cls")
    with pytest.raises(ValueError, match="pool='map' needs a model with an attention-pooling head"):
        extract_features(model, imgs, pool="map")


def test_siglip_model_map_features_equal_its_head_input(photos):
    model = make_model(class_token=False, pooling="map", reg_tokens=2, num_classes=0)
    imgs, x = _inputs(model, photos)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)  # the attention pool's output
    assert np.allclose(extract_features(model, imgs, pool="map"), ref.numpy(), atol=1e-5)


def test_intermediate_layer(photos):
    model = make_model()
    imgs, x = _inputs(model, photos)
    with torch.no_grad():
        mid = model.forward_intermediates(x, indices=[1], norm=True)[0]
    got = extract_features(ModelRunner(model, batch_size=2), imgs, pool="tokens", layer=1)
    assert np.allclose(got, mid.numpy(), atol=1e-5)
    assert np.allclose(extract_features(model, imgs, layer=-2), mid[:, 0].numpy(), atol=1e-5)
    assert not np.allclose(extract_features(model, imgs, layer=0), mid[:, 0].numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        extract_features(model, imgs, layer=3)


def test_cli_features(photos, tmp_path, capsys):
    model = make_model()
    src = vitkit.save(model, tmp_path / "m")
    (photos / "broken.jpg").write_bytes((photos / "chelsea.jpg").read_bytes()[:3000])
    out = tmp_path / "feats.npy"
    rc = main(["features", str(src), str(photos), "--out", str(out), "--pool", "gap", "--layer", "-1",
               "--batch-size", "2", "--dtype", "fp32"])  # compared below with the fp32 reference
    cap = capsys.readouterr()
    assert rc == 1 and "broken.jpg" in cap.err and "(3, 32)" in cap.out  # skipped, reported, the rest embedded
    feats = np.load(out)
    side = json.loads((tmp_path / "feats.json").read_text())
    assert feats.shape == (3, 32) and side["shape"] == [3, 32] and side["pool"] == "gap"
    assert [p.rsplit("/", 1)[-1] for p in side["images"]] == sorted(PHOTOS)
    assert side["skipped"][0]["image"].endswith("broken.jpg") and "truncated" in side["skipped"][0]["error"]
    imgs = [open_image(p) for p in side["images"]]
    assert np.allclose(feats, extract_features(vitkit.load(src), imgs, pool="gap"), atol=1e-5)


def test_cli_features_errors(photos, tmp_path, capsys):
    src = vitkit.save(make_model(), tmp_path / "m")
    assert main(["features", str(src), str(photos), "--out", str(tmp_path / "f.txt")]) == 2
    assert "ending in .npy" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["features", str(src), str(empty), "--out", str(tmp_path / "f.npy")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


def test_cli_features_full_disk_keeps_the_previous_pair(photos, tmp_path, capsys, monkeypatch):
    """RELIABILITY items 22/38 for `features --out`: ENOSPC while writing the sidecar (after the .npy
    is complete) -> one line, exit 2, and the previous .npy and .json both intact (never a new
    array beside an old list of images)."""
    src = vitkit.save(make_model(), tmp_path / "m")
    out = tmp_path / "feats.npy"
    assert main(["features", str(src), str(photos / "coffee.jpg"), "--out", str(out)]) == 0
    before = (out.read_bytes(), (tmp_path / "feats.json").read_bytes())
    capsys.readouterr()
    disk_full_on(monkeypatch, atomic, "feats.json")
    assert main(["features", str(src), str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"vitkit: error: could not write {tmp_path / 'feats.json'}: the disk is full; the previous version is kept" in err
    assert "Traceback" not in err
    assert (out.read_bytes(), (tmp_path / "feats.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.json", "feats.npy", "m", "photos"]
