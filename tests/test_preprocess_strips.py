"""Shortest-edge preprocessing of long strips (1x100000, 100000x1) in bounded memory, ordinary images unchanged.

A shortest-edge resize to 248 makes a 1x100000 strip 248 x 24.8 M pixels (18 GB of RGB) before the centre crop;
vitkit resamples only the window the crop keeps once the intermediate would pass MAX_RESIZE_FACTOR x the crop.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

import vitkit
from vitkit.data.preprocess import INTERPOLATIONS, MAX_RESIZE_FACTOR, scaled_size

STRIP_CFG = vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.9, interpolation="bicubic")


@pytest.fixture
def resize_log(monkeypatch):
    """Every Image.resize request (size, box); a request over the budget fails instead of allocating."""
    log = []
    real = Image.Image.resize

    def resize(self, size, resample=None, box=None, reducing_gap=None):
        log.append((tuple(size), box))
        if size[0] * size[1] > MAX_RESIZE_FACTOR * 224 * 224:
            raise AssertionError(f"resize to {size} requested: {size[0] * size[1]:,} pixels")
        return real(self, size, resample, box, reducing_gap)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return log


def _banded(size, horizontal):
    """Red, green, blue thirds along the long axis: the centre crop must be all green."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    n = w if horizontal else h
    for i, c in enumerate([(255, 0, 0), (0, 200, 0), (0, 0, 255)]):
        sl = slice(i * n // 3, (i + 1) * n // 3)
        if horizontal:
            a[:, sl] = c
        else:
            a[sl, :] = c
    return Image.fromarray(a)


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (3, 50_000), (50_000, 7), (1, 10_000)])
@pytest.mark.parametrize("interp", ["bicubic", "bilinear", "nearest", "lanczos"])
def test_long_strips_resample_only_the_crop(resize_log, size, interp):
    img = _banded(size, horizontal=size[0] > size[1])
    cfg = vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.9, interpolation=interp)
    x = vitkit.preprocess(img, cfg)
    assert x.shape == (1, 3, 224, 224)
    green = (np.array([0, 200, 0]) / 255 - 0.5) / 0.5
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), green, atol=1e-6)  # the middle third, all of it
    assert resize_log and all(s[0] * s[1] <= 224 * 224 for s, _ in resize_log)  # never the 248 x 24.8 M one


def test_strip_peak_memory_is_bounded():
    # a subprocess whose address space may grow by at most 1 GiB: the old path needs 18 GB for this strip
    code = """
import json, resource
from PIL import Image
import vitkit
cfg = vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.9, interpolation="bicubic")
strips = [Image.new("RGB", (1, 100_000), (9, 99, 199)), Image.new("RGB", (100_000, 1), (9, 99, 199))]
vsz = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vsz + 2 ** 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shapes = [list(vitkit.preprocess(s, cfg).shape) for s in strips]
print(json.dumps({"shapes": shapes, "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["shapes"] == [[1, 3, 224, 224]] * 2
    assert res["grew_kib"] < 100 * 1024  # peak RSS grew by less than 100 MB


@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (451, 300), (2000, 160)])  # the last one: 12.5:1
def test_ordinary_images_keep_the_full_resize_bit_for_bit(resize_log, interp, size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(skimage.data.astronaut()).resize(size, Image.Resampling.BILINEAR)
    img = Image.fromarray(np.clip(np.asarray(img) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
                          .astype(np.uint8))
    cfg = vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.9, interpolation=interp)
    resize_log.clear()
    ours = vitkit.preprocess(img, cfg)
    # what the code did before the strip path existed: resize the whole image, then crop the centre
    short = scaled_size(224, 0.9)
    w, h = size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    assert [s for s, _ in resize_log] == [(nw, nh)] and resize_log[0][1] is None
    full = np.asarray(img.resize((nw, nh), INTERPOLATIONS[interp]), dtype=np.float32)
    left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
    half = np.float32(0.5)
    ref = (full[top:top + 224, left:left + 224] * cfg.rescale - half) / half  # preprocess's own arithmetic
    assert np.array_equal(ours[0].permute(1, 2, 0).numpy(), ref)


@pytest.mark.parametrize("interp", ["bicubic", "bilinear", "lanczos", "nearest"])
def test_strip_window_matches_the_full_resize_on_real_photographs(interp):
    cfg = vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.9, interpolation=interp)
    short = scaled_size(224, 0.9)
    for photo in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()):
        base = Image.fromarray(photo)
        bw, bh = base.size
        for strip in (base.crop((0, bh // 2, bw, bh // 2 + 12)), base.crop((bw // 2, 0, bw // 2 + 12, bh))):
            w, h = strip.size
            nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            assert nw * nh > MAX_RESIZE_FACTOR * 224 * 224  # the strip path, and the full one still affordable
            full = np.asarray(strip.resize((nw, nh), INTERPOLATIONS[interp]), dtype=np.float32)
            left, top = int(round((nw - 224) / 2.0)), int(round((nh - 224) / 2.0))
            ref = full[top:top + 224, left:left + 224]
            ours = (vitkit.preprocess(strip, cfg)[0].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255
            diff = np.abs(ours - ref)
            if interp == "nearest":  # a source pixel exactly half-way: either neighbour, by float rounding
                assert (diff > 0.01).mean() < 0.02
            else:
                assert diff.max() <= 1.01 and diff.mean() < 0.02  # rounding only
