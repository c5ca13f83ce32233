"""ViTConfig, the table of ViT sizes, and model-name parsing.

Sizes are data: one table (``VARIANTS``) and a parser that turns
``"vit_base_patch16_224"``, ``"B/16"`` or ``"vit_tiny_patch4_32"`` into a
:class:`ViTConfig`. Every module of the model takes this one typed object.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

# Widths, depths, heads and MLP ratios of the published variants
# (Dosovitskiy et al. 2020 for B/L/H; Touvron et al. 2021 for Ti/S).
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=192, depth=12, heads=3, mlp_ratio=4.0),
    "small": dict(width=384, depth=12, heads=6, mlp_ratio=4.0),
    "base": dict(width=768, depth=12, heads=12, mlp_ratio=4.0),
    "large": dict(width=1024, depth=24, heads=16, mlp_ratio=4.0),
    "huge": dict(width=1280, depth=32, heads=16, mlp_ratio=4.0),
}
# Short names used in the papers ("B/16") and by timm ("vit_base_...").
SIZE_ALIASES = {"ti": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge"}
PATCH_SIZES = (8, 14, 16, 32)  # the patch sizes list_models() enumerates
DEFAULT_RESOLUTION = 224

POOLINGS = ("cls", "gap", "map")  # "map": SigLIP's attention pool (a learned query over the tokens)
# q/k/v biases: True or "qkv" (all three), False or "none", "qv" (BEiT: q and v, no k). Stored as True / False / "qv",
# so configs written before "qv" existed read back unchanged.
QKV_BIASES: dict[bool | str, bool | str] = {True: True, "qkv": True, False: False, "none": False, "qv": "qv"}
REL_POS = ("none", "per_block", "shared")
POS_EMBEDS = ("learned", "sincos2d", "none")
ACTIVATIONS = ("gelu", "gelu_tanh")
STEMS = ("patch", "hybrid")  # a P×P patch convolution | a ResNet-v2 CNN whose feature map is cut into P×P patches

# Refuse configurations that could only come from a corrupt or hostile file
# before anything is allocated (see RELIABILITY.md item 6).
MAX_WIDTH = 16384
MAX_DEPTH = 256
MAX_TOKENS_SIDE = 1024  # grid side in patches: 16384 px at P=16
MAX_CLASSES = 1_000_000
MAX_PARAMS = 50_000_000_000  # ViT-22B is the largest published ViT
# BEiT's relative position index is (1 + N)² integers for N patches: 128x128 patches (2048² px at P=16) is 2 GB of it
MAX_REL_POS_PATCHES = 128 * 128


def hybrid_stride(layers: tuple[int, ...]) -> int:
    """The stride of a hybrid's ResNet-v2: 4 (7×7/2 conv, 3×3/2 max pool), halved by each stage after the first."""
    return 4 * 2 ** max(len(layers) - 1, 0)


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"image_size must be an int or a pair (H, W) of ints, got {v!r}")


