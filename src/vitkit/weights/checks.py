"""Key-by-key checks shared by the converters: the exact set of missing, unexpected and misshaped tensors."""

from __future__ import annotations

import re

import torch

from ..config import ViTConfig
from ..models.vit import VisionTransformer


def expected_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of ``VisionTransformer(cfg)``, read off the model built on the meta device:
    shapes without storage (nothing allocated, nothing initialised) and no second shape formula to keep in step
    with the model. A hostile config is refused before anything is built: ``validate`` bounds every size and
    the parameter count (``num_params``, from the sizes alone) before the model exists."""
    cfg.validate()
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(state: dict[str, torch.Tensor], cfg: ViTConfig, source: str) -> None:
    """Raise ValueError naming the missing, unexpected or wrongly shaped keys of ``state`` for ``cfg`` (the first
    12 of each kind, and how many more), or the family of a checkpoint vitkit does not build."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(f"{k}: file {tuple(state[k].shape)} != model {want[k]}"
                   for k in set(want) & set(state) if tuple(state[k].shape) != want[k])
    if missing or unexpected or wrong:
        refuse_unbuilt_family(state, source)
        parts = [f"{what} {keys[:12]}" + (f" (+{len(keys) - 12} more)" if len(keys) > 12 else "")
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", wrong)) if keys]
        raise ValueError(f"{source}: the weights do not fit the model they describe: " + "; ".join(parts))


# Members of the ViT family vitkit does not build, told by keys that only they have (timm's names first, then
# transformers' and the original repositories'), so that their files get a reason instead of a list of keys.
UNBUILT_FAMILIES: tuple[tuple[str, re.Pattern], ...] = (
    ("EVA-02 (rotary position embeddings)", re.compile(r"(^|\.)(rope|rotary_emb|rotary_pos_emb)\.")),
    ("a SwiGLU MLP (EVA-02, DINOv2-giant, SigLIP 2 ...)",
     re.compile(r"(^|\.)mlp\.(fc1_g|fc1_x|w12|w3|weights_in|weights_out)\.")),
    # timm's attn_pool. (SigLIP) and norm_pre. (CLIP) are built; transformers' layouts of them are not read yet
    ("an attention-pooling head in transformers' layout (SigLIP's head.probe; vitkit reads timm's attn_pool.)",
     re.compile(r"^head\.(probe|attention\.|mlp\.|layernorm\.)")),
    ("CLIP's vision tower in transformers' layout (pre_layrnorm; vitkit reads timm's norm_pre)",
     re.compile(r"^pre_layrnorm\.")),
    ("EVA-02's inner LayerNorms (scale_mlp / scale_attn_inner)", re.compile(r"\.(mlp\.norm|mlp\.ffn_ln|attn\.norm)\.")),
    ("a Swin Transformer (hierarchical stages)", re.compile(r"^layers\.\d+\.blocks\.\d+\.")),
)


def refuse_unbuilt_family(state: dict[str, torch.Tensor], source: str) -> None:
    """ValueError naming the family of ``state`` and the keys that show it, when vitkit does not build it;
    nothing otherwise. A gated MLP packed into one fc1 (timm's GluMlp, EVA-02) is told by its shape:
    fc1 twice as wide as fc2's input."""
    for family, pattern in UNBUILT_FAMILIES:
        keys = sorted(k for k in state if pattern.search(k))
        if keys:
            break
    else:
        fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
        if fc1 is None or fc2 is None or fc1.ndim != 2 or fc2.ndim != 2 or fc1.shape[0] != 2 * fc2.shape[1]:
            return
        family = "a gated (SwiGLU) MLP packed into fc1 (EVA-02)"
        keys = [f"blocks.0.mlp.fc1.weight {tuple(fc1.shape)}", f"blocks.0.mlp.fc2.weight {tuple(fc2.shape)}"]
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    raise ValueError(f"{source}: a checkpoint of {family}, which vitkit does not build; the keys that show it: "
                     f"{keys[:3]}{more}. vitkit builds ViT, DeiT (distilled), registers, DINOv2, MAE, BEiT, the "
                     "CLIP/SigLIP towers and ResNet-v2 hybrids")


def need(state: dict, key: str, source: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``state[key]``, with a clear error when it is absent or not of ``shape`` (None entries match anything)."""
    if key not in state:
        raise ValueError(f"{source}: required tensor {key!r} is missing")
    t = state[key]
    if shape is not None and (t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape))):
        raise ValueError(f"{source}: tensor {key!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def square_side(n: int) -> int | None:
    """The side of an n = s*s grid, or None."""
    s = int(round(n ** 0.5))
    return s if s * s == n else None
