"""MAE (He et al. 2021): masking, loss, the encoder on visible tokens, and parity with transformers' ViTMAE."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

import vitkit
from vitkit.ssl import MAE, mae_sincos_pos_embed, random_masking, read_hf_mae, save_reconstruction_png, write_hf_mae

from helpers import tiny_cfg
from weights_helpers import mae_same_outputs, max_diff

HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                decoder_intermediate_size=32)
DEC = dict(decoder_width=16, decoder_depth=1, decoder_heads=2)


def _x(seed=0, b=2, c=3, size=32):
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def _noise(seed=0, b=2, n=16):
    return torch.rand(b, n, generator=torch.Generator().manual_seed(seed))


def _mae(**kw):
    enc_kw = {k: kw.pop(k) for k in list(kw) if k not in ("decoder_width", "decoder_depth", "decoder_heads",
                                                          "mask_ratio", "norm_pix_loss", "decoder_norm_eps")}
    enc = vitkit.create_model(tiny_cfg(num_classes=0, **enc_kw))
    return MAE(enc, **{**DEC, **kw})


# --- masking ------------------------------------------------------------------------------

@pytest.mark.parametrize("n,ratio", [(16, 0.75), (16, 0.5), (49, 0.75), (10, 0.33), (16, 0.0)])
def test_masking_keeps_the_configured_count_and_ids_restore_unshuffles(n, ratio):
    x = torch.randn(3, n, 5)
    noise = _noise(1, 3, n)
    kept, mask, ids_restore = random_masking(x, ratio, noise)
    keep = int(n * (1 - ratio))
    assert kept.shape == (3, keep, 5) and mask.shape == (3, n) and mask.dtype == torch.float32
    assert mask.sum(dim=1).tolist() == [n - keep] * 3  # the same count in every sample
    # the kept tokens are the patches of smallest noise, in rising noise order, and exactly where mask == 0
    order = noise.argsort(dim=1)[:, :keep]
    assert torch.equal(kept, torch.gather(x, 1, order[..., None].expand(-1, -1, 5)))
    for b in range(3):
        assert set(torch.nonzero(mask[b] == 0).flatten().tolist()) == set(order[b].tolist())
    # un-shuffling: kept tokens followed by the masked ones (in shuffled order), gathered back, are x itself
    rest = torch.gather(x, 1, noise.argsort(dim=1)[:, keep:, None].expand(-1, -1, 5))
    back = torch.gather(torch.cat([kept, rest], dim=1), 1, ids_restore[..., None].expand(-1, -1, 5))
    assert torch.equal(back, x)


def test_masking_draws_per_sample_and_from_the_generator_only():
    x = torch.randn(4, 16, 3)
    state = torch.get_rng_state()
    _, m1, _ = random_masking(x, 0.75, generator=torch.Generator().manual_seed(5))
    _, m2, _ = random_masking(x, 0.75, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    assert torch.equal(m1, m2)
    assert len({tuple(r.tolist()) for r in m1}) > 1  # each sample gets its own mask


@pytest.mark.parametrize("ratio", [1.0, -0.1, 0.99, True])
def test_masking_refuses_a_ratio_that_keeps_nothing_or_is_not_a_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.randn(1, 16, 2), ratio)


def test_masking_refuses_noise_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"noise must be \(batch, patches\) = \(2, 16\)"):
        random_masking(torch.randn(2, 16, 2), 0.75, torch.rand(2, 15))


# --- the loss -------------------------------------------------------------------------------

def test_loss_counts_masked_patches_only():
    mae = _mae().eval()
    x = _x()
    with torch.no_grad():
        loss, pred, mask = mae(x, noise=_noise())
        target = mae.patchify(x)
        assert torch.allclose(loss, (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum(), atol=0, rtol=1e-6)
        visible = torch.nonzero(mask[0] == 0)[0, 0]
        masked = torch.nonzero(mask[0] == 1)[0, 0]
        changed = pred.clone()
        changed[0, visible] += 10.0
        assert torch.equal(mae.forward_loss(x, changed, mask), loss)
        changed = pred.clone()
        changed[0, masked] += 10.0
        assert mae.forward_loss(x, changed, mask) > loss + 1


def test_norm_pix_loss_follows_its_formula():
    mae = _mae(norm_pix_loss=True).eval()
    x = _x(3) * 2 + 1
    with torch.no_grad():
        loss, pred, mask = mae(x, noise=_noise(3))
    t = mae.patchify(x)
    n = t.shape[-1]
    mean = t.sum(-1, keepdim=True) / n
    var = ((t - mean) ** 2).sum(-1, keepdim=True) / (n - 1)  # unbiased, as MAE's .var()
    t = (t - mean) / torch.sqrt(var + 1e-6)
    want = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss, want, rtol=1e-5)
    with torch.no_grad():
        mae.norm_pix_loss = False
        assert not torch.allclose(mae.forward_loss(x, pred, mask), want, rtol=1e-2)


def test_a_ratio_that_masks_nothing_is_refused_by_the_loss():
    with pytest.raises(ValueError, match="masks none of 16 patches"):
        _mae()(_x(), mask_ratio=0.0)


# --- the encoder on visible tokens -----------------------------------------------------------

@pytest.mark.parametrize("kw,prefix", [({}, 1), (dict(pooling="gap", class_token=False), 0),
                                       (dict(reg_tokens=2, pos_embed_prefix=False), 3), (dict(distilled=True), 2),
                                       (dict(pos_embed="sincos2d"), 1)])
def test_encoder_sees_only_visible_tokens(kw, prefix):
    mae = _mae(**kw)
    seen = []
    mae.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    loss, pred, mask = mae(_x(), noise=_noise())
    assert seen == [(2, prefix + 4, 32)]  # 16 patches, 75 % masked: 4 visible + the prefix tokens
    assert pred.shape == (2, 16, 8 * 8 * 3) and mask.shape == (2, 16) and loss.ndim == 0


def test_visible_tokens_are_what_the_full_encoder_computes_for_them():
    """The embedding stages are the encoder's own: without masking, the MAE's encoder is forward_features."""
    mae = _mae(reg_tokens=1).eval()
    x = _x(2)
    keep_order = torch.arange(16, dtype=torch.float32).expand(2, 16)
    with torch.no_grad():
        latent, mask, _, _ = mae.forward_encoder(x, 0.0, keep_order)
        assert mask.sum() == 0
        assert torch.equal(latent, mae.encoder.forward_features(x))


@pytest.mark.parametrize("kw", [{}, dict(pooling="gap", class_token=False)])
def test_gradients_reach_encoder_and_decoder(kw):
    mae = _mae(**kw).train()
    loss, _, _ = mae(_x(), noise=_noise())
    loss.backward()
    for name in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
                 "encoder.blocks.1.mlp.fc2.weight", "decoder_embed.weight", "mask_token", "decoder_blocks.0.attn.qkv.weight", "decoder_pred.weight"):
        g = dict(mae.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    if kw:  # mean-pooled encoder: no final norm of its own (fc_norm), the MAE's latent norm takes its place
        assert mae.latent_norm.weight.grad.abs().sum() > 0
    else:
        assert mae.encoder.cls_token.grad.abs().sum() > 0


def test_grad_checkpointing_changes_nothing():
    mae = _mae().train()
    x, noise = _x(), _noise()
    loss, _, _ = mae(x, noise=noise)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in mae.named_parameters()}
    mae.zero_grad()
    mae.set_grad_checkpointing(True)
    loss2, _, _ = mae(x, noise=noise)
    loss2.backward()
    assert torch.equal(loss, loss2)
    assert all(torch.allclose(grads[n], p.grad, atol=1e-7) for n, p in mae.named_parameters())


def test_same_generator_noise_gives_the_same_step():
    mae = _mae().eval()
    x = _x()
    with torch.no_grad():
        a = mae(x, noise=mae.noise_for(x, torch.Generator().manual_seed(7)))
        b = mae(x, noise=mae.noise_for(x, torch.Generator().manual_seed(7)))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_patchify_and_unpatchify_are_inverse_and_in_maes_order():
    mae = _mae()
    x = _x(4)
    p = mae.patchify(x)
    assert p.shape == (2, 16, 192)
    assert torch.equal(p[1, 5].reshape(8, 8, 3), x[1, :, 8:16, 8:16].permute(1, 2, 0))  # patch (row 1, col 1)
    assert torch.equal(mae.unpatchify(p), x)
    wide = torch.randn(1, 3, 16, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(wide), grid=(2, 4)), wide)


def test_decoder_settings_and_eps_are_configurable():
    mae = _mae(decoder_norm_eps=1e-12, decoder_width=24, decoder_depth=2, decoder_heads=3)
    assert mae.decoder_norm.eps == 1e-12 and mae.decoder_blocks[1].norm1.eps == 1e-12
    assert len(mae.decoder_blocks) == 2 and mae.decoder_blocks[0].attn.heads == 3
    assert mae.decoder_pos_embed.shape == (1, 17, 24)
    assert _mae().decoder_norm.eps == 1e-6  # the encoder's
    with pytest.raises(ValueError, match="MAE decoder.*not divisible by heads"):
        _mae(decoder_width=20, decoder_heads=3)


def test_encoders_mae_cannot_wrap_are_refused():
    beit = vitkit.create_model(tiny_cfg(num_classes=0, rel_pos="per_block", qkv_bias="qv", pos_embed="none"))
    with pytest.raises(ValueError, match="relative position"):
        MAE(beit, **DEC)
    with pytest.raises(ValueError, match="VisionTransformer"):
        MAE(torch.nn.Linear(2, 2))


def test_optimiser_groups_skip_decay_on_tokens_positions_and_the_mask_token():
    from vitkit.train.optim import param_groups

    mae = _mae()
    decayed = {n for g in param_groups(mae, 0.05) if g["weight_decay"] for n in g["names"]}
    assert {"encoder.pos_embed", "encoder.cls_token", "mask_token"}.isdisjoint(decayed)
    assert {"encoder.blocks.0.attn.qkv.weight", "decoder_blocks.0.mlp.fc1.weight", "decoder_pred.weight"} <= decayed


def test_init_encoder_fixes_learned_positions_to_maes_sincos():
    mae = _mae()
    mae.init_encoder()
    assert not mae.encoder.pos_embed.requires_grad
    assert torch.equal(mae.encoder.pos_embed.data, mae_sincos_pos_embed((4, 4), 32, prefix=1))


# --- MAE's sin-cos and transformers ---------------------------------------------------------

@pytest.mark.parametrize("grid,dim", [((4, 4), 16), ((3, 5), 32)])
def test_sincos_is_the_layout_of_transformers_vitmae(grid, dim):
    theirs = build_2d_sinusoidal_position_embedding(*grid, embed_dim=dim, cls_token=True)
    theirs = torch.cat([theirs[..., dim // 2:], theirs[..., : dim // 2]], dim=-1)  # ViTMAE's swap into MAE's layout
    assert max_diff(mae_sincos_pos_embed(grid, dim, prefix=1)[0], theirs) <= 1e-7


def _hf_mae(tmp_path, sincos=True, **kw):
    """A randomly initialised ViTMAEForPreTraining saved in tmp_path; the fixed positions set to MAE's sin-cos as
    a real checkpoint has them (random too when ``sincos`` is False)."""
    theirs = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**{**HF_SMALL, **kw})).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        if sincos:
            theirs.vit.embeddings.position_embeddings.copy_(mae_sincos_pos_embed((4, 4), 32, 1))
            theirs.decoder.decoder_pos_embed.copy_(mae_sincos_pos_embed((4, 4), 16, 1))
    theirs.save_pretrained(tmp_path / "hf")
    return theirs


@pytest.mark.parametrize("kw", [{}, dict(norm_pix_loss=True, mask_ratio=0.5, layer_norm_eps=1e-6)])
def test_reads_transformers_vitmae_with_parity(tmp_path, kw):
    theirs = _hf_mae(tmp_path, **kw)
    ours = read_hf_mae(tmp_path / "hf")
    assert ours.mask_ratio == theirs.config.mask_ratio and ours.norm_pix_loss == theirs.config.norm_pix_loss
    assert ours.decoder_norm.eps == theirs.config.layer_norm_eps and ours.load_info["notes"] == []
    assert not ours.encoder.pos_embed.requires_grad  # fixed, as transformers has it
    for seed in (0, 1):
        mae_same_outputs(ours, theirs, _x(seed), _noise(seed))
    with torch.no_grad():  # the encoder on the visible tokens is ViTMAEModel's
        latent = ours.forward_encoder(_x(), noise=_noise())[0]
        assert max_diff(latent, theirs.vit(pixel_values=_x(), noise=_noise()).last_hidden_state) <= 1e-5


def test_decoder_positions_that_are_not_sincos_are_kept_as_stored_and_noted(tmp_path):
    """transformers 5 leaves a fresh ViTMAEForPreTraining's fixed positions at zero; here they are random."""
    theirs = _hf_mae(tmp_path, sincos=False)
    ours = read_hf_mae(tmp_path / "hf")
    assert any("not MAE's sin-cos" in n for n in ours.load_info["notes"])
    assert torch.equal(ours.decoder_pos_embed, theirs.decoder.decoder_pos_embed.data)
    mae_same_outputs(ours, theirs, _x(), _noise())


