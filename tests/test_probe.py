"""Evaluation on frozen features (vitkit.ssl.probe), pre-training data (vitkit.data.unlabelled) and
`vitkit eval --knn / --linear-probe`."""

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import make_blobs, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import vitkit
from vitkit.cli.main import main
from vitkit.data.datasets import DataSpec, FileImageDataset, collate_skipping
from vitkit.data.unlabelled import UnlabelledImageDataset, load_pretrain_source
from vitkit.ssl.probe import extract_features, knn_accuracy, knn_classify, linear_probe
from vitkit.train.augment import EvalTransform

from helpers import tiny_cfg

SPEC = DataSpec(image_size=(16, 16), channels=3)


def _pngs(folder, n, base=120, seed=0, size=10):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"{i}.png")


def _class_folder(root, n=8):
    _pngs(root / "dark", n, base=50, seed=1)
    _pngs(root / "light", n, base=200, seed=2)


# --- k-NN ---------------------------------------------------------------------------------------

def test_knn_matches_a_hand_computation():
    # unit directions, stored at other lengths (k-NN normalises them): cosine similarities to q = (0.28, 0.96)
    # are c 0.96 (class 1), b 0.80 (class 0), a 0.28 (class 0), d -0.28 (class 1)
    train = torch.tensor([[3.0, 0.0], [1.6, 1.2], [0.0, 0.5], [-2.0, 0.0]])  # a, b, c, d
    labels = torch.tensor([0, 0, 1, 1])
    q = torch.tensor([[0.28, 0.96], [2.8, 9.6]])  # the same direction twice, at two lengths
    for t in (0.07, 0.5):
        wc, wb, wa = math.exp(0.96 / t), math.exp(0.80 / t), math.exp(0.28 / t)  # the 3 nearest; d is not one
        want = torch.tensor([(wb + wa) / (wa + wb + wc), wc / (wa + wb + wc)])
        pred, scores = knn_classify(train, labels, q, 2, k=3, temperature=t, batch=1)
        torch.testing.assert_close(scores, want.expand(2, 2), rtol=1e-5, atol=1e-6)
        assert pred.tolist() == [int(want.argmax())] * 2
    # a sharp vote follows the one close neighbour (class 1), a flat one the majority of the 3 (class 0)
    assert knn_classify(train, labels, q, 2, k=3, temperature=0.07)[0].tolist() == [1, 1]
    assert knn_classify(train, labels, q, 2, k=3, temperature=1e6)[0].tolist() == [0, 0]
    # k = 1: the nearest alone
    assert knn_classify(train, labels, torch.tensor([[-1.0, 0.1]]), 2, k=1)[0].tolist() == [1]
    r = knn_accuracy(train, labels, q, torch.tensor([1, 0]), 2, k=3, temperature=0.07)
    assert r == {"top1": 0.5, "top5": 1.0, "n": 2, "k": 3, "temperature": 0.07}


def test_knn_at_a_high_temperature_is_sklearns_majority_vote():
    x, y = make_blobs(n_samples=500, centers=4, n_features=8, cluster_std=4.0, random_state=0)
    xtr, ytr, xte, yte = x[:400], y[:400], x[400:], y[400:]
    k = 7
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xtr, ytr)
    proba = ref.predict_proba(xte)  # vote shares of the k neighbours
    top = np.sort(proba, axis=1)
    unique = top[:, -1] > top[:, -2]  # no tie between the two most-voted classes
    assert unique.mean() > 0.8
    pred, scores = knn_classify(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), 4, k=k, temperature=1e6,
                                batch=32)
    assert (pred.numpy()[unique] == ref.predict(xte)[unique]).all()
    np.testing.assert_allclose(scores.numpy(), proba, atol=1e-4)  # near-equal weights: the vote shares
    acc = knn_accuracy(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), k=k,
                       temperature=1e6)
    assert abs(acc["top1"] - ref.score(xte, yte)) <= 0.03 and acc["n"] == 100 and 0 < acc["top1"] < 1


def test_knn_refuses_bad_input():
    f, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="k must be in"):
        knn_classify(f, y, f, 2, k=6)
    with pytest.raises(ValueError, match="unlabelled"):
        knn_classify(f, torch.tensor([0, -1, 0, 1, 0]), f, 2, k=3)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(f, y, f, 2, k=3, temperature=0)
    with pytest.raises(ValueError, match="dimensions"):
        knn_classify(f, y, torch.randn(2, 4), 2, k=3)
    with pytest.raises(ValueError, match="NaN"):
        knn_accuracy(f, y, torch.full((2, 3), float("nan")), torch.tensor([0, 1]), k=3)


