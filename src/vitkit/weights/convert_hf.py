"""Hugging Face transformers ViT / DeiT / ViT-MAE / DINOv2 / BEiT checkpoints <-> vitkit.

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

BEiT (``beit.``): no key bias (``query.bias``, ``value.bias`` -> ``attn.q_bias``, ``attn.v_bias``),
``lambda_{1,2}`` -> ``ls{1,2}.gamma``, ``attention.attention.relative_position_bias.relative_position_bias_table``
-> ``attn.relative_position_bias_table`` (per layer) or ``encoder.relative_position_bias.`` ->
``rel_pos_bias.`` (shared); mean pooling's ``pooler.layernorm`` -> ``fc_norm``.

and ``embeddings.{patch_embeddings.projection, cls_token, distillation_token,
position_embeddings}``, ``layernorm`` -> ``norm``, ``classifier`` -> ``head``
(DeiT: ``cls_classifier`` -> ``head``, ``distillation_classifier`` -> ``head_dist``),
ViTModel's ``pooler.dense`` (Linear + tanh on [CLS]) -> ``pre_logits.fc``.
``{p}`` is ``vit.``, ``deit.``, ``dinov2.``, ``beit.`` or nothing (a bare ``*Model``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import MAX_DEPTH, MAX_TOKENS_SIDE, MAX_WIDTH, ViTConfig
from .checks import check_state, need, refuse_unbuilt_family

MODEL_TYPES = ("vit", "deit", "vit_mae", "dinov2", "beit")
ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
PREFIXES = ("vit.", "deit.", "dinov2.", "beit.")
# parts of a checkpoint that are not the encoder/classifier and are deliberately left out (BEiT's index: derived)
IGNORABLE = re.compile(r"^(decoder\.|embeddings\.mask_token$)|(^|\.)relative_position_index$")
REL_TABLE = "relative_position_bias.relative_position_bias_table"


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
                         "checkpoint, and only reads the built-in ViT, DeiT, ViT-MAE, DINOv2 and BEiT layouts")
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"{file}: model_type {mt!r} is not one vitkit reads; accepted: {MODEL_TYPES}")
    # a field config.json leaves out takes the value transformers' config class gives it (DINOv2's differ)
    dino = mt == "dinov2"
    width = _int_field(cfg, "hidden_size", 1, MAX_WIDTH, file, 768)
    depth = _int_field(cfg, "num_hidden_layers", 1, MAX_DEPTH, file, 12)
    heads = _int_field(cfg, "num_attention_heads", 1, width, file, 12)
    patch = _int_field(cfg, "patch_size", 1, 4096, file, 14 if dino else 16)
    channels = _int_field(cfg, "num_channels", 1, 4096, file, 3)
    size = cfg.get("image_size", 224)
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else None
    if hw is None or len(hw) != 2 or not all(isinstance(s, int) and 1 <= s <= MAX_TOKENS_SIDE * patch for s in hw):
        raise ValueError(f"{file}: field 'image_size' must be an int or [H, W] of at most "
                         f"{MAX_TOKENS_SIDE} patches a side, got {size!r}")
    if dino:
        if cfg.get("use_swiglu_ffn"):
            raise ValueError(f"{file}: DINOv2 with a SwiGLU MLP (use_swiglu_ffn) is not a plain ViT; not supported")
        ratio = cfg.get("mlp_ratio", 4)
        if not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
            raise ValueError(f"{file}: field 'mlp_ratio' must be in (0, 64], got {ratio!r}")
    else:
        mlp = _int_field(cfg, "intermediate_size", 1, 64 * width, file, 3072)
        ratio = mlp / width
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTS:
        raise ValueError(f"{file}: hidden_act {act!r} is not supported; accepted: {sorted(ACTS)}")
    eps = cfg.get("layer_norm_eps", 1e-6 if dino else 1e-12)
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
    parts = _beit_parts(cfg, file) if mt == "beit" else dict(
        qkv_bias=bool(cfg.get("qkv_bias", True)), distilled=mt == "deit",
        layer_scale_init=float(cfg.get("layerscale_value", 1.0)) if dino else None)
    try:
        return ViTConfig(image_size=hw, patch_size=patch, channels=channels, width=width, depth=depth, heads=heads,
                         mlp_ratio=ratio, norm_eps=float(eps), act=ACTS[act], num_classes=0, labels=None,
                         **parts), labels
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


def _beit_parts(cfg: dict[str, Any], file: str) -> dict[str, Any]:
    """The ViTConfig fields of a BeitConfig: q and v biases (BEiT has no k bias), the relative position bias per
    layer or shared, the absolute position embedding, mean pooling with its own norm, LayerScale (lambda)."""
    flags = {k: cfg.get(k, default) for k, default in (
        ("use_relative_position_bias", False), ("use_shared_relative_position_bias", False),
        ("use_absolute_position_embeddings", False), ("use_mean_pooling", True))}
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise ValueError(f"{file}: field {k!r} must be true or false, got {v!r}")
    if flags["use_relative_position_bias"] and flags["use_shared_relative_position_bias"]:
        raise ValueError(f"{file}: a relative position bias both per layer and shared; vitkit builds one or the other")
    ls = cfg.get("layer_scale_init_value", 0.1)
    if not isinstance(ls, (int, float)) or isinstance(ls, bool) or not 0 <= ls < 1e3:
        raise ValueError(f"{file}: field 'layer_scale_init_value' must be a number >= 0, got {ls!r}")
    return dict(qkv_bias="qv", rel_pos="per_block" if flags["use_relative_position_bias"] else
                "shared" if flags["use_shared_relative_position_bias"] else "none",
                pos_embed="learned" if flags["use_absolute_position_embeddings"] else "none",
                pooling="gap" if flags["use_mean_pooling"] else "cls", layer_scale_init=float(ls) if ls > 0 else None)


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
    refuse_unbuilt_family(src, file)
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
    if cfg.pos_embed == "learned":
        out["pos_embed"] = take("embeddings.position_embeddings")  # (1, prefix + N, D)
    dino, beit = mt == "dinov2", mt == "beit"
    for i in range(cfg.depth):
        a, b = f"encoder.layer.{i}.", f"blocks.{i}."
        names = (("norm1", "norm2", "mlp.fc1", "mlp.fc2") if dino else
                 ("layernorm_before", "layernorm_after", "intermediate.dense", "output.dense"))
        for theirs, ours in zip(names, ("norm1", "norm2", "mlp.fc1", "mlp.fc2")):
            for t in ("weight", "bias"):
                out[f"{b}{ours}.{t}"] = take(f"{a}{theirs}.{t}")
        q, k, v = (f"{a}attention.attention.{n}" for n in ("query", "key", "value"))
        out[f"{b}attn.qkv.weight"] = torch.cat([take(f"{q}.weight"), take(f"{k}.weight"), take(f"{v}.weight")])
        if cfg.qkv_bias_parts == "qkv":
            out[f"{b}attn.qkv.bias"] = torch.cat([take(f"{q}.bias"), take(f"{k}.bias"), take(f"{v}.bias")])
        if cfg.qkv_bias_parts == "qv":  # BEiT: no key bias
            out[f"{b}attn.q_bias"], out[f"{b}attn.v_bias"] = take(f"{q}.bias"), take(f"{v}.bias")
        out[f"{b}attn.proj.weight"] = take(f"{a}attention.output.dense.weight")
        out[f"{b}attn.proj.bias"] = take(f"{a}attention.output.dense.bias")
        if dino:
            out[f"{b}ls1.gamma"] = take(f"{a}layer_scale1.lambda1")
            out[f"{b}ls2.gamma"] = take(f"{a}layer_scale2.lambda1")
        if beit and cfg.layer_scale_init is not None:
            out[f"{b}ls1.gamma"], out[f"{b}ls2.gamma"] = take(f"{a}lambda_1"), take(f"{a}lambda_2")
        if cfg.rel_pos == "per_block":
            out[f"{b}attn.relative_position_bias_table"] = take(f"{a}attention.attention.{REL_TABLE}")
    if cfg.rel_pos == "shared":
        out["rel_pos_bias.relative_position_bias_table"] = take(f"encoder.{REL_TABLE}")
    if beit and cfg.pooling == "gap":  # mean of the patch tokens, then the pooler's own norm; no final norm
        if "pooler.layernorm.weight" not in src:
            raise ValueError(f"{file}: a BEiT with mean pooling saved without its pooler (add_pooling_layer=False) "
                             "has no norm after the blocks; vitkit's mean pooling needs it (pooler.layernorm)")
        out["fc_norm.weight"], out["fc_norm.bias"] = take("pooler.layernorm.weight"), take("pooler.layernorm.bias")
    else:
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
        if hf_cfg.get("pooler_act", "tanh") != "tanh":
            raise ValueError(f"{file}: a pooler with pooler_act {hf_cfg['pooler_act']!r}; vitkit's pre-logits layer "
                             "(what a ViTModel's pooler becomes) is Linear + tanh only")
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


def _hf_problems(cfg: ViTConfig) -> list[str]:
    """What transformers' ViT/DeiT (or, for BEiT blocks, its Beit) cannot express in ``cfg``."""
    beit = cfg.is_beit
    checks = [
        (cfg.reg_tokens, "register tokens"),
        (cfg.pos_embed == "sincos2d" or (cfg.pos_embed == "learned" and not cfg.pos_embed_prefix),
         "a position embedding that is not learned or has no row for the prefix tokens"),
        (not cfg.patch_bias, "no patch-embedding bias"), (cfg.qk_norm, "qk-norm"),
        (cfg.norm_pre, "norm_pre (CLIP's LayerNorm before the blocks)"),
        (cfg.pooling == "map", "an attention-pooling head (SigLIP)"),
        (cfg.stem == "hybrid", "a hybrid CNN stem (transformers' ViTHybrid is another class, not read here)"),
        (cfg.layer_scale_init is not None and (not beit or cfg.layer_scale_init <= 0),
         "LayerScale" + (" initialised at 0 (transformers reads 0 as none)" if beit else "")),
    ]
    if beit:
        checks += [(cfg.distilled, "a distillation token"), (cfg.qkv_bias_parts != "qv", "a k bias, or no q/v bias"),
                   (cfg.use_fc_norm != (cfg.pooling == "gap"), "fc_norm other than with mean pooling"),
                   (cfg.representation_size, "a pre-logits layer")]
    else:
        checks += [(not cfg.class_token or cfg.pooling != "cls", "pooling other than the [CLS] token"),
                   (cfg.use_fc_norm, "fc_norm"), (cfg.qkv_bias_parts == "qv", "q and v biases without a k bias"),
                   (cfg.representation_size and (cfg.num_classes or cfg.distilled or
                                                 cfg.representation_size != cfg.width),
                    "a pre-logits layer with a classifier (only a bare ViTModel's width x width pooler can hold one)")]
    return [why for bad, why in checks if bad]



