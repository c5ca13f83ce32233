"""DINO pieces against their definitions (Caron et al. 2021; facebookresearch/dino main_dino.py, utils.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit import ViTConfig, create_model
from vitkit.ssl.dino import (DINOHead, DINOLoss, MultiCropWrapper, allow_crop_sizes, cancel_last_layer_gradients,
                             clip_gradients_per_parameter, collapse_stats, collapse_warning, cosine_schedule,
                             ema_update, koleo_loss, make_teacher, momentum_schedule, save_cls_attention_png,
                             teacher_temp_schedule)
from vitkit.ssl.multicrop import MultiCrop, collate_crops, crop_box


def tiny_vit(**kw):
    base = dict(image_size=32, patch_size=8, channels=3, num_classes=0, width=32, depth=2, heads=4)
    base.update(kw)
    return create_model(ViTConfig(**base))


def tiny_student(out_dim=64, **kw):
    vit = allow_crop_sizes(tiny_vit(**kw), [32, 16])
    return MultiCropWrapper(vit, DINOHead(vit.cfg.num_features, out_dim, hidden_dim=48, bottleneck_dim=16))


# --- centre ----------------------------------------------------------------------------------------

def test_center_update_follows_its_formula_and_is_saved():
    loss = DINOLoss(5, center_momentum=0.9)
    c0 = torch.randn(1, 5)
    loss.center.copy_(c0)
    t = torch.randn(6, 5)
    loss.update_center(t)
    expected = [0.9 * c0[0, k].item() + 0.1 * sum(t[i, k].item() for i in range(6)) / 6 for k in range(5)]
    assert loss.center[0].tolist() == pytest.approx(expected, abs=1e-6)
    # the centre is a saved buffer: a fresh loss loaded from the state dict continues exactly
    state = loss.state_dict()
    assert torch.equal(state["center"], loss.center)
    other = DINOLoss(5)
    other.load_state_dict(state)
    assert torch.equal(other.center, loss.center)


def test_center_update_takes_the_mean_over_processes():
    loss = DINOLoss(4, center_momentum=0.5)
    mine, theirs = torch.randn(3, 4), torch.randn(3, 4)

    def all_reduce(x):  # in place, like torch.distributed.all_reduce with a second process holding `theirs`
        x.add_(theirs.sum(dim=0, keepdim=True))

    loss.update_center(mine, all_reduce=all_reduce, world_size=2)
    both = torch.cat([mine, theirs]).mean(dim=0, keepdim=True)
    assert torch.allclose(loss.center, 0.5 * both, atol=1e-6)
    # a callable that returns the sum works too
    loss2 = DINOLoss(4, center_momentum=0.5)
    loss2.update_center(mine, all_reduce=lambda x: x + theirs.sum(dim=0, keepdim=True), world_size=2)
    assert torch.allclose(loss2.center, loss.center)
    with pytest.raises(ValueError, match="all_reduce"):
        DINOLoss(4).update_center(mine, world_size=2)


# --- schedules -------------------------------------------------------------------------------------

def test_cosine_schedule_follows_its_formula():
    base, final, epochs, steps, warm = 5e-4, 1e-6, 10, 7, 2
    s = cosine_schedule(base, final, epochs, steps, warmup_epochs=warm, start_warmup_value=1e-5)
    assert len(s) == epochs * steps
    w = warm * steps  # 14 warm-up steps, linspace with both ends
    assert s[0] == pytest.approx(1e-5)
    assert s[w - 1] == pytest.approx(base)
    assert s[1] - s[0] == pytest.approx((base - 1e-5) / (w - 1))
    n = epochs * steps - w
    for i in (0, 1, n // 2, n - 1):
        assert s[w + i] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)))
    assert s[w] == pytest.approx(base)  # the cosine starts at base...
    assert final < s[-1] < final + 1e-6  # ...and ends one step short of final
    assert np.all(np.diff(s[w:]) <= 0)


def test_momentum_schedule_is_a_cosine_from_the_base_to_one():
    m = momentum_schedule(0.996, epochs=4, steps_per_epoch=5)
    n = 20
    assert len(m) == n and m[0] == pytest.approx(0.996)
    for i in range(n):
        assert m[i] == pytest.approx(1 - 0.5 * 0.004 * (1 + math.cos(math.pi * i / n)))
    assert m[n // 2] == pytest.approx(0.998)
    assert 0.9999 < m[-1] < 1.0  # one step short of 1
    assert np.all(np.diff(m) >= 0)


def test_teacher_temperature_warms_up_linearly_then_stays():
    t = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=100)
    assert len(t) == 100
    assert t[0] == pytest.approx(0.04)
    assert t[29] == pytest.approx(0.07)  # linspace includes its end: the warm-up ends at epoch 29
    assert t[1] - t[0] == pytest.approx(0.03 / 29)
    assert np.all(t[30:] == 0.07)
    assert np.all(teacher_temp_schedule(0.04, 0.07, 0, 3) == 0.07)
    with pytest.raises(ValueError, match="warmup_epochs"):
        teacher_temp_schedule(0.04, 0.07, 5, 3)


# --- teacher ---------------------------------------------------------------------------------------

def test_ema_update_follows_its_formula_and_the_teacher_gets_no_gradients():
    student = tiny_student()
    teacher = make_teacher(student)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():  # make them differ
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, 0.9)
    s = dict(student.named_parameters())
    for n, p in teacher.named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * s[n], atol=1e-6), n
    # a DINO step: the loss backpropagates into the student only
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    loss = DINOLoss(64)(student(crops), teacher(crops[:2]), 0.04)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.backbone.patch_embed.proj.weight.grad is not None
    teacher.head.mlp[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="requires gradients"):
        ema_update(teacher, student, 0.9)


# --- loss ------------------------------------------------------------------------------------------

def _hand_loss(s, t, center, B, n_crops, n_global, tau_s, tau_t, skip_same=True):
    """Plain-python cross-entropy over pairs, from the paper's definition."""
    def softmax(row, tau):
        e = [math.exp(v / tau) for v in row]
        z = sum(e)
        return [v / z for v in e]

    total, terms = 0.0, 0
    for g in range(n_global):
        for v in range(n_crops):
            if skip_same and v == g:
                continue
            pair = 0.0
            for b in range(B):
                q = softmax([t[g * B + b][k] - center[k] for k in range(len(center))], tau_t)
                p = softmax(s[v * B + b], tau_s)
                pair += -sum(qk * math.log(pk) for qk, pk in zip(q, p))
            total += pair / B
            terms += 1
    return total / terms


