"""Preprocessing from a checkpoint's own settings, against transformers' and timm's pipelines on real photographs.

vitkit resamples with PIL, as transformers' ``*ImageProcessorPil`` and timm's eval transform (torchvision on PIL
images) do: those agree to float rounding. transformers' default processors resample uint8 tensors with torchvision,
whose bicubic/bilinear kernels land one grey level away from PIL's on some pixels: that is 1/255/std after
normalisation (0.0078 for std 0.5, 0.017 for ImageNet's std 0.229), and the bound asserted there.
"""

import pytest
import skimage.data
import timm
import torch
import transformers
from PIL import Image
from timm.data import create_transform, resolve_data_config

import vitkit
from vitkit.weights.pretrained import PRETRAINED
from vitkit.weights.preprocess_cfg import from_hf_processor, from_timm_cfg, to_hf_processor

IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def photos():
    # three real photographs of different sizes and aspect ratios (451x300, 512x512, 400x600)
    return [Image.fromarray(f()) for f in (skimage.data.chelsea, skimage.data.astronaut, skimage.data.coffee)]


def _hf(processor, images):
    return processor(images=images, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("cls,kw,tol", [
    (transformers.ViTImageProcessorPil, {}, 1e-5),
    (transformers.ViTImageProcessor, {}, 1e-2),
    (transformers.DeiTImageProcessorPil, IMAGENET, 1e-5),
    (transformers.DeiTImageProcessor, IMAGENET, 1.01 / 255 / 0.224),  # one grey level under ImageNet std
])
def test_matches_transformers_processors(photos, cls, kw, tol):
    proc = cls(**kw)
    cfg = from_hf_processor(proc.to_dict(), cls.__name__)
    ours, ref = vitkit.preprocess(photos, cfg), _hf(proc, photos)
    assert ours.shape == ref.shape == (3, 3, 224, 224)
    assert (ours - ref).abs().max() <= tol
    assert (ours - ref).abs().mean() <= 1e-3


@pytest.mark.parametrize("name", ["vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_small_patch16_224.augreg_in21k_ft_in1k",
                                  "deit_base_patch16_224.fb_in1k"])
def test_matches_timm_eval_transform(photos, name):
    pcfg = timm.models.get_pretrained_cfg(name).to_dict()
    transform = create_transform(**resolve_data_config({}, pretrained_cfg=pcfg))
    ref = torch.stack([transform(img) for img in photos])
    ours = vitkit.preprocess(photos, from_timm_cfg(pcfg, name))
    assert (ours - ref).abs().max() <= 1e-5


def test_pretrained_table_matches_the_libraries(photos):
    # google/vit-*: transformers' ViTImageProcessor defaults are that checkpoint's settings
    google = PRETRAINED["google/vit-base-patch16-224"].preprocess_cfg()
    assert (vitkit.preprocess(photos, google) - _hf(transformers.ViTImageProcessorPil(), photos)).abs().max() <= 1e-5
    deit = PRETRAINED["facebook/deit-base-distilled-patch16-224"].preprocess_cfg()
    ref = _hf(transformers.DeiTImageProcessorPil(**IMAGENET), photos)
    assert (vitkit.preprocess(photos, deit) - ref).abs().max() <= 1e-5
    augreg = PRETRAINED["timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"].preprocess_cfg()
    assert augreg == from_timm_cfg(timm.models.get_pretrained_cfg("vit_base_patch16_224.augreg2_in21k_ft_in1k")
                                   .to_dict(), "timm")


def test_written_hf_processor_config_reproduces_our_pixels(photos):
    cfg = vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.9, interpolation="bicubic")
    d = to_hf_processor(cfg)
    d.pop("image_processor_type")
    assert (_hf(transformers.DeiTImageProcessorPil(**d), photos) - vitkit.preprocess(photos, cfg)).abs().max() <= 1e-5
    back = from_hf_processor(to_hf_processor(cfg), "x")  # crop_pct comes back as 224/248: the same pixels
    assert torch.equal(vitkit.preprocess(photos, back), vitkit.preprocess(photos, cfg))


def test_modes_are_converted_to_rgb(photos):
    cfg = PRETRAINED["google/vit-base-patch16-224"].preprocess_cfg()
    rgba = photos[0].convert("RGBA")
    grey = photos[0].convert("L")
    assert torch.equal(vitkit.preprocess(rgba, cfg), vitkit.preprocess(photos[0], cfg))
    g = vitkit.preprocess(grey, cfg)
    assert g.shape == (1, 3, 224, 224) and torch.equal(g[:, 0], g[:, 1])


def test_bad_processor_configs_name_the_file():
    with pytest.raises(ValueError, match="p.json: 'resample' 7"):
        from_hf_processor({"resample": 7}, "p.json")
    with pytest.raises(ValueError, match="p.json: field 'size'"):
        from_hf_processor({"size": "big"}, "p.json")
    with pytest.raises(ValueError, match="cfg.json: pretrained_cfg.crop_mode 'border'"):
        from_timm_cfg({"crop_mode": "border"}, "cfg.json")
