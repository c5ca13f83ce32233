"""Attention maps: [CLS] attention, rollout against a reference, registers left out, PNG overlays."""

import errno
import functools
import os

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.data.decode import open_image
from vitkit.explain import attention_rollout, cls_attention, explain, render_explanation, render_head_grid
from vitkit.utils import atomic


def make_model(**kw):
    """A tiny ViT with sharp (far from uniform) attention and a non-zero head."""
    base = dict(image_size=32, patch_size=8, width=32, depth=3, heads=4, num_classes=5,
                labels=["cat", "person", "cup", "car", "tree"])
    base.update(kw)
    model = vitkit.create_model(vitkit.ViTConfig(**base)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.copy_(torch.randn(blk.attn.qkv.weight.shape, generator=g) * 0.4)
        for tok in (model.cls_token, model.reg_token):
            if tok is not None:
                tok.copy_(torch.randn(tok.shape, generator=g))
        if isinstance(model.head, torch.nn.Linear):
            model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.5)
    return model


@pytest.fixture
def cat(tmp_path):
    p = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(p)
    return p


def _maps(model, img):
    x = vitkit.preprocess(img, vitkit.inference.default_preprocess_cfg(model.cfg))
    return [m.double() for m in model.get_attention_maps(x)]


def _reference_rollout(maps, prefix):
    """Abnar & Zuidema, written out in numpy: per layer 0.5 * mean_heads(A) + 0.5 * I, rows
    renormalised, product from the last layer down to the first, [CLS] row over patches."""
    mats = []
    for a in maps:
        a = a[0].numpy().mean(axis=0)
        a = 0.5 * a + 0.5 * np.eye(a.shape[0])
        mats.append(a / a.sum(axis=1, keepdims=True))
    rollout = functools.reduce(np.matmul, mats[::-1])  # A_L @ ... @ A_1
    return rollout[0, prefix:]


@pytest.mark.parametrize("kw", [{}, {"reg_tokens": 4}, {"distilled": True}])
def test_rollout_equals_reference(cat, kw):
    model = make_model(**kw)
    img = open_image(cat)
    maps = _maps(model, img)
    assert not torch.allclose(maps[0], torch.full_like(maps[0], maps[0].mean()), atol=1e-2)  # sharp attention
    prefix = model.num_prefix_tokens
    ref = _reference_rollout(maps, prefix)
    got = attention_rollout(maps, prefix)[0].double().numpy()
    assert got.shape == (16,) and np.allclose(got, ref, rtol=1e-5, atol=1e-7)
    expl = explain(model, img, method="rollout")
    assert expl.heatmap.shape == (4, 4) and np.allclose(expl.heatmap.ravel(), ref, rtol=1e-4, atol=1e-6)
    # rollout through the first layer only = 0.5 * A + 0.5 * I of that layer
    first = explain(model, img, method="rollout", layer=0).heatmap.ravel()
    assert np.allclose(first, _reference_rollout(maps[:1], prefix), rtol=1e-4, atol=1e-6)


def test_cls_map_sums_to_cls_row_mass_over_patches(cat):
    model = make_model(reg_tokens=2)
    img = open_image(cat)
    maps = _maps(model, img)
    prefix = model.num_prefix_tokens  # [CLS] + 2 registers
    last = maps[-1][0]  # (heads, T, T)
    mass = last[:, 0, prefix:].sum(-1)  # per head: what [CLS] gives to patches
    assert (mass < 0.999).all()  # some mass goes to prefix tokens, so the test can tell
    per_head = cls_attention(maps[-1], prefix)[0]  # (heads, N)
    assert torch.allclose(per_head.sum(-1), mass)
    assert torch.allclose(per_head.sum(-1), 1 - last[:, 0, :prefix].sum(-1))
    expl = explain(model, img)
    assert np.allclose(expl.head_maps.reshape(4, -1).sum(-1), mass.numpy(), atol=1e-5)
    assert np.isclose(expl.heatmap.sum(), mass.mean().item(), atol=1e-5)  # heads averaged
    one = explain(model, img, layer=1, head=2)
    assert np.allclose(one.heatmap.ravel(), cls_attention(maps[1], prefix)[0, 2].numpy(), atol=1e-6)


def test_register_tokens_left_out_of_the_map(cat):
    model = make_model(reg_tokens=4)
    img = open_image(cat)
    maps = _maps(model, img)
    assert maps[-1].shape[-1] == 1 + 4 + 16
    expl = explain(model, img)
    # the map is exactly the patch columns 5.. of the [CLS] row; register columns 1..4 are not in it
    ref = maps[-1][0, :, 0, 5:].mean(0).numpy()
    assert expl.heatmap.shape == (4, 4) and np.allclose(expl.heatmap.ravel(), ref, atol=1e-6)
    wrong = maps[-1][0, :, 0, 1:17].mean(0).numpy()  # an off-by-registers slice would give this
    assert not np.allclose(expl.heatmap.ravel(), wrong, atol=1e-4)