def test_loss_equals_a_hand_computation_and_skips_same_view_pairs():
    B, K, n_crops = 2, 3, 4
    s, t, c = torch.randn(n_crops * B, K), torch.randn(2 * B, K), torch.randn(1, K) * 0.1
    loss_fn = DINOLoss(K, student_temp=0.1)
    loss_fn.center.copy_(c)
    got = loss_fn(s, t, 0.05).item()
    want = _hand_loss(s.tolist(), t.tolist(), c[0].tolist(), B, n_crops, 2, 0.1, 0.05)
    with_same = _hand_loss(s.tolist(), t.tolist(), c[0].tolist(), B, n_crops, 2, 0.1, 0.05, skip_same=False)
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(with_same - want) > 1e-3  # the skip matters on this example
    # the student's crop 0 is compared with the teacher's crop 1 only: teacher crop 0 does not reach it
    s_var = s.clone().requires_grad_(True)
    loss_fn(s_var, t, 0.05).backward()
    g_ref = s_var.grad[:B].clone()
    t2 = t.clone()
    t2[:B] = torch.randn(B, K)  # change the teacher's crop 0
    s_var.grad = None
    loss_fn(s_var, t2, 0.05).backward()
    assert torch.allclose(s_var.grad[:B], g_ref)
    assert not torch.allclose(s_var.grad[B:2 * B], torch.zeros(B, K))
    with pytest.raises(ValueError, match="no pair"):
        DINOLoss(K, n_global=1)(s[:B], t[:B], 0.05)


def test_loss_does_not_update_the_center():
    loss_fn = DINOLoss(8)
    loss_fn(torch.randn(6, 8), torch.randn(4, 8), 0.04)
    assert torch.equal(loss_fn.center, torch.zeros(1, 8))


# --- head ------------------------------------------------------------------------------------------

