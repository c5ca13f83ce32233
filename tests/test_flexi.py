"""FlexiViT: the patch kernel resized by the pseudo-inverse, and a model loaded at other patch sizes."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed

import vitkit
from vitkit.layers import resize_patch_kernel
from vitkit.layers.flexi import resize_matrix

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise


def test_resize_to_own_size_is_identity():
    w = torch.randn(6, 3, 8, 8)
    assert resize_patch_kernel(w, 8) is w
    # the matrix itself: resizing 8 -> 8 is the identity, so its pseudo-inverse is too
    assert max_diff(resize_matrix((8, 8), (8, 8)), torch.eye(64, dtype=torch.float64)) < 1e-12


@pytest.mark.parametrize("old,new", [(8, 16), (4, 12), (8, 4), (16, 8)])
def test_matches_timm_resample_patch_embed(old, new):
    w = torch.randn(5, 3, old, old)
    theirs = resample_patch_embed(w, [new, new], interpolation="bicubic", antialias=True)
    assert max_diff(resize_patch_kernel(w, new), theirs) < 1e-4


@pytest.mark.parametrize("old,new", [(8, 16), (4, 8), (8, 24)])
def test_resized_input_gives_the_same_patch_embedding(old, new):
    """The property the method is built on: <x, w> == <resize(x), resize_pinv(w)> (exact when upsampling)."""
    torch.manual_seed(0)
    w = torch.randn(7, 3, old, old, dtype=torch.float64)
    x = torch.randn(10, 3, old, old, dtype=torch.float64)  # ten patches
    x_big = F.interpolate(x, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    a = F.conv2d(x, w, stride=old)  # (10, 7, 1, 1)
    b = F.conv2d(x_big, resize_patch_kernel(w, new), stride=new)
    assert max_diff(a, b) < 1e-9


@pytest.mark.parametrize("old,new", [((3, 5), (4, 7)), ((6, 4), (3, 2))])
def test_resize_matrix_is_the_image_resize_on_non_square_patches(old, new):
    """B·x == resize(x) for every x, with the height and the width each its own (not the one for both)."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, *old, dtype=torch.float64)
    want = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
    b = resize_matrix(old, new)
    assert b.shape == (new[0] * new[1], old[0] * old[1])
    assert max_diff((b @ x.reshape(4, -1).T).T.reshape(4, 1, *new), want) < 1e-12


