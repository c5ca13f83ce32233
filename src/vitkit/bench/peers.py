"""The peers' equivalent of a vitkit model: timm's and transformers' ViT built from the same ViTConfig.

timm and transformers are imported here, inside the functions, only when a
benchmark asks for them; ``import vitkit`` never imports either. Each builder refuses
(ValueError) a config the peer cannot express instead of building a different model.
:func:`copy_weights` loads a vitkit state dict into the peer, so the two compute the
same function and the bench can check their outputs against each other.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..config import ViTConfig

PEER_NAMES = {"timm": "timm", "hf": "transformers"}


def _missing(peer: str, e: ImportError) -> ValueError:
    pkg = PEER_NAMES[peer]
    return ValueError(f"--compare {peer} needs the {pkg!r} package, which is not importable ({e}); "
                      f"pip install {pkg} (or 'vitkit[bench]')")


def build_timm(cfg: ViTConfig) -> nn.Module:
    """timm's VisionTransformer (or VisionTransformerDistilled) with this config's shapes and numerics."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as e:
        raise _missing("timm", e) from None
    why = []
    if cfg.pos_embed == "sincos2d":
        why.append("pos_embed='sincos2d'")
    if cfg.representation_size:
        why.append("representation_size")
    if cfg.patch_bias == cfg.norm_pre:  # timm: a patch bias exactly when there is no norm_pre (CLIP)
        why.append(f"patch_bias={cfg.patch_bias} with norm_pre={cfg.norm_pre}")
    if cfg.qkv_bias_parts == "qv":
        why.append("qkv_bias='qv'")
    if int(cfg.width * cfg.mlp_ratio) != cfg.mlp_dim:
        why.append(f"mlp_ratio={cfg.mlp_ratio} (timm truncates width*ratio, vitkit rounds)")
    if why:
        raise ValueError(f"timm's VisionTransformer cannot express {', '.join(why)}; compare without timm")
    kw = dict(img_size=cfg.image_hw, patch_size=cfg.patch_size, in_chans=cfg.channels, num_classes=cfg.num_classes,
              embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
              qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
              global_pool={"gap": "avg", "map": "map"}.get(cfg.pooling, "token"),
              class_token=cfg.class_token, reg_tokens=cfg.reg_tokens, no_embed_class=not cfg.pos_embed_prefix,
              pos_embed="none" if cfg.pos_embed == "none" else "learn", init_values=cfg.layer_scale_init,
              fc_norm=cfg.fc_norm, drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout,
              attn_drop_rate=cfg.attn_dropout, drop_path_rate=cfg.drop_path,
              norm_layer=functools.partial(nn.LayerNorm, eps=cfg.norm_eps),
              act_layer=functools.partial(nn.GELU, approximate="tanh" if cfg.act == "gelu_tanh" else "none"),
              dynamic_img_size=cfg.dynamic_img_size, dynamic_img_pad=cfg.dynamic_img_pad, pre_norm=cfg.norm_pre)
    if cfg.distilled:
        from timm.models.deit import VisionTransformerDistilled

        return VisionTransformerDistilled(**kw)
    return VisionTransformer(**kw)


def build_hf(cfg: ViTConfig) -> nn.Module:
    """transformers' ViTForImageClassification (SDPA attention) with this config's shapes and numerics."""
    try:
        import transformers
    except ImportError as e:
        raise _missing("hf", e) from None
    why = []
    for bad, name in ((cfg.pooling != "cls", f"pooling={cfg.pooling!r}"), (cfg.norm_pre, "norm_pre"),
                      (cfg.reg_tokens > 0, "register tokens"),
                      (cfg.distilled, "a distillation token"),
                      (cfg.pos_embed != "learned", f"pos_embed={cfg.pos_embed!r}"),
                      (not cfg.pos_embed_prefix, "pos_embed_prefix=False"),
                      (cfg.layer_scale_init is not None, "LayerScale"),
                      (cfg.qkv_bias_parts == "qv", "qkv_bias='qv'"), (cfg.qk_norm, "qk_norm"),
                      (cfg.representation_size, "representation_size"),
                      (cfg.use_fc_norm, "fc_norm"), (not cfg.patch_bias, "patch_bias=False"),
                      (cfg.num_classes == 0, "num_classes=0"), (cfg.dynamic_img_pad, "dynamic_img_pad"),
                      (cfg.drop_path > 0, "drop_path"), (cfg.image_hw[0] != cfg.image_hw[1], "a non-square image")):
        if bad:
            why.append(name)
    if why:
        raise ValueError(f"transformers' ViT cannot express {', '.join(why)}; compare without hf")
    hf_cfg = transformers.ViTConfig(
        hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim, hidden_act="gelu_pytorch_tanh" if cfg.act == "gelu_tanh" else "gelu",
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
        layer_norm_eps=cfg.norm_eps, image_size=cfg.image_hw[0], patch_size=cfg.patch_size,
        num_channels=cfg.channels, qkv_bias=cfg.qkv_bias, num_labels=cfg.num_classes)
    hf_cfg._attn_implementation = "sdpa"
    return HFLogits(transformers.ViTForImageClassification(hf_cfg),
                    interpolate=cfg.dynamic_img_size)


