"""Building blocks of the ViT, one concept per file."""

from .attention import ATTENTION_IMPLS, Attention
from .drop import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .pos_embed import resample_pos_embed, sincos_2d_pos_embed

__all__ = ["ATTENTION_IMPLS", "Attention", "DropPath", "LayerScale", "Mlp", "PatchEmbed",
           "resample_pos_embed", "sincos_2d_pos_embed"]