def test_resize_matrix_antialiases_by_default():
    """timm's default: a patch shrunk 8 -> 3 is antialiased unless asked not to be."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    aa = F.interpolate(x, size=(3, 3), mode="bicubic", antialias=True, align_corners=False).flatten()
    plain = F.interpolate(x, size=(3, 3), mode="bicubic", antialias=False, align_corners=False).flatten()
    assert max_diff(resize_matrix((8, 8), (3, 3)) @ x.flatten(), aa) < 1e-12
    assert max_diff(resize_matrix((8, 8), (3, 3), antialias=False) @ x.flatten(), plain) < 1e-12
    assert max_diff(aa, plain) > 1e-3


def test_resize_patch_kernel_passes_antialias_on():
    w = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    plain = resize_patch_kernel(w, 4, antialias=False)
    want = (w.reshape(4, 3, -1) @ torch.linalg.pinv(resize_matrix((8, 8), (4, 4), antialias=False))).reshape(4, 3, 4, 4)
    assert max_diff(plain, want) < 1e-12
    assert max_diff(plain, resize_patch_kernel(w, 4)) > 1e-3


@pytest.mark.parametrize("old,new", [((4, 6), (8, 12)), ((4, 4), (6, 10)), ((5, 3), (5, 6))])
def test_non_square_kernels_and_sizes_keep_the_patch_embedding(old, new):
    """A kernel (D, C, h, w) resized to a (h', w') tuple: the shape asked for, and <x, w> == <resize(x), ŵ>."""
    torch.manual_seed(0)
    w = torch.randn(7, 3, *old, dtype=torch.float64)
    x = torch.randn(10, 3, *old, dtype=torch.float64)
    out = resize_patch_kernel(w, new)
    assert out.shape == (7, 3, *new)
    x_big = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
    assert max_diff(F.conv2d(x, w, stride=old), F.conv2d(x_big, out, stride=new)) < 1e-9


def test_a_kernel_resized_to_patch_size_1():
    """Side 1 is a patch size (a 1x1 kernel: the least-squares average of the patch); 0 is refused."""
    w = torch.randn(5, 3, 4, 4)
    out = resize_patch_kernel(w, 1)
    assert out.shape == (5, 3, 1, 1) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="patch size must be positive"):
        resize_patch_kernel(w, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_resized_kernel_keeps_the_dtype(dtype):
    w = torch.randn(5, 3, 8, 8).to(dtype)
    out = resize_patch_kernel(w, 16)
    assert out.dtype == dtype and out.device == w.device
    want = resize_patch_kernel(w.double(), 16).to(dtype)  # computed in float64 either way
    assert torch.equal(out, want)


def _tiny_file(tmp_path, **kw):
    torch.manual_seed(0)
    m = randomise(vitkit.create_model(tiny_cfg(image_size=32, patch_size=8, **kw)))
    vitkit.save(m, tmp_path / "m")
    return m, tmp_path / "m"


def test_load_at_other_patch_sizes(tmp_path):
    """One set of weights runs at patch 4, 8 and 16 (grid 8, 4, 2): the kernel resized, the position
    embedding following the grid."""
    m, path = _tiny_file(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    for p in (4, 8, 16):
        ours = vitkit.load(path, patch_size=p)
        assert ours.cfg.patch_size == p and ours.patch_embed.proj.weight.shape[-1] == p
        assert ours.pos_embed.shape[1] == 1 + (32 // p) ** 2
        with torch.no_grad():
            out = ours(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        if p == 8:
            assert max_diff(out, m.eval()(x)) == 0
        else:
            assert any("FlexiViT" in n for n in ours.load_info["notes"])


def test_patch_size_and_image_size_together_match_upsampled_input(tmp_path):
    """Loading at 2x the patch size and 2x the image keeps the grid: on a patch-wise upsampled image the
    patch embeddings are those of the original model."""
    m, path = _tiny_file(tmp_path, pos_embed="none", class_token=False, pooling="gap")
    ours = vitkit.load(path, patch_size=16, image_size=64)
    assert ours.cfg.grid_size == (4, 4)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float32)
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 1, 4, 5).reshape(16, 3, 8, 8)
    big = F.interpolate(patches.double(), size=(16, 16), mode="bicubic", antialias=True).float()
    big = big.reshape(1, 4, 4, 3, 16, 16).permute(0, 3, 1, 4, 2, 5).reshape(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(ours.patch_embed(big)[0], m.patch_embed(x)[0]) < 1e-4


def test_bad_patch_size_is_refused(tmp_path):
    _, path = _tiny_file(tmp_path)
    with pytest.raises(ValueError, match="patch_size=5"):
        vitkit.load(path, patch_size=5)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        vitkit.load(path, patch_size=0)


def test_cli_convert_patch_size(tmp_path):
    _, path = _tiny_file(tmp_path)
    out = tmp_path / "p16"
    r = subprocess.run([sys.executable, "-m", "vitkit", "convert", str(path), str(out), "--patch-size", "16"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "patch 16" in r.stdout
    again = vitkit.load(out)
    assert again.cfg.patch_size == 16 and again.pos_embed.shape[1] == 1 + 4


def test_fine_tuning_a_checkpoint_at_another_patch_size(tmp_path):
    from vitkit.train.model_setup import build_model

    _, path = _tiny_file(tmp_path)
    m, notes = build_model(str(path), ["a", "b"], 3, patch_size=16)
    assert m.cfg.patch_size == 16 and m.cfg.num_classes == 2 and m.pos_embed.shape[1] == 1 + 4
    assert any("FlexiViT" in n for n in notes)


@pytest.mark.parametrize("cmd", ["predict", "explain", "features", "export", "convert", "eval", "serve"])
def test_every_loading_command_takes_patch_size(cmd):
    from vitkit.cli.main import build_parser

    assert "--patch-size" in build_parser()._subparsers._group_actions[0].choices[cmd].format_help()


def test_readme_example_one_set_of_weights_at_patch_8_16_32(tmp_path):
    """README's example, narrow: a /16 model at 224 loaded at patch 8, 16 and 32."""
    src = vitkit.create_model(vitkit.parse_model_name("vit_base_patch16_224").replace(width=32, heads=2, depth=1))
    vitkit.save(randomise(src), tmp_path / "vit-b16")
    x = torch.randn(1, 3, 224, 224)
    outs = {}
    for p, tokens in ((8, 785), (16, 197), (32, 50)):
        model = vitkit.load(tmp_path / "vit-b16", patch_size=p)
        assert model.cfg.num_tokens == tokens
        with torch.no_grad():
            outs[p] = model(x)
        assert outs[p].shape == (1, 1000) and torch.isfinite(outs[p]).all()
    with torch.no_grad():
        assert max_diff(outs[16], src.eval()(x)) <= 1e-6


def test_a_hybrid_refuses_a_patch_kernel_resize(tmp_path):
    cfg = vitkit.ViTConfig(image_size=32, patch_size=1, width=32, depth=1, heads=4, num_classes=3, stem="hybrid",
                           hybrid_layers=(1,), hybrid_width=32)
    vitkit.save(vitkit.create_model(cfg), tmp_path / "h")
    with pytest.raises(ValueError, match="hybrid's patches are cut from its CNN's feature map"):
        vitkit.load(tmp_path / "h", patch_size=2)
