"""transformers' ``ViTMAEForPreTraining`` <-> vitkit's :class:`~vitkit.ssl.mae.MAE`: encoder and decoder.

The encoder (``vit.``) goes through :mod:`vitkit.weights.convert_hf` (model_type ``vit_mae``), as
``vitkit.load`` reads it. The decoder, per file key (HF -> vitkit MAE's state dict):

    decoder.decoder_embed.{weight,bias}          -> decoder_embed.{weight,bias}       (Dd, D), (Dd,)
    decoder.mask_token (1, 1, Dd)                -> mask_token
    decoder.decoder_pos_embed (1, 1 + N, Dd)     -> decoder_pos_embed                 (a fixed buffer, as stored)
    decoder.decoder_layers.i.  (the hub's files, transformers 4)  or
    decoder.decoder_encoder.layer.i.  (what transformers 5's save_pretrained writes), then
        layernorm_before                         -> decoder_blocks.i.norm1
        attention.attention.{query,key,value} (Dd, Dd) each
                                                 -> decoder_blocks.i.attn.qkv         (3Dd, Dd), q then k then v
        attention.output.dense                   -> decoder_blocks.i.attn.proj
        layernorm_after                          -> decoder_blocks.i.norm2
        intermediate.dense                       -> decoder_blocks.i.mlp.fc1
        output.dense                             -> decoder_blocks.i.mlp.fc2
    decoder.decoder_norm.{weight,bias}           -> decoder_norm.{weight,bias}
    decoder.decoder_pred.{weight,bias}           -> decoder_pred.{weight,bias}        (P*P*C, Dd)

and config.json's ``decoder_hidden_size``, ``decoder_num_hidden_layers``, ``decoder_num_attention_heads``,
``decoder_intermediate_size``, ``mask_ratio``, ``norm_pix_loss``, ``layer_norm_eps`` (encoder and decoder
alike). Files are written in the hub's layout (``decoder.decoder_layers.i.``), which every transformers reads.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import MAX_DEPTH, MAX_WIDTH, ViTConfig
from ..models.vit import VisionTransformer
from ..ssl.mae import MAE, mae_sincos_pos_embed
from .checks import need
from .convert_hf import _hf_problems, _int_field, config_from_hf, hf_to_vitkit, put_split_qkv, vitkit_to_hf

ENCODER_PREFIX = "vit."
# the decoder blocks' two layouts: the hub's (transformers 4, MAE's conversion), and transformers 5's save_pretrained
# (its in-memory rename encoder.layer -> layers, reversed on save, turns decoder_layers into decoder_encoder.layer)
BLOCK_LAYOUTS = ("decoder.decoder_layers.{i}.", "decoder.decoder_encoder.layer.{i}.")
BLOCK_RENAMES = (("layernorm_before", "norm1"), ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                 ("output.dense", "mlp.fc2"), ("attention.output.dense", "attn.proj"))
TOP_RENAMES = (("decoder.decoder_embed", "decoder_embed"), ("decoder.decoder_norm", "decoder_norm"),
               ("decoder.decoder_pred", "decoder_pred"))


def mae_settings_from_hf(cfg: dict[str, Any], file: str) -> dict[str, Any]:
    """The :class:`MAE` keyword arguments of a ``ViTMAEConfig`` (config.json, parsed): decoder sizes, mask ratio,
    norm_pix_loss, the decoder's LayerNorm eps (transformers' one ``layer_norm_eps``)."""
    if not isinstance(cfg, dict) or cfg.get("model_type") != "vit_mae":
        got = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{file}: model_type {got!r}; an MAE with its decoder is transformers' 'vit_mae' "
                         "(ViTMAEForPreTraining)")
    width = _int_field(cfg, "decoder_hidden_size", 1, MAX_WIDTH, file, 512)
    depth = _int_field(cfg, "decoder_num_hidden_layers", 1, MAX_DEPTH, file, 8)
    heads = _int_field(cfg, "decoder_num_attention_heads", 1, width, file, 16)
    mlp = _int_field(cfg, "decoder_intermediate_size", 1, 64 * width, file, 2048)
    ratio = cfg.get("mask_ratio", 0.75)
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio < 1:
        raise ValueError(f"{file}: field 'mask_ratio' must be a number in [0, 1), got {ratio!r}")
    npl = cfg.get("norm_pix_loss", False)
    if not isinstance(npl, bool):
        raise ValueError(f"{file}: field 'norm_pix_loss' must be true or false, got {npl!r}")
    eps = cfg.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"{file}: field 'layer_norm_eps' must be in (0, 1), got {eps!r}")
    return dict(decoder_width=width, decoder_depth=depth, decoder_heads=heads, decoder_mlp_ratio=mlp / width,
                mask_ratio=float(ratio), norm_pix_loss=npl, decoder_norm_eps=float(eps))


def expected_decoder_shapes(enc_cfg: ViTConfig, settings: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the decoder part of ``MAE(VisionTransformer(enc_cfg), **settings)``'s state dict, read off
    one built on the meta device (no memory, no initialisation; no second shape formula)."""
    with torch.device("meta"):
        mae = MAE(VisionTransformer(enc_cfg), **settings)
    return {k: tuple(v.shape) for k, v in mae.state_dict().items() if not k.startswith("encoder.")}