def test_weight_normalised_last_layer_has_g_fixed_at_one():
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=True)
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones(32, 1)) and not g.requires_grad
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(32), atol=1e-6)  # unit rows
    # DINO's init of the MLP: truncated normal std 0.02, zero bias
    lin = head.mlp[0]
    assert torch.all(lin.bias == 0) and lin.weight.abs().max() <= 0.04 and 0.01 < lin.weight.std() < 0.03
    assert isinstance(head.mlp[1], torch.nn.GELU) and len(head.mlp) == 5  # 3 layers: L-GELU-L-GELU-L
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.1)
    head(torch.randn(4, 16)).pow(2).sum().backward()
    opt.step()
    assert torch.equal(g, torch.ones(32, 1))  # not trained
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32) and out.abs().max() <= 1 + 1e-5  # cosines
    free = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_cancel_last_layer_gradients_only_in_the_frozen_epochs():
    student = tiny_student()

    def backward():
        student.zero_grad(set_to_none=True)
        student([torch.randn(2, 3, 32, 32)]).pow(2).sum().backward()

    backward()
    assert cancel_last_layer_gradients(student, epoch=0, freeze_last_layer_epochs=1)
    assert all(p.grad is None for p in student.head.last_layer.parameters())
    assert student.head.mlp[0].weight.grad is not None and student.backbone.blocks[0].attn.qkv.weight.grad is not None
    backward()
    assert not cancel_last_layer_gradients(student, epoch=1, freeze_last_layer_epochs=1)
    v = student.head.last_layer.parametrizations.weight.original1
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_clip_gradients_per_parameter_bounds_each_norm():
    student = tiny_student()
    (student([torch.randn(2, 3, 32, 32)]) * 1e4).sum().backward()
    norms = clip_gradients_per_parameter(student, 0.5)
    assert max(norms) > 0.5
    assert all(p.grad.norm() <= 0.5 + 1e-4 for p in student.parameters() if p.grad is not None)


# --- wrapper ---------------------------------------------------------------------------------------

def test_wrapper_groups_crops_by_size_and_equals_each_crop_alone():
    student = tiny_student().eval()
    calls = []
    real = student.backbone.forward_features
    student.backbone.forward_features = lambda x: (calls.append(tuple(x.shape)), real(x))[1]
    crops = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)] + [torch.randn(3, 3, 16, 16) for _ in range(3)]
    out = student(crops)
    assert calls == [(6, 3, 32, 32), (9, 3, 16, 16)]
    alone = torch.cat([student([c]) for c in crops])
    assert out.shape == (15, 64) and torch.allclose(out, alone, atol=1e-5)
    calls.clear()
    student([crops[0], crops[2], crops[1]])  # groups are consecutive runs, as DINO's
    assert [c[-1] for c in calls] == [32, 16, 32]


def test_wrapper_reads_pooled_features_as_the_config_says():
    for pooling, cls in (("cls", True), ("gap", False)):
        vit = tiny_vit(pooling=pooling, class_token=cls).eval()
        w = MultiCropWrapper(vit, DINOHead(32, 16, 24, 8))
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(w.features([x]), vit.forward_head(vit.forward_features(x), pre_logits=True))


def test_local_crops_need_dynamic_img_size_which_allow_crop_sizes_sets():
    vit = tiny_vit()
    with pytest.raises(ValueError, match="dynamic_img_size"):
        vit(torch.randn(1, 3, 16, 16))
    allow_crop_sizes(vit, [32, 16])
    assert vit.cfg.dynamic_img_size and vit.patch_embed.dynamic_img_size
    assert vit.forward_features(torch.randn(1, 3, 16, 16)).shape == (1, 1 + 4, 32)
    with pytest.raises(ValueError, match="multiple of the model's patch size 8"):
        allow_crop_sizes(vit, [12])


# --- multi-crop ------------------------------------------------------------------------------------

