"""Hugging Face transformers ViT / DeiT / ViT-MAE / DINOv2 checkpoints <-> vitkit.

Works on the state dict as ``save_pretrained`` writes it (and the hub holds it),
never on transformers' in-memory module names. Per block ``i`` (HF -> vitkit):

    {p}encoder.layer.i.layernorm_before           -> blocks.i.norm1        (DINOv2: norm1)
    {p}encoder.layer.i.attention.attention.{query,key,value} (D, D) each
                                                  -> blocks.i.attn.qkv     (3D, D), q then k then v
    {p}encoder.layer.i.attention.output.dense     -> blocks.i.attn.proj
    {p}encoder.layer.i.layernorm_after            -> blocks.i.norm2        (DINOv2: norm2)
    {p}encoder.layer.i.intermediate.dense         -> blocks.i.mlp.fc1      (DINOv2: mlp.fc1)
    {p}encoder.layer.i.output.dense               -> blocks.i.mlp.fc2      (DINOv2: mlp.fc2)
    {p}encoder.layer.i.layer_scale{1,2}.lambda1   -> blocks.i.ls{1,2}.gamma (DINOv2 only)

and ``embeddings.{patch_embeddings.projection, cls_token, distillation_token,
position_embeddings}``, ``layernorm`` -> ``norm``, ``classifier`` -> ``head``
(DeiT: ``cls_classifier`` -> ``head``, ``distillation_classifier`` -> ``head_dist``),
ViTModel's ``pooler.dense`` (Linear + tanh on [CLS]) -> ``pre_logits.fc``.
``{p}`` is ``vit.``, ``deit.``, ``dinov2.`` or nothing (a bare ``*Model``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import MAX_DEPTH, MAX_TOKENS_SIDE, MAX_WIDTH, ViTConfig
from .checks import check_state, need

MODEL_TYPES = ("vit", "deit", "vit_mae", "dinov2")
ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
PREFIXES = ("vit.", "deit.", "dinov2.")
# parts of a checkpoint that are not the encoder/classifier and are deliberately left out
IGNORABLE = re.compile(r"^(decoder\.|embeddings\.mask_token$)")


def _int_field(cfg: dict, key: str, lo: int, hi: int, file: str, default: Any = None) -> int:
    v = cfg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{file}: field {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def config_from_hf(cfg: dict[str, Any], file: str) -> tuple[ViTConfig, list[str] | None]:
    """(ViTConfig, class names) of a transformers ``config.json`` (already parsed); refuses anything that would run code
    (``auto_map``), unknown model types and absurd sizes, before any tensor is allocated."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: a transformers config must be a JSON object")
    if "auto_map" in cfg:
        raise ValueError(f"{file}: has 'auto_map' (custom code from the hub); vitkit never imports code from a "
                         "checkpoint, and only reads the built-in ViT, DeiT, ViT-MAE and DINOv2 layouts")
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"{file}: model_type {mt!r} is not one vitkit reads; accepted: {MODEL_TYPES}")
    width = _int_field(cfg, "hidden_size", 1, MAX_WIDTH, file, 768)
    depth = _int_field(cfg, "num_hidden_layers", 1, MAX_DEPTH, file, 12)
    heads = _int_field(cfg, "num_attention_heads", 1, width, file, 12)
    patch = _int_field(cfg, "patch_size", 1, 4096, file, 16)
    channels = _int_field(cfg, "num_channels", 1, 4096, file, 3)
    size = cfg.get("image_size", 224)
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else None
    if hw is None or len(hw) != 2 or not all(isinstance(s, int) and 1 <= s <= MAX_TOKENS_SIDE * patch for s in hw):
        raise ValueError(f"{file}: field 'image_size' must be an int or [H, W] of at most "
                         f"{MAX_TOKENS_SIDE} patches a side, got {size!r}")
    if mt == "dinov2":
        if cfg.get("use_swiglu_ffn"):
            raise ValueError(f"{file}: DINOv2 with a SwiGLU MLP (use_swiglu_ffn) is not a plain ViT; not supported")
        ratio = cfg.get("mlp_ratio", 4)
        if not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
            raise ValueError(f"{file}: field 'mlp_ratio' must be in (0, 64], got {ratio!r}")
    else:
        mlp = _int_field(cfg, "intermediate_size", 1, 64 * width, file, 4 * width)
        ratio = mlp / width
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTS:
        raise ValueError(f"{file}: hidden_act {act!r} is not supported; accepted: {sorted(ACTS)}")
    eps = cfg.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"{file}: field 'layer_norm_eps' must be in (0, 1), got {eps!r}")
    labels = None
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            by_index = {int(k): str(v) for k, v in id2label.items()}
        except (ValueError, TypeError):
            raise ValueError(f"{file}: 'id2label' keys must be integers") from None
        # names only when they cover classes 0..n-1: sorting {0, 1, 5} would give class 2 the name of class 5
        labels = [by_index[i] for i in range(len(by_index))] if set(by_index) == set(range(len(by_index))) else None
    try:
        return ViTConfig(image_size=hw, patch_size=patch, channels=channels, width=width, depth=depth, heads=heads,
                         mlp_ratio=ratio, qkv_bias=bool(cfg.get("qkv_bias", True)), distilled=mt == "deit",
                         layer_scale_init=float(cfg.get("layerscale_value", 1.0)) if mt == "dinov2" else None,
                         norm_eps=float(eps), act=ACTS[act], num_classes=0, labels=None), labels
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


