"""Data sets: built-ins with fixed stratified splits, image folders, CSV files, unreadable files (item 17)."""

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.datasets import (AugmentedView, DataSpec, FileImageDataset, UnreadableImage, collate_skipping,
                                  load_eval_source, load_source, sample_seed)


def _png(path, value, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def _layout(root, classes=("cat", "dog"), n=3, val=True):
    for c_i, c in enumerate(classes):
        for i in range(n):
            _png(root / "train" / c / f"{i}.png", 40 + 100 * c_i + i)
            if val:
                _png(root / "val" / c / f"{i}.jpg", 40 + 100 * c_i + i)


@pytest.mark.parametrize("name,n_train,n_val,hw,classes", [("digits", 1437, 360, (8, 8), 10),
                                                          ("lfw-faces", 160, 40, (25, 25), 2)])
def test_builtins_fixed_stratified_split(name, n_train, n_val, hw, classes):
    spec = DataSpec(image_size=(16, 16), channels=1)
    tr, va = load_source(name, spec)
    assert (len(tr), len(va)) == (n_train, n_val) and len(tr.classes) == classes
    x, y = tr[0]
    assert x.shape == (1, 16, 16) and 0 <= x.min() and x.max() <= 1
    # stratified: every class is present in the validation part in proportion
    counts = np.bincount(va.targets, minlength=classes)
    assert counts.min() >= n_val // classes - 1
    tr2, va2 = load_source(name, spec)  # fixed: the same split every time
    assert va2.targets == va.targets and torch.equal(va2.images, va.images)
    tr3, _ = load_source(name, DataSpec(image_size=(32, 32), channels=3))
    assert tr3[0][0].shape == (3, 32, 32) and torch.equal(tr3[0][0][0], tr3[0][0][1])  # grey repeated


def test_image_folder_layout(tmp_path):
    _layout(tmp_path)
    tr, va = load_source(str(tmp_path), DataSpec(image_size=(8, 8), channels=3))
    assert tr.classes == ["cat", "dog"] and len(tr) == 6 and len(va) == 6
    x, y = tr[4]
    assert x.shape == (3, 8, 8) and y == 1
    assert torch.allclose(x, torch.full_like(x, (140 + 1) / 255), atol=1e-6)  # squash-resized flat colour
    g, _ = FileImageDataset([tr.paths[0]], [0], tr.classes, (8, 8), 1, "x")[0]
    assert g.shape == (1, 8, 8)
    ev = load_eval_source(str(tmp_path), DataSpec(image_size=(8, 8), channels=3), ["cat", "dog"])
    assert all("val" in p for p in ev.paths) and len(ev) == 6


def test_folder_without_val_is_split_and_csv(tmp_path):
    for c in ("a", "b"):
        for i in range(5):
            _png(tmp_path / "imgs" / c / f"{i}.png", 10 * i)
    tr, va = load_source(str(tmp_path / "imgs"), DataSpec(image_size=(8, 8), channels=3, val_fraction=0.2))
    assert len(tr) == 8 and sorted(va.targets) == [0, 1]
    assert not set(tr.paths) & set(va.paths)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "".join(f"imgs/{c}/{i}.png,{c}\n" for c in "ab" for i in range(5)))
    tr, va = load_source(str(csv), DataSpec(image_size=(8, 8), channels=3))
    assert tr.classes == ["a", "b"] and len(tr) + len(va) == 10
    assert tr[0][0].shape == (3, 8, 8)


def test_clear_errors(tmp_path):
    spec = DataSpec(image_size=(8, 8), channels=3)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_source(str(tmp_path / "nowhere"), spec)
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "cls" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no images found in .*empty"):
        load_source(str(tmp_path / "empty"), spec)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.png,1\n")
    with pytest.raises(ValueError, match="bad.csv.*header 'path,label'"):
        load_source(str(bad), spec)
    _layout(tmp_path / "l", val=False)
    _png(tmp_path / "l" / "val" / "bird" / "0.png", 0)
    with pytest.raises(ValueError, match="bird"):
        load_source(str(tmp_path / "l"), spec)


def test_unreadable_file_is_skipped_and_reported_or_strict_stops(tmp_path):
    """RELIABILITY item 17: by default the bad file is skipped with its path and reason; strict stops."""
    _layout(tmp_path, val=False, n=4)
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    tr, va = load_source(str(tmp_path), DataSpec(image_size=(8, 8), channels=3))
    ds = tr if str(bad) in tr.paths else va
    i = ds.paths.index(str(bad))
    x, reason = ds[i]
    assert x is None and str(bad) in reason and "HTML" in reason
    x, y, skipped = collate_skipping([ds[j] for j in range(len(ds))])
    assert x.shape[0] == len(ds) - 1 and skipped == [reason]
    strict = FileImageDataset(ds.paths, ds.targets, ds.classes, (8, 8), 3, "s", strict=True)
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        strict[i]


def test_augmented_view_is_a_function_of_seed_epoch_index(tmp_path):
    tr, _ = load_source("digits", DataSpec(image_size=(16, 16), channels=1))
    calls = []

    def tf(x, seed):
        calls.append(seed)
        g = torch.Generator().manual_seed(seed)
        return x + torch.rand(x.shape, generator=g)

    v = AugmentedView(tr, tf, seed=3)
    a, b, c = v[(5, 0)][0], v[(5, 0)][0], v[(5, 1)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert calls[0] == sample_seed(3, 0, 5) != sample_seed(3, 1, 5)
