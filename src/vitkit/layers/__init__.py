"""Building blocks of the ViT, one concept per file."""

from .attention import ATTENTION_IMPLS, Attention
from .attention_pool import AttentionPool
from .drop import DropPath
from .flexi import resize_patch_kernel
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .hybrid_stem import HybridEmbed
from .pos_embed import resample_pos_embed, sincos_2d_pos_embed
from .rel_pos import RelPosBias, rel_pos_index, resize_rel_pos_table

__all__ = ["ATTENTION_IMPLS", "Attention", "AttentionPool", "DropPath", "HybridEmbed", "LayerScale", "Mlp", "PatchEmbed",
           "RelPosBias", "rel_pos_index", "resample_pos_embed", "resize_patch_kernel", "resize_rel_pos_table",
           "sincos_2d_pos_embed"]
