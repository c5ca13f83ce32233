"""Inference: the classification pipeline, devices and precisions, feature extraction."""

from .device import resolve_device, resolve_dtype
from .features import POOLS, extract_features, pool_tokens
from .images import IMAGE_EXTENSIONS, list_images
from .pipeline import ImageClassificationPipeline, ModelRunner, Result, class_names, default_preprocess_cfg, pipeline

__all__ = ["IMAGE_EXTENSIONS", "ImageClassificationPipeline", "ModelRunner", "POOLS", "Result", "class_names",
           "default_preprocess_cfg", "extract_features", "list_images", "pipeline", "pool_tokens",
           "resolve_device", "resolve_dtype"]
