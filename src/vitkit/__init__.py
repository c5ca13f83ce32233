"""vitkit: Vision Transformers (ViT) on PyTorch, from building to training to serving.

>>> import vitkit
>>> model = vitkit.create_model("vit_base_patch16_224")
>>> vitkit.list_models()[:3]
"""

from .config import VARIANTS, ViTConfig, list_models, parse_model_name
from .layers import resample_pos_embed
from .data.preprocess import PreprocessConfig, preprocess
from .models import VisionTransformer, create_model
from .weights.api import load, save
from .weights.pretrained import list_pretrained
from .inference.pipeline import pipeline

__version__ = "0.1.0"

__all__ = ["VARIANTS", "PreprocessConfig", "ViTConfig", "VisionTransformer", "create_model", "list_models",
           "list_pretrained", "load", "parse_model_name", "pipeline", "preprocess", "resample_pos_embed", "save",
           "__version__"]