def hf_mae_to_vitkit(state: dict[str, torch.Tensor], hf_cfg: dict[str, Any], file: str
                     ) -> tuple[ViTConfig, dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(encoder config, encoder state dict, MAE keyword arguments, the MAE's decoder state dict) from a
    ``ViTMAEForPreTraining`` state dict (as ``save_pretrained`` writes it) and its config.json. Every key of the
    file is placed (an unknown one is an error), every shape is checked."""
    settings = mae_settings_from_hf(hf_cfg, file)
    decoder = {k: v for k, v in state.items() if k.startswith("decoder.")}
    if not decoder:
        raise ValueError(f"{file}: no 'decoder.' tensors: a ViTMAEModel (the encoder alone); vitkit.load reads it as "
                         "a plain model, an MAE needs ViTMAEForPreTraining's decoder")
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        raise ValueError(f"{file}: no '{ENCODER_PREFIX}' tensors: not a ViTMAEForPreTraining state dict")
    enc_cfg, enc_state, ignored = hf_to_vitkit({k: v for k, v in state.items() if k not in decoder}, hf_cfg, file)
    if ignored:
        raise ValueError(f"{file}: encoder tensors an MAE does not use: {ignored[:12]}")
    if enc_cfg.num_classes or enc_cfg.representation_size:
        raise ValueError(f"{file}: a classifier or pooler beside an MAE decoder; not a ViTMAEForPreTraining")

    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return need(decoder, key, file)

    out: dict[str, torch.Tensor] = {}
    for theirs, ours in TOP_RENAMES:
        for t in ("weight", "bias"):
            out[f"{ours}.{t}"] = take(f"{theirs}.{t}")
    out["mask_token"] = take("decoder.mask_token")  # (1, 1, Dd)
    out["decoder_pos_embed"] = take("decoder.decoder_pos_embed")  # (1, 1 + N, Dd), row 0 for [CLS]
    layouts = [lay for lay in BLOCK_LAYOUTS if any(k.startswith(lay.format(i=0)) for k in decoder)]
    if len(layouts) != 1:
        raise ValueError(f"{file}: decoder blocks {'in both layouts ' if layouts else 'not found; looked for '}"
                         f"{[lay.format(i='N') for lay in BLOCK_LAYOUTS]}")
    for i in range(settings["decoder_depth"]):
        a, b = layouts[0].format(i=i), f"decoder_blocks.{i}."
        for theirs, ours in BLOCK_RENAMES:
            for t in ("weight", "bias"):
                out[f"{b}{ours}.{t}"] = take(f"{a}{theirs}.{t}")
        q, k, v = (f"{a}attention.attention.{n}" for n in ("query", "key", "value"))
        out[f"{b}attn.qkv.weight"] = torch.cat([take(f"{q}.weight"), take(f"{k}.weight"), take(f"{v}.weight")])
        if enc_cfg.qkv_bias_parts == "qkv":  # transformers' one qkv_bias for encoder and decoder
            out[f"{b}attn.qkv.bias"] = torch.cat([take(f"{q}.bias"), take(f"{k}.bias"), take(f"{v}.bias")])
    unexpected = sorted(set(decoder) - used)
    if unexpected:
        raise ValueError(f"{file}: decoder tensors vitkit does not know how to place: {unexpected[:30]}"
                         f"{' ...' if len(unexpected) > 30 else ''}")
    want = expected_decoder_shapes(enc_cfg, settings)
    missing, extra = sorted(set(want) - set(out)), sorted(set(out) - set(want))
    wrong = sorted(f"{k}: file {tuple(out[k].shape)} != model {want[k]}" for k in set(want) & set(out)
                   if tuple(out[k].shape) != want[k])
    if missing or extra or wrong:
        raise ValueError(f"{file}: the decoder does not fit its config: missing {missing[:12]}, unexpected "
                         f"{extra[:12]}, wrong shapes {wrong[:12]}")
    return enc_cfg, enc_state, settings, out


def vitkit_mae_to_hf(mae: MAE) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict as ``ViTMAEForPreTraining.save_pretrained`` writes it, in the hub's layout; config.json dict)
    of ``mae``. Raises ValueError, before anything is built, for what transformers' ViTMAE cannot express."""
    enc = mae.encoder
    cfg = enc.cfg.replace(num_classes=0, labels=None)  # an encoder's head has no place in a ViTMAEForPreTraining
    h, w_ = cfg.image_hw
    dcfg = mae.decoder_cfg
    problems = _hf_problems(cfg) + [why for bad, why in (
        (cfg.distilled, "a distillation token"), (cfg.representation_size, "a pre-logits layer"),
        (h != w_, f"a {h}x{w_} image (ViTMAE's sin-cos positions are for square grids)"),
        (dcfg.norm_eps != cfg.norm_eps, f"a decoder LayerNorm eps {dcfg.norm_eps} other than the encoder's "
                                        f"{cfg.norm_eps} (transformers has one layer_norm_eps)"),
        (not isinstance(mae.latent_norm, torch.nn.Identity), "a norm of the latent that is not the encoder's")) if bad]
    if problems:
        raise ValueError("transformers' ViTMAEForPreTraining cannot express this MAE: it has " + "; ".join(problems)
                         + ". Save the encoder alone (vitkit.save) instead.")
    enc_state = {k: v for k, v in enc.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    bare, _ = vitkit_to_hf(enc_state, cfg)  # a ViTModel's keys, no prefix
    out = {f"{ENCODER_PREFIX}{k}": v for k, v in bare.items()}
    state = mae.state_dict()
    dd = dcfg.width

    def put(key: str, t: torch.Tensor) -> None:
        out[key] = t.detach().cpu().contiguous()

    for theirs, ours in TOP_RENAMES:
        for t in ("weight", "bias"):
            put(f"{theirs}.{t}", state[f"{ours}.{t}"])
    put("decoder.mask_token", state["mask_token"])
    put("decoder.decoder_pos_embed", state["decoder_pos_embed"])
    for i in range(dcfg.depth):
        a, b = BLOCK_LAYOUTS[0].format(i=i), f"decoder_blocks.{i}."
        for theirs, ours in BLOCK_RENAMES:
            for t in ("weight", "bias"):
                put(f"{a}{theirs}.{t}", state[f"{b}{ours}.{t}"])
        put_split_qkv(put, a, state, b, dd, dcfg.qkv_bias_parts)
    hf: dict[str, Any] = dict(
        architectures=["ViTMAEForPreTraining"], model_type="vit_mae", hidden_size=cfg.width,
        num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.act], hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=cfg.norm_eps, image_size=h,
        patch_size=cfg.patch_size, num_channels=cfg.channels, qkv_bias=bool(cfg.qkv_bias),
        decoder_hidden_size=dd, decoder_num_hidden_layers=dcfg.depth, decoder_num_attention_heads=dcfg.heads,
        decoder_intermediate_size=dcfg.mlp_dim, mask_ratio=mae.mask_ratio, norm_pix_loss=mae.norm_pix_loss,
        dtype="float32")
    config_from_hf(hf, "vitkit_mae_to_hf")  # what is written reads back
    return out, hf


def sincos_deviation(decoder_pos_embed: torch.Tensor, grid: tuple[int, int], prefix: int) -> float:
    """How far a stored decoder position embedding is from MAE's sin-cos (max |difference|): transformers 5
    leaves a fresh ViTMAEForPreTraining's at zero, for one."""
    ref = mae_sincos_pos_embed(grid, decoder_pos_embed.shape[-1], prefix)
    return (decoder_pos_embed.float().cpu() - ref).abs().max().item()