def hf_to_vitkit(state: dict[str, torch.Tensor], hf_cfg: dict[str, Any], file: str
                 ) -> tuple[ViTConfig, dict[str, torch.Tensor], list[str]]:
    """(config, our state dict, ignored keys) from a transformers state dict and its config.json."""
    cfg, labels = config_from_hf(hf_cfg, file)
    mt = hf_cfg["model_type"]
    # the encoder's prefix: 'vit.' etc. in *ForImageClassification / *ForPreTraining, none in a bare *Model
    p = next((pre for pre in PREFIXES if f"{pre}embeddings.cls_token" in state), "")
    if f"{p}embeddings.cls_token" not in state:
        raise ValueError(f"{file}: no 'embeddings.cls_token' (with or without a {PREFIXES} prefix); "
                         "not a transformers ViT state dict")
    src = {k[len(p):] if k.startswith(p) else k: v for k, v in state.items()}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return need(src, key, file)

    out: dict[str, torch.Tensor] = {}
    out["patch_embed.proj.weight"] = take("embeddings.patch_embeddings.projection.weight")  # (D, C, P, P)
    out["patch_embed.proj.bias"] = take("embeddings.patch_embeddings.projection.bias")
    out["cls_token"] = take("embeddings.cls_token")  # (1, 1, D)
    if mt == "deit":
        out["dist_token"] = take("embeddings.distillation_token")
    out["pos_embed"] = take("embeddings.position_embeddings")  # (1, prefix + N, D)
    dino = mt == "dinov2"
    for i in range(cfg.depth):
        a, b = f"encoder.layer.{i}.", f"blocks.{i}."
        names = (("norm1", "norm2", "mlp.fc1", "mlp.fc2") if dino else
                 ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense"))
        for theirs, ours in zip(names, ("norm1", "norm2", "mlp.fc1", "mlp.fc2")):
            for t in ("weight", "bias"):
                out[f"{b}{ours}.{t}"] = take(f"{a}{theirs}.{t}")
        q, k, v = (f"{a}attention.attention.{n}" for n in ("query", "key", "value"))
        out[f"{b}attn.qkv.weight"] = torch.cat([take(f"{q}.weight"), take(f"{k}.weight"), take(f"{v}.weight")])
        if cfg.qkv_bias:
            out[f"{b}attn.qkv.bias"] = torch.cat([take(f"{q}.bias"), take(f"{k}.bias"), take(f"{v}.bias")])
        out[f"{b}attn.proj.weight"] = take(f"{a}attention.output.dense.weight")
        out[f"{b}attn.proj.bias"] = take(f"{a}attention.output.dense.bias")
        if dino:
            out[f"{b}ls1.gamma"] = take(f"{a}layer_scale1.lambda1")
            out[f"{b}ls2.gamma"] = take(f"{a}layer_scale2.lambda1")
    out["norm.weight"], out["norm.bias"] = take("layernorm.weight"), take("layernorm.bias")

    # the head: which one the file has decides the model's
    if "classifier.weight" in src and mt == "deit":
        raise ValueError(f"{file}: DeiTForImageClassification (a distillation token but one classifier on [CLS]) "
                         "has no vitkit equivalent (vitkit's distilled models average two heads); "
                         "use DeiTForImageClassificationWithTeacher or DeiTModel weights")
    if "classifier.weight" in src and mt == "dinov2":
        raise ValueError(f"{file}: Dinov2ForImageClassification's classifier reads [CLS] and the mean of the "
                         "patch tokens together; vitkit reads DINOv2 encoders (Dinov2Model) only")
    heads = {"classifier": "head"} if mt != "deit" else {"cls_classifier": "head",
                                                         "distillation_classifier": "head_dist"}
    first = next(iter(heads))
    if f"{first}.weight" in src:
        for theirs, ours in heads.items():
            out[f"{ours}.weight"], out[f"{ours}.bias"] = take(f"{theirs}.weight"), take(f"{theirs}.bias")
        cfg = cfg.replace(num_classes=out["head.weight"].shape[0])
        if labels is not None and len(labels) == cfg.num_classes:
            cfg = cfg.replace(labels=labels)
    elif "pooler.dense.weight" in src and mt in ("vit", "deit"):
        # ViTModel's pooler: tanh(Linear([CLS] after the final norm)) == vitkit's pre-logits layer
        out["pre_logits.fc.weight"], out["pre_logits.fc.bias"] = take("pooler.dense.weight"), take("pooler.dense.bias")
        cfg = cfg.replace(representation_size=out["pre_logits.fc.weight"].shape[0])
    # transformers' classifiers never read the pooler; a file holding both keeps it unused
    ignorable = (lambda k: IGNORABLE.match(k) or k.startswith("pooler.")) if "head.weight" in out else IGNORABLE.match
    ignored = sorted(k for k in src if k not in used and ignorable(k))
    unexpected = sorted(k for k in src if k not in used and k not in ignored)
    if unexpected:
        raise ValueError(f"{file}: tensors vitkit does not know how to place: {unexpected[:30]}"
                         f"{' ...' if len(unexpected) > 30 else ''}")
    check_state(out, cfg, file)
    return cfg, out, ignored


def vitkit_to_hf(state: dict[str, torch.Tensor], cfg: ViTConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict as ``save_pretrained`` writes it, config.json dict) for ViTForImageClassification /
    ViTModel, or DeiTForImageClassificationWithTeacher / DeiTModel for distilled models."""
    problems = []
    if not cfg.class_token or cfg.pooling != "cls":
        problems.append("pooling other than the [CLS] token")
    if cfg.reg_tokens:
        problems.append("register tokens")
    if cfg.layer_scale_init is not None:
        problems.append("LayerScale")
    if cfg.use_fc_norm:
        problems.append("fc_norm")
    if cfg.pos_embed != "learned" or not cfg.pos_embed_prefix:
        problems.append("a position embedding that is not learned or has no row for the prefix tokens")
    if not cfg.patch_bias:
        problems.append("no patch-embedding bias")
    if cfg.qkv_bias_parts == "qv":
        problems.append("q and v biases without a k bias")
    if cfg.qk_norm:
        problems.append("qk-norm")
    if cfg.representation_size and (cfg.num_classes or cfg.distilled or cfg.representation_size != cfg.width):
        problems.append("a pre-logits layer with a classifier (only a bare ViTModel's width x width pooler "
                        "can hold one)")
    if problems:
        raise ValueError("transformers' ViT/DeiT cannot express this model: it has "
                         + "; ".join(problems) + ". Save it as vitkit or timm instead.")
    deit = cfg.distilled
    p = ("deit." if deit else "vit.") if cfg.num_classes else ""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, t: torch.Tensor) -> None:
        out[key] = t.detach().cpu().contiguous()

    put(f"{p}embeddings.patch_embeddings.projection.weight", state["patch_embed.proj.weight"])
    put(f"{p}embeddings.patch_embeddings.projection.bias", state["patch_embed.proj.bias"])
    put(f"{p}embeddings.cls_token", state["cls_token"])
    if deit:
        put(f"{p}embeddings.distillation_token", state["dist_token"])
    put(f"{p}embeddings.position_embeddings", state["pos_embed"])
    d = cfg.width
    for i in range(cfg.depth):
        a, b = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                             ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
                             ("attn.proj", "attention.output.dense")):
            put(f"{a}{theirs}.weight", state[f"{b}{ours}.weight"])
            put(f"{a}{theirs}.bias", state[f"{b}{ours}.bias"])
        w = state[f"{b}attn.qkv.weight"]  # (3D, D): rows q, then k, then v
        for j, n in enumerate(("query", "key", "value")):
            put(f"{a}attention.attention.{n}.weight", w[j * d:(j + 1) * d])
            if cfg.qkv_bias:
                put(f"{a}attention.attention.{n}.bias", state[f"{b}attn.qkv.bias"][j * d:(j + 1) * d])
    put(f"{p}layernorm.weight", state["norm.weight"])
    put(f"{p}layernorm.bias", state["norm.bias"])
    if cfg.num_classes:
        heads = {"head": "cls_classifier", "head_dist": "distillation_classifier"} if deit else {"head": "classifier"}
        for ours, theirs in heads.items():
            put(f"{theirs}.weight", state[f"{ours}.weight"])
            put(f"{theirs}.bias", state[f"{ours}.bias"])
    elif cfg.representation_size:
        put("pooler.dense.weight", state["pre_logits.fc.weight"])
        put("pooler.dense.bias", state["pre_logits.fc.bias"])
    arch = (("DeiTForImageClassificationWithTeacher" if deit else "ViTForImageClassification") if cfg.num_classes
            else ("DeiTModel" if deit else "ViTModel"))
    h, w_ = cfg.image_hw
    hf: dict[str, Any] = dict(
        architectures=[arch], model_type="deit" if deit else "vit", hidden_size=d, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.act], hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps, image_size=h if h == w_ else [h, w_],
        patch_size=cfg.patch_size, num_channels=cfg.channels, qkv_bias=cfg.qkv_bias, encoder_stride=cfg.patch_size,
        initializer_range=0.02, dtype="float32",
    )
    if cfg.num_classes:
        names = cfg.labels or [f"LABEL_{i}" for i in range(cfg.num_classes)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    return out, hf