def put_split_qkv(put, hf_block: str, state: dict[str, Any], block: str, d: int, bias_parts: str) -> None:
    """Our fused ``{block}attn.qkv`` (3D, D) -> transformers' ``{hf_block}attention.attention.{query,key,value}``
    weights (and biases when all three have one): the rows are q, then k, then v."""
    w = state[f"{block}attn.qkv.weight"]
    for j, n in enumerate(("query", "key", "value")):
        put(f"{hf_block}attention.attention.{n}.weight", w[j * d:(j + 1) * d])
        if bias_parts == "qkv":
            put(f"{hf_block}attention.attention.{n}.bias", state[f"{block}attn.qkv.bias"][j * d:(j + 1) * d])

def vitkit_to_hf(state: dict[str, torch.Tensor], cfg: ViTConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict as ``save_pretrained`` writes it, config.json dict) for ViTForImageClassification /
    ViTModel, DeiTForImageClassificationWithTeacher / DeiTModel for distilled models, or
    BeitForImageClassification / BeitModel for BEiT blocks (relative positions or q/v-only biases)."""
    problems = _hf_problems(cfg)
    if problems:
        raise ValueError(f"transformers' {'BEiT' if cfg.is_beit else 'ViT/DeiT'} cannot express this model: it has "
                         + "; ".join(problems) + ". Save it as vitkit or timm instead.")
    deit, beit = cfg.distilled, cfg.is_beit
    mt = "beit" if beit else "deit" if deit else "vit"
    p = f"{mt}." if cfg.num_classes else ""
    out: dict[str, torch.Tensor] = {}

    def put(key: str, t: torch.Tensor) -> None:
        out[key] = t.detach().cpu().contiguous()

    put(f"{p}embeddings.patch_embeddings.projection.weight", state["patch_embed.proj.weight"])
    put(f"{p}embeddings.patch_embeddings.projection.bias", state["patch_embed.proj.bias"])
    put(f"{p}embeddings.cls_token", state["cls_token"])
    if deit:
        put(f"{p}embeddings.distillation_token", state["dist_token"])
    if cfg.pos_embed == "learned":
        put(f"{p}embeddings.position_embeddings", state["pos_embed"])
    d = cfg.width
    for i in range(cfg.depth):
        a, b = f"{p}encoder.layer.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                             ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
                             ("attn.proj", "attention.output.dense")):
            put(f"{a}{theirs}.weight", state[f"{b}{ours}.weight"])
            put(f"{a}{theirs}.bias", state[f"{b}{ours}.bias"])
        put_split_qkv(put, a, state, b, d, cfg.qkv_bias_parts)
        if cfg.qkv_bias_parts == "qv":
            put(f"{a}attention.attention.query.bias", state[f"{b}attn.q_bias"])
            put(f"{a}attention.attention.value.bias", state[f"{b}attn.v_bias"])
        if beit and cfg.layer_scale_init is not None:
            put(f"{a}lambda_1", state[f"{b}ls1.gamma"])
            put(f"{a}lambda_2", state[f"{b}ls2.gamma"])
        if cfg.rel_pos == "per_block":
            put(f"{a}attention.attention.{REL_TABLE}", state[f"{b}attn.relative_position_bias_table"])
    if cfg.rel_pos == "shared":
        put(f"{p}encoder.{REL_TABLE}", state["rel_pos_bias.relative_position_bias_table"])
    if beit and cfg.pooling == "gap":  # BEiT's mean pooling: the pooler's norm, no norm after the blocks
        put(f"{p}pooler.layernorm.weight", state["fc_norm.weight"])
        put(f"{p}pooler.layernorm.bias", state["fc_norm.bias"])
    else:
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
    name = {"beit": "Beit", "deit": "DeiT", "vit": "ViT"}[mt]
    arch = (f"{name}ForImageClassification" + ("WithTeacher" if deit else "")) if cfg.num_classes else f"{name}Model"
    h, w_ = cfg.image_hw
    hf: dict[str, Any] = dict(
        architectures=[arch], model_type=mt, hidden_size=d, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim,
        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.act], hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps, image_size=h if h == w_ else [h, w_],
        patch_size=cfg.patch_size, num_channels=cfg.channels, initializer_range=0.02, dtype="float32",
    )
    if beit:
        hf.update(use_absolute_position_embeddings=cfg.pos_embed == "learned",
                  use_relative_position_bias=cfg.rel_pos == "per_block",
                  use_shared_relative_position_bias=cfg.rel_pos == "shared",
                  layer_scale_init_value=cfg.layer_scale_init or 0.0, use_mean_pooling=cfg.pooling == "gap",
                  use_mask_token=False, drop_path_rate=0.0)
    else:
        hf.update(qkv_bias=cfg.qkv_bias, encoder_stride=cfg.patch_size)
    if cfg.num_classes:
        names = cfg.labels or [f"LABEL_{i}" for i in range(cfg.num_classes)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    return out, hf