# --- linear probe -------------------------------------------------------------------------------

def test_linear_probe_separates_separable_features():
    x, y = make_blobs(n_samples=600, centers=5, n_features=16, cluster_std=1.0, center_box=(-20, 20), random_state=1)
    x = torch.tensor(x, dtype=torch.float32) * 50 + 7  # scale and offset: standardised away
    r = linear_probe(x[:400], torch.tensor(y[:400]), x[400:], torch.tensor(y[400:]), 5)
    assert r["top1"] >= 0.99 and r["top5"] == 1.0 and r["n"] == 200 and r["n_train"] == 400
    assert r["weight_decay"] in [g["weight_decay"] for g in r["grid"]] and len(r["grid"]) == 7


def test_linear_probe_matches_sklearn_logistic_regression_and_is_deterministic():
    x, y = make_classification(n_samples=900, n_features=20, n_informative=6, n_redundant=4, n_classes=4,
                               n_clusters_per_class=2, class_sep=1.2, flip_y=0.05, random_state=3)
    xtr, ytr, xte, yte = x[:600], y[:600], x[600:], y[600:]
    ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xtr, ytr).score(xte, yte)
    args = (torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr), torch.tensor(xte, dtype=torch.float32),
            torch.tensor(yte))
    r = linear_probe(*args)
    assert 0.4 < ref < 0.9 and abs(r["top1"] - ref) <= 0.04, (r["top1"], ref)
    assert linear_probe(*args) == r  # the same numbers again
    # one given weight decay: nothing held out; at sklearn's C = 1, i.e. wd = 1 / N, the objective is sklearn's
    one = linear_probe(*args, weight_decays=[1 / 600])
    assert one["selected_by"] == "given" and one["grid"] == [] and abs(one["top1"] - ref) <= 1 / 300 + 1e-9
    with pytest.raises(ValueError, match="labels"):
        linear_probe(*args[:3], torch.full((300,), 7), num_classes=4)


# --- features -----------------------------------------------------------------------------------

