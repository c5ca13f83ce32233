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


# --- the parts, one by one (each case failed a mutation of the code that the pipeline-level tests missed) --------
def test_preprocess_gives_float32_for_rgb_and_grey():
    import numpy as np

    rgb = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    for img, mode, mean, std in ((rgb, "RGB", (0.5,) * 3, (0.25,) * 3), (rgb.convert("L"), "L", (0.5,), (0.25,))):
        cfg = vitkit.PreprocessConfig(size=4, mode=mode, mean=mean, std=std, interpolation="nearest")
        x = vitkit.preprocess(img, cfg)
        assert x.dtype == torch.float32 and x.shape == (1, len(mean), 4, 4)
        want = (np.asarray(img, np.float32).reshape(4, 4, -1) / 255 - 0.5) / 0.25
        assert torch.equal(x[0], torch.from_numpy(want.transpose(2, 0, 1)))


def test_config_dict_is_plain_json_and_yaml_and_checks_its_keys():
    import json

    import yaml

    from vitkit.data.preprocess import PreprocessConfig

    cfg = PreprocessConfig(size=(224, 160), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), crop_pct=0.875)
    d = cfg.to_dict()
    assert d["size"] == [224, 160] and d["mean"] == [0.1, 0.2, 0.3] and d["std"] == [0.4, 0.5, 0.6]
    assert PreprocessConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match=r"unknown PreprocessConfig field\(s\) \['colour'\]"):
        PreprocessConfig.from_dict({**d, "colour": 1})


def test_scaled_size_keeps_exact_ratios_and_floors_the_rest():
    from vitkit.data.preprocess import scaled_size

    assert 100 / (100 / 166) < 166 and scaled_size(100, 100 / 166) == 166  # 165.99999999999997 is 166
    assert scaled_size(224, 0.875) == 256 and scaled_size(224, 0.9) == 248  # 248.88 floors
    assert scaled_size(224, 1.0) == 224


def test_squash_with_a_crop_resamples_with_the_configured_filter():
    import numpy as np

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    for interp, resample in (("nearest", Image.Resampling.NEAREST), ("bilinear", Image.Resampling.BILINEAR)):
        for cfg in (vitkit.PreprocessConfig(size=(20, 24), crop_pct=0.8, interpolation=interp),  # not square
                    vitkit.PreprocessConfig(size=20, crop_pct=0.8, resize="squash", interpolation=interp)):
            h, w = cfg.size
            big = img.resize((w * 5 // 4, h * 5 // 4), resample)  # size / crop_pct, then the centre crop
            left, top = round((big.width - w) / 2), round((big.height - h) / 2)  # torchvision's CenterCrop
            want = np.asarray(big.crop((left, top, left + w, top + h)))
            assert np.array_equal(np.asarray(vitkit.data.preprocess.resize_crop(img, cfg)), want), (interp, cfg)
    shortest = vitkit.PreprocessConfig(size=20, crop_pct=0.8, resize="shortest", interpolation="nearest")
    big = img.resize((25 * 53 // 37, 25), Image.Resampling.NEAREST)  # the short edge (37) to 25
    left = round((big.width - 20) / 2)
    assert np.array_equal(np.asarray(vitkit.data.preprocess.resize_crop(img, shortest)),
                          np.asarray(big.crop((left, 2, left + 20, 22))))


def test_a_one_pixel_target_averages_the_whole_image():
    import numpy as np

    wide = Image.fromarray(np.tile(np.linspace(0, 255, 5).astype(np.uint8), (3, 1)))  # 5 wide, 3 high
    cfg = vitkit.PreprocessConfig(size=1, mode="L", mean=(0.0,), std=(1.0,), resize="shortest",
                                  interpolation="bilinear")
    for ramp in (wide, wide.transpose(Image.Transpose.TRANSPOSE)):  # and 3 wide, 5 high
        x = vitkit.preprocess(ramp, cfg)
        want = np.asarray(ramp.resize((1, 1), Image.Resampling.BILINEAR))[0, 0]
        assert x.shape == (1, 1, 1, 1) and abs(float(x) * 255 - want) < 1e-4


def test_the_window_threshold_is_inclusive(monkeypatch):
    """An intermediate of exactly MAX_RESIZE_FACTOR x the crop's area is still resized whole."""
    import numpy as np

    from vitkit.data.preprocess import MAX_RESIZE_FACTOR

    sizes = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(tuple(size)) or
                        real(self, size, *a, **k))
    long = MAX_RESIZE_FACTOR * 224 * 224 // 256  # 256 x long = the threshold
    img = Image.fromarray(np.zeros((long, 256, 3), np.uint8))
    vitkit.preprocess(img, vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.875))
    assert sizes == [(256, long)]
    sizes.clear()
    img = Image.fromarray(np.zeros((long + 8, 256, 3), np.uint8))  # past it: only the window
    vitkit.preprocess(img, vitkit.PreprocessConfig(size=224, resize="shortest", crop_pct=0.875))
    assert sizes and all(s[0] * s[1] < 256 * long for s in sizes)


@pytest.mark.parametrize("kw,match", [
    (dict(size=(0, 5)), "size"), (dict(size=(5, 0)), "size"), (dict(size=(4, 4, 4)), "size"),
    (dict(crop_pct=0.0), "crop_pct"), (dict(crop_pct=1.5), "crop_pct"),
    (dict(mean=(0.5, 0.5)), "mean"), (dict(std=(0.5, 0.5)), "std"), (dict(std=(0.5, 0.0, 0.5)), "std"),
])
def test_bad_preprocess_configs_are_refused(kw, match):
    from vitkit.data.preprocess import PreprocessConfig

    with pytest.raises(ValueError, match=match):
        PreprocessConfig(**{"size": 8, **kw})


@pytest.mark.parametrize("interp", ["bicubic", "bilinear", "lanczos", "nearest"])
@pytest.mark.parametrize("size,window", [((56, 746), (0, 300, 56, 356)), ((400, 5000), (100, 2000, 300, 2200))])
def test_the_resized_window_is_the_window_of_the_full_resize(interp, size, window):
    """Downscaling (scale 5.4) and upscaling (0.8) of a noisy image: the filter's whole reach is cropped."""
    import numpy as np

    from vitkit.data.preprocess import INTERPOLATIONS, _resized_window

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (4000, 300, 3), dtype=np.uint8))
    mode = INTERPOLATIONS[interp]
    want = np.asarray(img.resize(size, mode).crop(window)).astype(int)
    got = np.asarray(_resized_window(img, size, window, mode)).astype(int)
    assert got.shape == want.shape
    if interp == "nearest":  # a sample exactly on a pixel edge (every 5th row at scale 0.8) may pick the other
        assert (got != want).any(-1).mean() < 0.1  # pixel: PIL holds the box in float32
    else:
        assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.3, np.abs(got - want).max()