def test_writes_vitmae_that_transformers_reads_back_with_themae_same_outputs(tmp_path):
    theirs = _hf_mae(tmp_path)
    ours = read_hf_mae(tmp_path / "hf")
    write_hf_mae(ours, tmp_path / "back")
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["model_type"] == "vit_mae" and cfg["architectures"] == ["ViTMAEForPreTraining"]
    assert cfg["decoder_intermediate_size"] == 32 and cfg["layer_norm_eps"] == 1e-12
    again = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "back").eval()
    mae_same_outputs(ours, again, _x(5), _noise(5))
    mae_same_outputs(ours, theirs, _x(5), _noise(5))
    # the hub's decoder layout, written by us, reads back into the same MAE
    assert any(k.startswith("decoder.decoder_layers.0.") for k in load_file(tmp_path / "back" / "model.safetensors"))
    back = read_hf_mae(tmp_path / "back")
    sa, sb = ours.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_vitkit_mae_is_written_for_transformers(tmp_path):
    ours = _mae(norm_eps=1e-6, decoder_width=16, norm_pix_loss=True).eval()
    write_hf_mae(ours, tmp_path / "w")
    theirs = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "w").eval()
    mae_same_outputs(ours, theirs, _x(6), _noise(6))


def test_vitkit_load_of_a_vitmae_folder_is_the_encoder(tmp_path):
    theirs = _hf_mae(tmp_path)
    enc = vitkit.load(tmp_path / "hf")
    assert isinstance(enc, vitkit.VisionTransformer) and enc.cfg.num_classes == 0
    assert all(k.startswith("decoder.") for k in enc.load_info["ignored_keys"])
    mae = read_hf_mae(tmp_path / "hf")
    sa, sb = enc.state_dict(), mae.encoder.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    theirs.config.mask_ratio = 0.0  # ViTMAEModel without masking; rising noise keeps the patch order
    with torch.no_grad():
        ref = theirs.vit(pixel_values=_x(), noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
        assert max_diff(enc.forward_features(_x()), ref) <= 1e-5


def test_what_transformers_cannot_express_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="cannot express this MAE.*pooling other than the \\[CLS\\] token"):
        write_hf_mae(_mae(pooling="gap", class_token=False), tmp_path / "g")
    with pytest.raises(ValueError, match="decoder LayerNorm eps"):
        write_hf_mae(_mae(decoder_norm_eps=1e-12), tmp_path / "e")
    assert not (tmp_path / "g").exists() and not (tmp_path / "e").exists()