class HFLogits(nn.Module):
    """Calls a transformers image classifier as ``model(pixels) -> logits``, like vitkit and timm."""

    def __init__(self, model: nn.Module, interpolate: bool = False):
        super().__init__()
        self.model = model
        self.interpolate = interpolate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x, interpolate_pos_encoding=self.interpolate).logits


def build_peer(name: str, cfg: ViTConfig) -> nn.Module:
    """The peer's equivalent of ``VisionTransformer(cfg)``: ``"timm"`` or ``"hf"``."""
    if name == "timm":
        return build_timm(cfg)
    if name == "hf":
        return build_hf(cfg)
    raise ValueError(f"unknown peer {name!r}; accepted: {', '.join(PEER_NAMES)}")


# --- weights ----------------------------------------------------------------

def _hf_names(peer_keys: set[str], depth: int) -> dict[str, str]:
    """vitkit key (timm layout) -> transformers in-memory key, for the layout this version uses."""
    m = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
         "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
         "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
         "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
         "head.weight": "classifier.weight", "head.bias": "classifier.bias"}
    v5 = "vit.layers.0.attention.q_proj.weight" in peer_keys  # transformers 5.x renames modules in memory
    for i in range(depth):
        if v5:
            b = f"vit.layers.{i}."
            names = dict(norm1="layernorm_before", norm2="layernorm_after", proj="attention.o_proj",
                         fc1="mlp.fc1", fc2="mlp.fc2", q="attention.q_proj", k="attention.k_proj",
                         v="attention.v_proj")
        else:  # transformers 4.x, and the layout of the files on the hub
            b = f"vit.encoder.layer.{i}."
            names = dict(norm1="layernorm_before", norm2="layernorm_after", proj="attention.output.dense",
                         fc1="intermediate.dense", fc2="output.dense", q="attention.attention.query",
                         k="attention.attention.key", v="attention.attention.value")
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "proj"),
                             ("mlp.fc1", "fc1"), ("mlp.fc2", "fc2")):
            for p in ("weight", "bias"):
                m[f"blocks.{i}.{ours}.{p}"] = b + names[theirs] + "." + p
        for j, part in enumerate("qkv"):
            for p in ("weight", "bias"):
                m[f"blocks.{i}.attn.qkv.{p}#{j}"] = b + names[part] + "." + p
    return m


@torch.no_grad()
def copy_weights(peer_name: str, peer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load vitkit's state dict (timm layout) into the peer built by :func:`build_peer`; strict."""
    if peer_name == "timm":
        peer.load_state_dict(state, strict=True)
        return
    if peer_name != "hf":
        raise ValueError(f"unknown peer {peer_name!r}")
    target = peer.model.state_dict()
    depth = peer.model.config.num_hidden_layers
    names = _hf_names(set(target), depth)
    out = {}
    for ours, theirs in names.items():
        key, _, part = ours.partition("#")
        if key not in state:
            if key.endswith("qkv.bias"):
                continue  # qkv_bias=False
            raise ValueError(f"vitkit state dict has no {key!r} for transformers' {theirs!r}")
        t = state[key]
        if part:  # split the fused qkv (3D, ...) into q, k, v
            t = t.chunk(3, dim=0)[int(part)]
        out[theirs] = t
    missing = sorted(set(target) - set(out))
    extra = sorted(set(out) - set(target))
    if missing or extra:
        raise ValueError(f"cannot map vitkit weights onto transformers' ViT: missing {missing}, unexpected {extra}")
    peer.model.load_state_dict(out, strict=True)