def test_extract_features_is_forward_head_pre_logits_and_skips_a_corrupt_image(tmp_path):
    torch.manual_seed(0)
    model = vitkit.create_model(tiny_cfg(image_size=16, patch_size=4, representation_size=24))
    model.train()  # extract_features uses eval mode and gives the mode back
    _pngs(tmp_path, 5)
    (tmp_path / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    paths = [str(tmp_path / f"{i}.png") for i in range(6)]
    ds = FileImageDataset(paths, [0, 1, 2, 3, 4, 0], [str(i) for i in range(5)], (16, 16), 3, "t")
    norm = EvalTransform((0.5,) * 3, (0.5,) * 3)
    skipped = []
    f, y = extract_features(model, ds, norm, batch_size=4, skipped=skipped)
    assert model.training
    assert f.shape == (5, 24) and f.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3, 4]
    assert len(skipped) == 1 and skipped[0].path == paths[5]
    model.eval()
    with torch.no_grad():
        x = torch.stack([norm(ds[i][0]) for i in range(5)])
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(f, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(f[:, :5], model(x))  # not the logits


# --- pre-training data --------------------------------------------------------------------------

def test_pretrain_source_plain_folder_is_unlabelled_and_skips_a_corrupt_file(tmp_path):
    _pngs(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image at all")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    train, val, labelled = load_pretrain_source(str(tmp_path / "imgs"), SPEC)
    assert labelled is False and val is None and isinstance(train, UnlabelledImageDataset)
    assert len(train) == 6 and train.classes == [] and set(train.targets) == {-1} and "unlabelled" in train.describe()
    x, y, skipped = collate_skipping([train[i] for i in range(len(train))])
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [-1] * 5
    assert len(skipped) == 1 and skipped[0].path.endswith("bad.png")
    # a validation part only when given: a plain folder (unlabelled) or a labelled source
    _pngs(tmp_path / "more", 3)
    _, v, _ = load_pretrain_source(str(tmp_path / "imgs"), SPEC, str(tmp_path / "more"))
    assert len(v) == 3 and v.classes == []
    _class_folder(tmp_path / "cls", n=3)
    _, v, labelled = load_pretrain_source(str(tmp_path / "imgs"), SPEC, str(tmp_path / "cls"))
    assert labelled is False and v.classes == ["dark", "light"] and len(v) == 6


def test_pretrain_source_labelled_sources(tmp_path):
    _class_folder(tmp_path / "cls", n=5)
    train, val, labelled = load_pretrain_source(str(tmp_path / "cls"), SPEC)
    assert labelled and train.classes == ["dark", "light"] and len(train) + len(val) == 10 and len(val) == 2
    train, val, labelled = load_pretrain_source("digits", DataSpec(image_size=(8, 8), channels=1))
    assert labelled and (len(train), len(val)) == (1437, 360) and len(train.classes) == 10
    csv = tmp_path / "d.csv"
    csv.write_text("path,label\n" + "".join(f"cls/{c}/{i}.png,{c}\n" for c in ("dark", "light") for i in range(5)))
    train, val, labelled = load_pretrain_source(str(csv), SPEC)
    assert labelled and len(train) == 8 and len(val) == 2


def test_pretrain_source_refuses_empty_and_ambiguous_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        load_pretrain_source(str(tmp_path / "empty"), SPEC)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    (tmp_path / "text" / "sub").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_pretrain_source(str(tmp_path / "text"), SPEC)
    _pngs(tmp_path / "mixed", 2)
    _pngs(tmp_path / "mixed" / "sub", 2)
    with pytest.raises(ValueError, match="top level and sub-folder"):
        load_pretrain_source(str(tmp_path / "mixed"), SPEC)
    with pytest.raises(FileNotFoundError):
        load_pretrain_source(str(tmp_path / "missing"), SPEC)


# --- vitkit eval --knn / --linear-probe ---------------------------------------------------------

def _line(out, prefix):
    m = re.search(re.escape(prefix) + r".*?top-1 ([\d.]+) %\s+top-5 ([\d.]+) %", out)
    assert m, out
    return float(m.group(1)) / 100, float(m.group(2)) / 100


def test_eval_cli_knn_and_linear_probe(tmp_path, capsys):
    _class_folder(tmp_path / "data", n=8)  # no val/: the stratified 20 % is the test set
    torch.manual_seed(0)
    vitkit.save(vitkit.create_model(tiny_cfg(image_size=16, patch_size=4, num_classes=2, depth=1)), tmp_path / "m")
    out_dir = tmp_path / "ev"
    rc = main(["eval", str(tmp_path / "m"), "--data", str(tmp_path / "data"), "--knn", "3", "--linear-probe",
               "--workers", "0", "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and "per-class accuracy" in out  # the head is scored as before: it has the data's 2 classes
    res = json.loads((out_dir / "results.json").read_text())
    knn, lp = res["knn"], res["linear_probe"]
    assert knn["k"] == 3 and knn["n"] == 4 and knn["n_train"] == 12 and lp["n"] == 4 and lp["n_train"] == 12
    for r in (knn, lp):
        assert 0 <= r["top1"] <= 1 and 0 <= r["top5"] <= 1 and r["top1"] * 4 == round(r["top1"] * 4)
    assert _line(out, "k-NN (k=3, T=0.07)") == (round(knn["top1"], 4), round(knn["top5"], 4))
    assert _line(out, "linear probe") == (round(lp["top1"], 4), round(lp["top5"], 4))
    assert res["n"] == 16 and (out_dir / "confusion.png").is_file()  # the head: the whole class folder, as today


def test_eval_cli_probes_an_encoder_without_head_and_refuses_unlabelled_data(tmp_path, capsys):
    _class_folder(tmp_path / "data", n=6)
    vitkit.save(vitkit.create_model(tiny_cfg(image_size=16, patch_size=4, num_classes=0, depth=1)), tmp_path / "enc")
    rc = main(["eval", str(tmp_path / "enc"), "--data", str(tmp_path / "data"), "--knn", "2",
               "--knn-temperature", "0.5", "--workers", "0", "--out", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert rc == 0 and "head not scored: the model" in out and "k-NN (k=2, T=0.5)" in out and "linear probe" not in out
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["knn"]["temperature"] == 0.5 and "top1" not in res and "linear_probe" not in res
    # without --knn / --linear-probe a model without a fitting head is refused, as before
    assert main(["eval", str(tmp_path / "enc"), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "e2")]) == 2
    assert "no classification head" in capsys.readouterr().err
    _pngs(tmp_path / "plain", 4)
    assert main(["eval", str(tmp_path / "enc"), "--data", str(tmp_path / "plain"), "--linear-probe",
                 "--out", str(tmp_path / "e3")]) == 2
    assert "need labelled data" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "enc"), "--data", str(tmp_path / "data"), "--knn", "0"]) == 2
    assert main(["eval", str(tmp_path / "enc"), "--data", str(tmp_path / "data"), "--knn", "50",
                 "--workers", "0", "--out", str(tmp_path / "e4")]) == 2
    assert "only 10 readable images" in capsys.readouterr().err
