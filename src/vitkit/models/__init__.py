"""Models built on the layers: the ViT, and the factory that builds it from a name or config."""

from .factory import create_model, resolve_config
from .vit import Block, VisionTransformer

__all__ = ["Block", "VisionTransformer", "create_model", "resolve_config"]
