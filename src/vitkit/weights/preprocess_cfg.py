"""Translating preprocessing settings between vitkit, transformers and timm.

- transformers ``preprocessor_config.json`` (ViTImageProcessor / DeiTImageProcessor):
  ``size`` {height, width} (squash) or {shortest_edge}, ``resample`` (PIL code),
  ``do_center_crop`` + ``crop_size``, ``do_rescale`` + ``rescale_factor``,
  ``do_normalize`` + ``image_mean``/``image_std``.
- timm ``pretrained_cfg``: ``input_size`` (C, H, W), ``interpolation``, ``crop_pct``,
  ``crop_mode``, ``mean``, ``std``.
"""

from __future__ import annotations

from typing import Any

from ..data.preprocess import PreprocessConfig, scaled_size

PIL_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values
PIL_NAMES = {v: k for k, v in PIL_CODES.items()}


def _hw(d: Any, file: str, field: str) -> tuple[int, int] | int:
    if isinstance(d, int):
        return d
    if isinstance(d, dict):
        if "height" in d and "width" in d:
            return int(d["height"]), int(d["width"])
        if "shortest_edge" in d:
            return int(d["shortest_edge"])
    raise ValueError(f"{file}: field {field!r} must be {{height, width}}, {{shortest_edge}} or an int, got {d!r}")


def from_hf_processor(d: dict[str, Any], file: str) -> PreprocessConfig:
    """A PreprocessConfig from a transformers image processor config (``preprocessor_config.json``)."""
    if not isinstance(d, dict):
        raise ValueError(f"{file}: an image processor config must be a JSON object")
    if "auto_map" in d:
        raise ValueError(f"{file}: has 'auto_map' (custom code); vitkit never imports code from a checkpoint")
    size = _hw(d.get("size", {"height": 224, "width": 224}), file, "size") if d.get("do_resize", True) else None
    crop = _hw(d["crop_size"], file, "crop_size") if d.get("do_center_crop") and "crop_size" in d else None
    resample = d.get("resample", 2)
    if resample not in PIL_CODES:
        raise ValueError(f"{file}: 'resample' {resample!r} is not a PIL filter vitkit supports ({PIL_CODES})")
    kw: dict[str, Any] = dict(interpolation=PIL_CODES[resample])
    if size is None:
        raise ValueError(f"{file}: do_resize is false; vitkit needs a fixed input size")
    if isinstance(size, int):  # shortest edge, then (optionally) a centre crop
        out = crop if crop is not None else (size, size)
        out = (out, out) if isinstance(out, int) else out
        kw.update(size=out, resize="shortest", crop_pct=out[0] / size)
    else:
        if crop is None:
            kw.update(size=size, resize="squash", crop_pct=1.0)
        else:
            crop = (crop, crop) if isinstance(crop, int) else crop
            pct = crop[0] / size[0]
            if abs(crop[1] / size[1] - pct) > 1e-6:
                raise ValueError(f"{file}: crop {crop} of resize {size} crops height and width by different "
                                 "fractions; vitkit's PreprocessConfig cannot express that")
            kw.update(size=crop, resize="squash", crop_pct=pct)
    kw["rescale"] = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
    if d.get("do_normalize", True):
        kw.update(mean=d.get("image_mean", (0.5, 0.5, 0.5)), std=d.get("image_std", (0.5, 0.5, 0.5)))
        if isinstance(kw["mean"], (list, tuple)) and len(kw["mean"]) == 1:  # a processor for 1-channel models
            kw["mode"] = "L"
    else:
        kw.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    try:
        return PreprocessConfig(**kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{file}: {e}") from None


def to_hf_processor(cfg: PreprocessConfig) -> dict[str, Any]:
    """A transformers image processor config that does what ``cfg`` does."""
    h, w = cfg.size
    crop = cfg.crop_pct < 1
    if cfg.resize == "squash" or h != w:
        size = {"height": scaled_size(h, cfg.crop_pct), "width": scaled_size(w, cfg.crop_pct)}
    else:
        size = {"shortest_edge": scaled_size(h, cfg.crop_pct)}
    d: dict[str, Any] = dict(
        image_processor_type="DeiTImageProcessor" if crop or "shortest_edge" in size else "ViTImageProcessor",
        do_resize=True, size=size, resample=PIL_NAMES[cfg.interpolation],
        do_center_crop=crop or "shortest_edge" in size, crop_size={"height": h, "width": w},
        do_rescale=cfg.rescale != 1.0, rescale_factor=cfg.rescale, do_normalize=True,
        image_mean=list(cfg.mean), image_std=list(cfg.std), do_convert_rgb=cfg.mode == "RGB")
    if not d["do_center_crop"]:
        del d["crop_size"]
    return d


def from_timm_cfg(d: dict[str, Any], file: str) -> PreprocessConfig:
    """A PreprocessConfig from a timm ``pretrained_cfg`` (as in a timm hub ``config.json``)."""
    if not isinstance(d, dict):
        raise ValueError(f"{file}: 'pretrained_cfg' must be a JSON object")
    size = d.get("input_size", (3, 224, 224))
    if not (isinstance(size, (list, tuple)) and len(size) == 3):
        raise ValueError(f"{file}: pretrained_cfg.input_size must be [C, H, W], got {size!r}")
    mode = d.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise ValueError(f"{file}: pretrained_cfg.crop_mode {mode!r} is not supported (center, squash)")
    try:
        return PreprocessConfig(size=(int(size[1]), int(size[2])), resize="shortest" if mode == "center" else "squash",
                                crop_pct=float(d.get("crop_pct", 0.875)), interpolation=d.get("interpolation", "bicubic"),
                                mean=d.get("mean", (0.485, 0.456, 0.406)), std=d.get("std", (0.229, 0.224, 0.225)),
                                mode="RGB" if int(size[0]) == 3 else "L")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{file}: pretrained_cfg: {e}") from None


def to_timm_cfg(cfg: PreprocessConfig) -> dict[str, Any]:
    """The preprocessing part of a timm ``pretrained_cfg``."""
    return dict(input_size=[3 if cfg.mode == "RGB" else 1, *cfg.size], interpolation=cfg.interpolation,
                crop_pct=cfg.crop_pct, crop_mode="center" if cfg.resize == "shortest" else "squash",
                mean=list(cfg.mean), std=list(cfg.std))