def test_multicrop_count_sizes_and_determinism():
    img = torch.rand(3, 40, 48)
    mc = MultiCrop(32, 16, n_local=5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    crops = mc(img, torch.Generator().manual_seed(3))
    assert len(crops) == 7 == mc.n_crops
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 5
    torch.manual_seed(123)  # the global RNG neither matters nor moves
    state = torch.get_rng_state()
    again = mc(img, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    assert all(torch.equal(a, b) for a, b in zip(crops, mc(img, 3)))  # an int seed is the same generator
    other = mc(img, torch.Generator().manual_seed(4))
    assert all(not torch.equal(a, b) for a, b in zip(crops, other))
    batch = collate_crops([mc(img, i) for i in range(4)])
    assert [tuple(b.shape) for b in batch] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 5


def test_multicrop_normalises_and_takes_one_channel_images():
    mc = MultiCrop((16, 24), 8, n_local=2, mean=0.2, std=0.5, colour=False)
    crops = mc(torch.full((1, 20, 20), 0.7), 0)  # a flat image stays flat through crop, flip and blur
    assert [tuple(c.shape) for c in crops] == [(1, 16, 24)] * 2 + [(1, 8, 8)] * 2
    for c in crops:
        assert torch.allclose(c, torch.full_like(c, (0.7 - 0.2) / 0.5), atol=1e-5)
    gray = MultiCrop(16, 8, n_local=2)(torch.rand(1, 20, 20), 5)  # colour ops that need RGB are skipped
    assert [c.shape[0] for c in gray] == [1] * 4
    with pytest.raises(ValueError, match="channels"):
        mc(torch.rand(2, 20, 20), 0)
    with pytest.raises(ValueError, match="global_scale"):
        MultiCrop(16, 8, 2, global_scale=(0.5, 1.5))


def test_crop_box_scale_is_respected():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = crop_box(100, 100, (0.05, 0.4), g)
        assert 0 <= top <= 100 - h and 0 <= left <= 100 - w
        assert 0.05 * 0.8 <= h * w / 1e4 <= 0.4 * 1.2  # rounding of h and w


# --- collapse monitor ------------------------------------------------------------------------------

def _healthy(B=32, K=256, d=16):
    # what a normalised head gives for different images: cosines between unit vectors
    return F.normalize(torch.randn(B, d), dim=1) @ F.normalize(torch.randn(K, d), dim=1).T


def test_collapse_warning_fires_on_collapsed_outputs_only():
    K = 256
    center = torch.zeros(1, K)
    healthy = collapse_stats(_healthy(), center, 0.04)
    assert collapse_warning(healthy) is None
    assert healthy["entropy_max"] == pytest.approx(math.log(K))
    assert healthy["kl_to_uniform"] == pytest.approx(healthy["entropy_max"] - healthy["entropy"])
    constant = collapse_stats(_healthy(B=1).expand(32, K), center, 0.04)  # every image the same output
    assert constant["spread"] < 1e-6
    assert "same output" in collapse_warning(constant)
    one_hot = torch.randn(32, K) * 0.01
    one_hot[:, 7] += 1.0  # one dimension dominates every image
    stats = collapse_stats(one_hot, center, 0.04)
    assert stats["entropy"] < 0.01 and stats["top_mass"] > 0.99
    assert "one output dimension" in collapse_warning(stats)
    uniform = collapse_stats(torch.randn(32, K) * 1e-4, center, 0.04)  # all logits equal: uniform targets
    assert "uniform" in collapse_warning(uniform)
    # the centre is applied: subtracting the dominant dimension's mean removes the dominance
    assert collapse_warning(collapse_stats(one_hot + _healthy(), one_hot.mean(0, keepdim=True), 0.04)) is None


def test_a_fresh_student_is_not_reported_as_collapsed():
    student = tiny_student(out_dim=128)
    with torch.no_grad():
        out = student([torch.randn(16, 3, 32, 32)])
    assert collapse_warning(collapse_stats(out, torch.zeros(1, 128), 0.04)) is None


# --- attention PNG ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling,cls", [("cls", True), ("gap", False)])
def test_cls_attention_png_is_written(tmp_path, pooling, cls):
    student = tiny_student(pooling=pooling, class_token=cls)
    images = (torch.rand(3, 3, 32, 32) - 0.5) / 0.5
    path = save_cls_attention_png(student, images, tmp_path / "attn.png", mean=0.5, std=0.5)
    assert path == tmp_path / "attn.png"
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    assert im.format == "PNG" and w > h > 100  # 3 rows of 1 + 4 heads + mean
    assert [p.name for p in tmp_path.iterdir()] == ["attn.png"]  # no temporary file left
    assert student.training  # the mode is given back


def test_multicrop_flip_probability_and_colour_switch():
    img = torch.rand(3, 24, 24)
    plain = MultiCrop(16, 8, 1, hflip=0.0, colour=False)(img, 9)
    flipped = MultiCrop(16, 8, 1, hflip=1.0, colour=False)(img, 9)  # the same draws: only the flip differs
    for a, b in zip(plain, flipped):
        assert torch.allclose(a.flip(-1), b, atol=1e-5)
    coloured = MultiCrop(16, 8, 1, hflip=0.0, colour=True)(img, 9)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, coloured))


