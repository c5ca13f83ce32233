"""create_model: a name, a config (object, dict or JSON file) -> a VisionTransformer."""

from __future__ import annotations

import os
from typing import Any

from ..config import ViTConfig, parse_model_name
from ..utils.jsonfile import read_json
from .vit import VisionTransformer


def resolve_config(name_or_config: str | os.PathLike | dict | ViTConfig, **overrides: Any) -> ViTConfig:
    """The ViTConfig for a model name (``"B/16"``), a ViTConfig, a dict, or a JSON config file."""
    src = name_or_config
    if isinstance(src, ViTConfig):
        cfg = src
    elif isinstance(src, dict):
        cfg = ViTConfig.from_dict(src)
    elif isinstance(src, (str, os.PathLike)) and (os.path.isfile(src) or str(src).endswith(".json")):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        data = read_json(path)
        cfg = ViTConfig.from_dict(data.get("model", data))
    elif isinstance(src, str):
        cfg = parse_model_name(src)
    else:
        raise TypeError(f"expected a model name, a ViTConfig, a dict or a .json path, got {type(src).__name__}")
    return cfg.replace(**overrides) if overrides else cfg


def create_model(name_or_config: str | os.PathLike | dict | ViTConfig, **overrides: Any) -> VisionTransformer:
    """Build a randomly initialised ViT.

    >>> create_model("vit_tiny_patch16_224")            # by name
    >>> create_model("B/16", num_classes=10, image_size=384)
    >>> create_model(ViTConfig(image_size=32, patch_size=4, width=192, depth=12, heads=3))
    """
    return VisionTransformer(resolve_config(name_or_config, **overrides))