def test_a_vitmae_model_without_decoder_is_not_an_mae(tmp_path):
    transformers.ViTMAEModel(transformers.ViTMAEConfig(**HF_SMALL)).save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="no 'decoder.' tensors"):
        read_hf_mae(tmp_path / "enc")


# --- pictures -----------------------------------------------------------------------------------

def test_reconstruction_pastes_visible_patches_and_masks_the_rest():
    mae = _mae().eval()
    x = _x(8)
    masked, recon = mae.reconstruct(x, noise=_noise(8))
    _, _, mask = mae(x, noise=_noise(8))
    m = mae.unpatchify(mask[..., None].expand(-1, -1, 192))
    assert torch.equal(recon * (1 - m), x * (1 - m)) and torch.equal(masked, x * (1 - m))
    assert (recon * m).abs().sum() > 0


@pytest.mark.parametrize("channels", [3, 1])
def test_reconstruction_png_is_written_atomically_and_is_a_png(tmp_path, channels):
    mae = _mae(channels=channels).train()
    x = _x(9, b=3, c=channels)
    state = torch.get_rng_state()
    out = save_reconstruction_png(mae, x, tmp_path / "recon.png", mean=[0.5] * channels, std=[0.25] * channels,
                                  zoom=1, labels=False)
    assert torch.equal(torch.get_rng_state(), state) and mae.training  # RNG and mode left as they were
    assert out == str(tmp_path / "recon.png") and os.listdir(tmp_path) == ["recon.png"]  # no temporary file left
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (3 * 32 + 4 * 2, 3 * 32 + 4 * 2)
        assert im.mode == ("RGB" if channels == 3 else "L")
        top_left = torch.from_numpy(np.asarray(im).copy()).reshape(im.size[1], im.size[0], -1)[2:34, 2:34]
    want = (x[0] * 0.25 + 0.5).clamp(0, 1).mul(255).round().permute(1, 2, 0)  # row 1: the first original
    assert (top_left.float() - want).abs().max() <= 1
    # by default: zoomed so a tile is at least 96 px, the rows named on the left
    big = save_reconstruction_png(mae, x, tmp_path / "big.png", mean=[0.5] * channels, std=[0.25] * channels)
    with Image.open(big) as im:
        assert im.size[1] == 3 * (3 * 32 + 4 * 2) and im.size[0] > 3 * (3 * 32 + 4 * 2)
        assert im.getpixel((2, 2)) == (255 if channels == 1 else (255, 255, 255))  # the label column is white