def _dino_steps(student, teacher, loss_fn, opt, crops_of, steps, temps, moms):
    for step in steps:
        crops = crops_of(step)
        t_out = teacher(crops[:2])
        loss = loss_fn(student(crops), t_out, float(temps[step // 2]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients_per_parameter(student, 3.0)
        cancel_last_layer_gradients(student, epoch=step // 2, freeze_last_layer_epochs=1)
        opt.step()
        ema_update(teacher, student, float(moms[step]))
        loss_fn.update_center(t_out)


def test_a_resumed_run_equals_the_uninterrupted_one_bit_for_bit():
    mc = MultiCrop(32, 16, n_local=2)
    images = torch.rand(4, 3, 36, 36)
    crops_of = lambda step: collate_crops([mc(im, 1000 * step + i) for i, im in enumerate(images)])  # noqa: E731
    temps, moms = teacher_temp_schedule(0.04, 0.07, 1, 2), momentum_schedule(0.9, 2, 2)

    def fresh():
        torch.manual_seed(0)
        student = tiny_student(drop_path=0.1)
        teacher, loss_fn = make_teacher(student), DINOLoss(64)
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
        return student, teacher, loss_fn, opt

    s1, t1, l1, o1 = fresh()
    torch.manual_seed(7)  # stochastic depth draws from the global generator: seeded in both runs alike
    _dino_steps(s1, t1, l1, o1, crops_of, range(4), temps, moms)
    s2, t2, l2, o2 = fresh()
    torch.manual_seed(7)
    _dino_steps(s2, t2, l2, o2, crops_of, range(2), temps, moms)
    state = {k: m.state_dict() for k, m in dict(s=s2, t=t2, l=l2, o=o2).items()}
    rng = torch.get_rng_state()
    s3, t3, l3, o3 = fresh()
    for k, m in dict(s=s3, t=t3, l=l3, o=o3).items():
        m.load_state_dict(state[k])
    torch.set_rng_state(rng)
    _dino_steps(s3, t3, l3, o3, crops_of, range(2, 4), temps, moms)
    for a, b in ((s1, s3), (t1, t3), (l1, l3)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(l1.center, torch.zeros(1, 64))


def test_koleo_loss_is_minus_the_mean_log_distance_to_the_nearest_neighbour():
    """On the unit circle at 0, 10 and 90 degrees: each point's neighbour is the nearest one (0 <-> 10, 90 -> 10),
    the distances are chords 2 sin(angle / 2); rows are normalised first, so the scale of a row does not count."""
    deg = torch.tensor([0.0, 10.0, 90.0]) * math.pi / 180
    x = torch.stack([deg.cos(), deg.sin()], 1) * torch.tensor([[1.0], [3.0], [0.5]])
    chord = lambda a: 2 * math.sin(math.radians(a) / 2)
    want = -(math.log(chord(10)) + math.log(chord(10)) + math.log(chord(80))) / 3
    assert float(koleo_loss(x)) == pytest.approx(want, rel=1e-5)
    same = torch.ones(4, 8)  # every image the same feature: the distance is 0, the loss log(1 / eps)
    assert float(koleo_loss(same)) == pytest.approx(-math.log(1e-8), rel=1e-4)
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.ones(1, 8))


def test_koleo_gradient_spreads_features_that_are_close():
    """A step down the KoLeo gradient moves features that almost coincide apart (the nearest-neighbour distance
    grows), the opposite of the collapse it is there to prevent."""
    g = torch.Generator().manual_seed(0)
    x = (torch.ones(16, 8) + 0.01 * torch.randn(16, 8, generator=g)).requires_grad_(True)
    nn_dist = lambda t: torch.cdist(F.normalize(t, dim=1), F.normalize(t, dim=1)).add(torch.eye(16) * 9).min(1).values
    before = nn_dist(x.detach()).mean()
    koleo_loss(x).backward()
    with torch.no_grad():
        after = nn_dist(x - 0.01 * x.grad).mean()
    assert after > 1.5 * before