@dataclass
class ViTConfig:
    """Everything that decides a Vision Transformer's shape and numerics."""

    image_size: int | tuple[int, int] = 224  # H = W, or (H, W)
    patch_size: int = 16
    channels: int = 3
    num_classes: int = 1000  # 0: no head, forward returns pooled features
    width: int = 768  # token width D
    depth: int = 12  # number of encoder blocks L
    heads: int = 12
    mlp_ratio: float = 4.0  # MLP hidden width = round(width * mlp_ratio)
    qkv_bias: bool | str = True  # True/"qkv": q, k and v; False/"none": none; "qv": q and v only (BEiT)
    qk_norm: bool = False  # LayerNorm per head on q and k (timm's attn.q_norm / attn.k_norm)
    rel_pos: str = "none"  # BEiT's relative position bias: "none" | "per_block" (a table per block) | "shared"
    pooling: str = "cls"  # "cls": head reads [CLS]; "gap": mean of patch tokens; "map": attention pool (SigLIP)
    class_token: bool = True
    reg_tokens: int = 0  # register tokens (Darcet et al. 2023), after [CLS]
    distilled: bool = False  # DeiT distillation token + second head
    pos_embed: str = "learned"  # "learned" | "sincos2d" (fixed, big_vision) | "none"
    # True: the position embedding has rows for the prefix tokens too and is
    # added after they are joined (original ViT, DeiT). False: rows for patches
    # only, added before the prefix is joined (timm's no_embed_class).
    pos_embed_prefix: bool = True
    layer_scale_init: float | None = None  # LayerScale (CaiT/DeiT-III); None = off
    dropout: float = 0.0  # after position embedding, in MLP/attention output, before head
    attn_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth, rising linearly to this rate at the last block
    norm_eps: float = 1e-6  # timm/JAX 1e-6; HF google/vit-* 1e-12
    act: str = "gelu"  # "gelu" (exact erf) | "gelu_tanh" (JAX original)
    representation_size: int | None = None  # pre-logits Linear + tanh (ViT in21k)
    fc_norm: bool | None = None  # norm after pooling instead of before; None = on for "gap"
    patch_bias: bool = True
    dynamic_img_size: bool = False  # accept other input sizes, resampling pos-embed per call
    dynamic_img_pad: bool = False  # pad inputs up to a multiple of the patch size
    labels: list[str] | None = field(default=None, compare=False)  # class names, index order
    norm_pre: bool = False  # CLIP's vision tower: a LayerNorm after the embedding, before the blocks (timm norm_pre)
    # hybrid CNN-ViT (Dosovitskiy et al. 2020): a ResNet-v2 stem (layers/hybrid_stem.py), then patch_size x
    # patch_size patches (1 for R50+ViT-B/16) of its feature map. hybrid_layers: bottleneck blocks per stage,
    # () for the stem alone; hybrid_width: the stem's width (64 for R50; stage i is 4 * width * 2^i wide)
    stem: str = "patch"
    hybrid_layers: tuple[int, ...] = ()
    hybrid_width: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.qkv_bias, (bool, str)) and self.qkv_bias in QKV_BIASES:
            self.qkv_bias = QKV_BIASES[self.qkv_bias]  # "qkv" -> True, "none" -> False
        if isinstance(self.hybrid_layers, list):
            self.hybrid_layers = tuple(self.hybrid_layers)  # read back from JSON
        self.image_size = _pair(self.image_size)
        if self.image_size[0] == self.image_size[1]:
            self.image_size = self.image_size[0]
        self.validate()

    # --- derived sizes -------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return _pair(self.image_size)

    @property
    def stem_stride(self) -> int:
        """Pixels per feature-map cell before the patches: 1 for the patch stem; the hybrid's 7×7/2 conv and
        3×3/2 max pool (4), halved again by every stage after the first."""
        return 1 if self.stem == "patch" else hybrid_stride(self.hybrid_layers)

    @property
    def stem_channels(self) -> int:
        """Channels that the patch projection reads: the image's, or the hybrid CNN's last stage's."""
        if self.stem == "patch":
            return self.channels
        n = len(self.hybrid_layers)
        return self.hybrid_width * 4 * 2 ** (n - 1) if n else self.hybrid_width

    @property
    def token_stride(self) -> int:
        """Pixels per token side: the patch size times the stem's stride (what a map onto the image uses)."""
        return self.patch_size * self.stem_stride

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_hw
        p = self.token_stride
        return (math.ceil(h / p), math.ceil(w / p)) if self.dynamic_img_pad else (h // p, w // p)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_dim(self) -> int:
        return round(self.width * self.mlp_ratio)

    @property
    def use_fc_norm(self) -> bool:
        return self.pooling == "gap" if self.fc_norm is None else self.fc_norm

    @property
    def qkv_bias_parts(self) -> str:
        """Which of q, k, v have a bias: "qkv", "qv" or "" (the forms ``qkv_bias`` accepts, normalised)."""
        return {True: "qkv", False: "", "qv": "qv"}[QKV_BIASES[self.qkv_bias]]

    @property
    def is_beit(self) -> bool:
        """BEiT's blocks (relative positions or q/v-only biases): what timm and transformers build with their
        BEiT classes, and save in those classes' layouts."""
        return self.rel_pos != "none" or self.qkv_bias_parts == "qv"

    @property
    def rel_pos_rows(self) -> int:
        """Rows of a BEiT relative position table: every (dy, dx) offset of the grid, + 3 for the [CLS] token."""
        gh, gw = self.grid_size
        return (2 * gh - 1) * (2 * gw - 1) + 3

    @property
    def num_features(self) -> int:
        return self.representation_size or self.width

    # --- checks -------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field when the configuration is impossible."""

        def pos_int(name: str, hi: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ValueError(f"ViTConfig.{name} must be an integer in [1, {hi}], got {v!r}")

        for name, hi in (("patch_size", 4096), ("channels", 4096), ("width", MAX_WIDTH),
                         ("depth", MAX_DEPTH), ("heads", 4096)):
            pos_int(name, hi)
        self._validate_stem()
        h, w = self.image_hw
        if not (1 <= h and 1 <= w):
            raise ValueError(f"ViTConfig.image_size must be positive, got {self.image_size!r}")
        s = self.token_stride
        what = f"patch_size {self.patch_size}" if s == self.patch_size else \
            f"the token stride {s} (patch_size {self.patch_size} x the hybrid stem's stride {self.stem_stride})"
        if max(h, w) / s > MAX_TOKENS_SIDE:
            raise ValueError(f"ViTConfig.image_size {h}x{w} gives more than {MAX_TOKENS_SIDE} patches "
                             f"per side at {what}; refusing")
        if not self.dynamic_img_pad and (h % s or w % s):
            raise ValueError(f"ViTConfig.image_size {h}x{w} is not divisible by {what}; use a multiple of {s}"
                             + (" or dynamic_img_pad=True" if self.stem == "patch" else ""))
        if not isinstance(self.num_classes, int) or not 0 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"ViTConfig.num_classes must be an integer in [0, {MAX_CLASSES}], got {self.num_classes!r}")
        if self.width % self.heads:
            raise ValueError(f"ViTConfig.width {self.width} is not divisible by heads {self.heads}")
        if not (isinstance(self.mlp_ratio, (int, float)) and 0 < self.mlp_ratio <= 64):
            raise ValueError(f"ViTConfig.mlp_ratio must be in (0, 64], got {self.mlp_ratio!r}")
        if self.mlp_dim < 1:  # a file written with it would not read back (intermediate_size 0)
            raise ValueError(f"ViTConfig.mlp_ratio {self.mlp_ratio!r} at width {self.width} gives an MLP of no hidden "
                             f"unit (round(width * mlp_ratio) = 0)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"ViTConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cls" and not self.class_token:
            raise ValueError("ViTConfig.pooling='cls' needs class_token=True; use pooling='gap' without a class token")
        if self.pooling == "map" and self.distilled:
            raise ValueError("ViTConfig.pooling='map' (an attention pool) has no distillation head; distilled=True "
                             "needs pooling='cls'")
        if not isinstance(self.norm_pre, bool):
            raise ValueError(f"ViTConfig.norm_pre must be true or false, got {self.norm_pre!r}")
        if self.distilled and not self.class_token:
            raise ValueError("ViTConfig.distilled=True needs class_token=True")
        if not isinstance(self.reg_tokens, int) or not 0 <= self.reg_tokens <= 1024:
            raise ValueError(f"ViTConfig.reg_tokens must be an integer in [0, 1024], got {self.reg_tokens!r}")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"ViTConfig.pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.pos_embed == "sincos2d" and self.width % 4:
            raise ValueError(f"ViTConfig.pos_embed='sincos2d' needs width divisible by 4, got {self.width}")
        if not isinstance(self.qkv_bias, (bool, str)) or self.qkv_bias not in QKV_BIASES:
            raise ValueError(f"ViTConfig.qkv_bias must be one of {list(QKV_BIASES)}, got {self.qkv_bias!r}")
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"ViTConfig.qk_norm must be true or false, got {self.qk_norm!r}")
        if self.rel_pos not in REL_POS:
            raise ValueError(f"ViTConfig.rel_pos must be one of {REL_POS}, got {self.rel_pos!r}")
        if self.rel_pos != "none":
            if not self.class_token or self.reg_tokens or self.distilled:
                raise ValueError("ViTConfig.rel_pos needs exactly one prefix token, the [CLS] (class_token=True, no "
                                 "register or distillation token): BEiT's table has one row and column for it")
            if self.num_patches > MAX_REL_POS_PATCHES:
                raise ValueError(f"ViTConfig.rel_pos with {self.num_patches} patches: its (1 + N)² index is refused "
                                 f"above {MAX_REL_POS_PATCHES} patches")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"ViTConfig.act must be one of {ACTIVATIONS}, got {self.act!r}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ValueError(f"ViTConfig.{name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1):
            raise ValueError(f"ViTConfig.norm_eps must be in (0, 1), got {self.norm_eps!r}")
        if self.representation_size is not None:
            if not isinstance(self.representation_size, int) or not 1 <= self.representation_size <= MAX_WIDTH:
                raise ValueError(f"ViTConfig.representation_size must be None or in [1, {MAX_WIDTH}], "
                                 f"got {self.representation_size!r}")
        if self.num_params() > MAX_PARAMS:
            raise ValueError(f"ViTConfig describes {self.num_params() / 1e9:.0f}B parameters "
                             f"(width {self.width}, depth {self.depth}); more than {MAX_PARAMS / 1e9:.0f}B is refused")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"ViTConfig.labels has {len(self.labels)} names for {self.num_classes} classes")

    def _validate_stem(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"ViTConfig.stem must be one of {STEMS}, got {self.stem!r}")
        layers = self.hybrid_layers
        if not isinstance(layers, tuple) or len(layers) > 4 or \
                not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 for n in layers):
            raise ValueError(f"ViTConfig.hybrid_layers must be 0 to 4 stage depths in [1, 64], got {layers!r}")
        w = self.hybrid_width
        if not isinstance(w, int) or isinstance(w, bool) or not 32 <= w <= 4096 or w % 32:
            raise ValueError(f"ViTConfig.hybrid_width must be a multiple of 32 (GroupNorm's 32 groups) in "
                             f"[32, 4096], got {w!r}")
        if self.stem == "patch" and layers:
            raise ValueError("ViTConfig.hybrid_layers needs stem='hybrid'")
        if self.stem == "hybrid" and self.dynamic_img_pad:
            raise ValueError("ViTConfig.dynamic_img_pad is for the patch stem; the hybrid stem pads 'same' itself")

    def stem_params(self) -> int:
        """Parameters of the hybrid CNN (0 for the patch stem): bias-free convolutions, GroupNorm scale + shift."""
        if self.stem == "patch":
            return 0
        w = self.hybrid_width
        n = self.channels * 49 * w + 2 * w  # 7x7 conv + norm
        cin = w
        for i, blocks in enumerate(self.hybrid_layers):
            mid, out = w * 2 ** i, 4 * w * 2 ** i
            n += cin * out + 2 * out  # downsample 1x1 conv + norm (first block)
            for b in range(blocks):
                n += (cin if b == 0 else out) * mid + 9 * mid * mid + mid * out + 2 * (2 * mid + out)
            cin = out
        return n

    def stem_macs(self) -> int:
        """Multiply-adds of the hybrid CNN for one image ('same' padding: every output cell is computed)."""
        if self.stem == "patch":
            return 0
        h, w_ = self.image_hw
        c = self.hybrid_width
        cells = math.ceil(h / 2) * math.ceil(w_ / 2)
        macs = cells * self.channels * 49 * c
        h, w_ = math.ceil(h / 4), math.ceil(w_ / 4)
        cin = c
        for i, blocks in enumerate(self.hybrid_layers):
            mid, out = c * 2 ** i, 4 * c * 2 ** i
            s = 1 if i == 0 else 2
            ho, wo = math.ceil(h / s), math.ceil(w_ / s)
            macs += ho * wo * cin * out  # downsample
            for b in range(blocks):
                inp = h * w_ if b == 0 else ho * wo
                macs += inp * (cin if b == 0 else out) * mid + ho * wo * (9 * mid * mid + mid * out)
            h, w_, cin = ho, wo, out
        return macs

    # --- (de)serialisation ---------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        d["hybrid_layers"] = list(d["hybrid_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        """Build from a plain dict (a JSON file); unknown keys are an error, never ignored."""
        if not isinstance(d, dict):
            raise ValueError(f"a ViT config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s) {unknown}; accepted: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("image_size"), list):
            d["image_size"] = tuple(d["image_size"])
        return cls(**d)

    def replace(self, **overrides: Any) -> "ViTConfig":
        """A copy with some fields changed; an unknown field is an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s) {unknown}; accepted: {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    # --- cost ----------------------------------------------------------
    def num_params(self) -> int:
        """Parameter count, computed from the sizes (equals the built model's)."""
        d, p = self.width, self.patch_size
        n = self.stem_channels * p * p * d + (d if self.patch_bias else 0) + self.stem_params()  # patch embedding
        n += d * self.num_prefix_tokens  # cls / dist / register tokens
        if self.pos_embed == "learned":
            n += d * (self.num_patches + (self.num_prefix_tokens if self.pos_embed_prefix else 0))
        m = self.mlp_dim
        block = 2 * 2 * d  # two LayerNorms
        block += 3 * d * d + d * len(self.qkv_bias_parts) + d * d + d  # qkv (+ its biases) + proj
        if self.qk_norm:
            block += 2 * 2 * self.head_dim  # a LayerNorm per head width on q and on k
        if self.rel_pos == "per_block":
            block += self.rel_pos_rows * self.heads
        if self.rel_pos == "shared":
            n += self.rel_pos_rows * self.heads
        block += d * m + m + m * d + d  # MLP
        if self.layer_scale_init is not None:
            block += 2 * d
        n += self.depth * block + 2 * d  # blocks + final norm (or fc_norm)
        if self.norm_pre:
            n += 2 * d
        if self.pooling == "map":  # latent query, q, kv, proj, its norm and MLP (timm's AttentionPoolLatent)
            n += d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d) + 2 * d + (d * m + m + m * d + d)
        if self.representation_size:
            n += d * self.representation_size + self.representation_size
        if self.num_classes:
            heads = 2 if self.distilled else 1
            n += heads * (self.num_features * self.num_classes + self.num_classes)
        return n

    def flops(self) -> int:
        """Forward FLOPs for one image (2 x multiply-adds of the matrix products and attention)."""
        d, m, t = self.width, self.mlp_dim, self.num_tokens
        macs = self.num_patches * self.stem_channels * self.patch_size ** 2 * d + self.stem_macs()
        per_block = t * d * 3 * d + t * d * d + 2 * t * m * d  # qkv, proj, MLP
        per_block += 2 * t * t * d  # QK^T and AV
        macs += self.depth * per_block
        if self.pooling == "map":  # one query: q, k/v of the patch tokens, attention, proj, MLP
            n = self.num_patches  # the pool reads the patch tokens only
            macs += d * d + n * 2 * d * d + 2 * n * d + d * d + 2 * d * m
        if self.representation_size:
            macs += d * self.representation_size
        macs += self.num_features * self.num_classes * (2 if self.distilled else 1)
        return 2 * macs


# --- names ---------------------------------------------------------------

NAME_HELP = ("accepted names: 'vit_{tiny|small|base|large|huge}_patch{P}_{RES}' (RES = 224 or HxW), "
              "optional tokens 'reg{N}', 'gap', 'distilled', 'clip', 'siglip'; "
              "'deit_{tiny|small|base}[_distilled]_patch16_224'; "
              "'beit[v2]_{base|large}_patch16_{RES}' (BEiT's blocks); "
              "'vit_{size}_{r50_s16|r50_s32|r26_s32|r_s16_p8}_{RES}' (ResNet-v2 hybrids); "
              "short forms '{Ti|S|B|L|H}/{P}' and '{Ti|S|B|L|H}/{P}@{RES}'")
# BEiT (Bao et al. 2021; timm's beit_*): relative position bias in every block, q and v biases, LayerScale, mean
# pooling with its own norm, no absolute position embedding. LayerScale starts at 0.1 for BEiT-B, 1e-5 for
# BEiT-L and for BEiT v2 (same blocks, another pre-training).
BEIT = dict(rel_pos="per_block", qkv_bias="qv", pooling="gap", pos_embed="none")
BEIT_LAYER_SCALE = {("beit", "base"): 0.1}  # otherwise 1e-5
# timm's hybrid names (vision_transformer_hybrid): vit_{size}_{r|r26|r50}_s{stride}[_p{P}]_{RES} -> ResNet-v2 stage
# depths ("r": the root stem alone, with 8x8 patches of its stride-4 map)
HYBRID_STAGES = {("r", 16): (), ("r26", 32): (2, 2, 2, 2), ("r50", 16): (3, 4, 9), ("r50", 32): (3, 4, 6, 3)}
_HYBRID_NAME = re.compile(r"vit_(\w+?)_(r|r26|r50)_s(\d+)(?:_p(\d+))?_(\d+)(?:x(\d+))?")


# The vision towers of CLIP (Radford et al. 2021; timm's vit_*_clip_*: a LayerNorm before the blocks, no patch
# bias, LayerNorm eps 1e-5) and SigLIP (Zhai et al. 2023; timm's vit_*_siglip_*: no [CLS], an attention pool).
CLIP = dict(norm_pre=True, patch_bias=False, norm_eps=1e-5)
SIGLIP = dict(pooling="map", class_token=False)


def parse_model_name(name: str) -> ViTConfig:
    """Turn a model name into a config: ``vit_base_patch16_224``, ``B/16``, ``vit_tiny_patch4_32``...

    Anything after a '.' (a timm pretrained tag such as ``.augreg2_in21k_ft_in1k``) is ignored here.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}; {NAME_HELP}")
    raw = name
    name = name.strip().split(".", 1)[0].lower()

    short = re.fullmatch(r"(ti|s|b|l|h)/(\d+)(?:@(\d+)(?:x(\d+))?)?", name)
    if short:
        size, patch = SIZE_ALIASES[short.group(1)], int(short.group(2))
        h = int(short.group(3)) if short.group(3) else DEFAULT_RESOLUTION
        w = int(short.group(4)) if short.group(4) else h
        return _build(raw, size, patch, (h, w), {})

    if hyb := _HYBRID_NAME.fullmatch(name):
        size, net, stride = SIZE_ALIASES.get(hyb.group(1), hyb.group(1)), hyb.group(2), int(hyb.group(3))
        if size not in VARIANTS or (net, stride) not in HYBRID_STAGES:
            raise ValueError(f"unknown hybrid {raw!r}: sizes {list(VARIANTS)}, CNNs "
                             f"{sorted(f'{n}_s{s}' for n, s in HYBRID_STAGES)}; {NAME_HELP}")
        h = int(hyb.group(5))
        extra = dict(stem="hybrid", hybrid_layers=HYBRID_STAGES[(net, stride)])
        return _build(raw, size, int(hyb.group(4) or 1), (h, int(hyb.group(6) or h)), extra)

    parts = name.split("_")
    if len(parts) < 3 or parts[0] not in ("vit", "deit", "beit", "beitv2"):
        raise ValueError(f"unknown model name {raw!r}; {NAME_HELP}")
    family, size = parts[0], SIZE_ALIASES.get(parts[1], parts[1])
    if size not in VARIANTS:
        raise ValueError(f"unknown model size {parts[1]!r} in {raw!r}; sizes: {list(VARIANTS)} "
                         f"(or {list(SIZE_ALIASES)}); {NAME_HELP}")
    patch, res, extra = None, None, {}
    for tok in parts[2:]:
        if m := re.fullmatch(r"patch(\d+)", tok):
            patch = int(m.group(1))
        elif m := re.fullmatch(r"(\d+)(?:x(\d+))?", tok):
            res = (int(m.group(1)), int(m.group(2) or m.group(1)))
        elif m := re.fullmatch(r"reg(\d+)", tok):
            extra["reg_tokens"] = int(m.group(1))
        elif tok == "gap":
            extra.update(pooling="gap", class_token=False)
        elif tok == "distilled":
            extra["distilled"] = True
        elif tok == "clip" and family == "vit":
            extra.update(CLIP)
        elif tok == "siglip" and family == "vit":
            extra.update(SIGLIP)
        else:
            raise ValueError(f"unknown token {tok!r} in model name {raw!r}; {NAME_HELP}")
    if patch is None:
        raise ValueError(f"model name {raw!r} has no patch size ('patch16'); {NAME_HELP}")
    if family == "deit" and size in ("large", "huge"):
        raise ValueError(f"DeiT comes in tiny, small and base sizes, not {size!r} ({raw!r})")
    if family.startswith("beit"):
        extra = {**BEIT, "layer_scale_init": BEIT_LAYER_SCALE.get((family, size), 1e-5), **extra}
    if extra.get("reg_tokens") and family == "vit":
        extra.setdefault("pos_embed_prefix", False)  # timm's register models: no pos-embed on prefix
    return _build(raw, size, patch, res or (DEFAULT_RESOLUTION, DEFAULT_RESOLUTION), extra)


def _build(raw: str, size: str, patch: int, res: tuple[int, int], extra: dict[str, Any]) -> ViTConfig:
    try:
        return ViTConfig(image_size=res, patch_size=patch, **VARIANTS[size], **extra)
    except ValueError as e:
        raise ValueError(f"model name {raw!r}: {e}") from None


def list_models() -> list[str]:
    """The canonical model names: every size at every standard patch size, at 224², plus DeiT, BEiT (v1, v2),
    the CLIP and SigLIP vision towers and timm's ResNet-v2 hybrids at their published sizes (any resolution
    parses: ``beit_large_patch16_512``)."""
    names = [f"vit_{size}_patch{p}_{DEFAULT_RESOLUTION}" for size in VARIANTS for p in PATCH_SIZES]
    names += [f"deit_{s}{d}_patch16_224" for s in ("tiny", "small", "base") for d in ("", "_distilled")]
    names += [f"{f}_{s}_patch16_224" for f in ("beit", "beitv2") for s in ("base", "large")]
    names += [f"vit_{s}_patch16_{t}_224" for t in ("clip", "siglip") for s in ("base", "large")]
    names += ["vit_tiny_r_s16_p8_224", "vit_small_r26_s32_224", "vit_base_r26_s32_224", "vit_base_r50_s16_224",
              "vit_large_r50_s32_224"]
    return names