def test_model_without_cls_uses_mean_patch_query(cat):
    model = make_model(class_token=False, reg_tokens=4, pooling="gap", pos_embed_prefix=False)
    img = open_image(cat)
    maps = _maps(model, img)
    expl = explain(model, img)
    ref = maps[-1][0, :, 4:, 4:].mean(1).mean(0).numpy()  # mean over patch queries, patch keys
    assert np.allclose(expl.heatmap.ravel(), ref, atol=1e-6)
    roll = explain(model, img, method="rollout").heatmap
    assert roll.shape == (4, 4) and np.isfinite(roll).all()


def test_any_input_resolution(cat):
    model = make_model(dynamic_img_size=True)
    img = open_image(cat)
    expl = explain(model, img, size=(48, 64), method="rollout")
    assert expl.grid == (6, 8) and expl.heatmap.shape == (6, 8) and expl.image.shape == (48, 64, 3)
    assert len(expl.predictions) == 5
    with pytest.raises(ValueError, match="does not match the model's image size"):
        explain(make_model(), img, size=(48, 64))


def test_overlay_png_of_expected_size_for_a_real_photograph(cat, tmp_path):
    model = make_model()
    expl = explain(model, open_image(cat), topk=5)
    assert [lab for lab, _ in expl.predictions] and abs(sum(p for _, p in expl.predictions) - 1) < 1e-5
    out = render_explanation(expl, tmp_path / "attn.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1200, 400)
        a = np.asarray(im.convert("RGB"), dtype=np.float32)
    middle = a[40:360, 400:780]  # the overlay panel: coloured, not blank
    assert middle.std() > 20
    grid = render_head_grid(expl, tmp_path / "heads.png", dpi=80)
    with Image.open(grid) as im:
        assert im.size == (3 * 200, 2 * 200)  # 4 heads + mean -> 3 x 2 cells of 2.5 in at 80 dpi


def test_cli_explain_writes_pngs(cat, tmp_path, capsys):
    model = make_model(reg_tokens=4)
    src = vitkit.save(model, tmp_path / "m")
    out, grid = tmp_path / "attn.png", tmp_path / "heads.png"
    rc = main(["explain", str(src), str(cat), "--out", str(out), "--method", "rollout", "--grid", str(grid),
               "--size", "40x56"])
    text = capsys.readouterr().out
    assert rc == 0 and "attention rollout" in text and "5x7 patches" in text
    assert "1. " in text and "5. " in text
    with Image.open(out) as im:
        assert im.size == (1200, 400)
    with Image.open(grid) as im:
        assert im.size == (750, 500)
    rc = main(["explain", str(src), str(cat), "--out", str(out), "--head", "1", "--layer", "0"])
    assert rc == 0 and "layer 0, head 1" in capsys.readouterr().out


@pytest.mark.parametrize("extra,needle", [
    (["--head", "9"], "head 9 is out of range"),
    (["--method", "rollout", "--head", "0"], "rollout averages"),
    (["--layer", "7"], "layer 7 is out of range"),
    (["--size", "abc"], "--size"),
])
def test_cli_explain_errors(cat, tmp_path, capsys, extra, needle):
    src = vitkit.save(make_model(), tmp_path / "m")
    rc = main(["explain", str(src), str(cat), "--out", str(tmp_path / "a.png")] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and "vitkit: error:" in err and needle in err
    assert not (tmp_path / "a.png").exists()


def test_cli_explain_refuses_non_images(tmp_path, capsys):
    src = vitkit.save(make_model(), tmp_path / "m")
    (tmp_path / "page.jpg").write_text("<html><body>not found</body></html>")
    rc = main(["explain", str(src), str(tmp_path / "page.jpg"), "--out", str(tmp_path / "a.png")])
    assert rc == 2 and "page.jpg is an HTML page" in capsys.readouterr().err


def test_cli_explain_read_only_file_system_keeps_the_previous_png(cat, tmp_path, capsys, monkeypatch):
    """RELIABILITY item 38 for `explain --out`: EROFS at the rename -> one line, exit 2, old PNG intact."""
    src = vitkit.save(make_model(), tmp_path / "m")
    out = tmp_path / "attn.png"
    out.write_bytes(b"previous png")
    real = os.replace

    def replace(a, b):
        if str(b) == str(out):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(b))
        return real(a, b)

    monkeypatch.setattr(atomic.os, "replace", replace)
    rc = main(["explain", str(src), str(cat), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"vitkit: error: could not write {out}: the file system is read-only; the previous version is kept" in err
    assert out.read_bytes() == b"previous png" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