def test_init_encoder_is_maes_initialisation():
    """MAE.init_encoder (optional, for a fresh encoder): xavier-uniform Linear weights and patch kernel (as a
    Linear), zero biases, unit LayerNorms, prefix tokens N(0, 0.02²), the fixed sin-cos position embedding
    (frozen); the head is left as it was."""
    torch.manual_seed(0)
    enc = vitkit.create_model(tiny_cfg(num_classes=5, width=64, heads=4))
    mae = MAE(enc, **DEC)
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(3.0)  # every value init_encoder must set is then visibly not set by chance
    mae.init_encoder()
    qkv = enc.blocks[0].attn.qkv.weight
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound and abs(float(qkv.mean())) < 0.05 * bound
    w = enc.patch_embed.proj.weight
    fan_in, fan_out = w[0].numel(), w.shape[0]
    assert w.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 and w.abs().max() > 0.9 * (6 / (fan_in + fan_out)) ** 0.5
    assert float(enc.blocks[0].attn.qkv.bias.abs().max()) == 0 and float(enc.patch_embed.proj.bias.abs().max()) == 0
    assert torch.equal(enc.norm.weight, torch.ones_like(enc.norm.weight)) and float(enc.norm.bias.abs().max()) == 0
    assert 0.005 < float(enc.cls_token.std()) < 0.05
    want = mae_sincos_pos_embed(enc.patch_embed.grid_size, 64, enc.pos_prefix)
    assert torch.equal(enc.pos_embed.detach(), want) and not enc.pos_embed.requires_grad
    assert torch.all(enc.head.weight == 3.0)  # the head untouched
    enc2 = vitkit.create_model(tiny_cfg(num_classes=0, width=64, heads=4))
    MAE(enc2, **DEC).init_encoder(fixed_pos_embed=False)
    assert enc2.pos_embed.requires_grad and not torch.equal(enc2.pos_embed.detach(), want)
