"""Pretrained names and the Hugging Face cache: offline loads from a cache the test writes itself."""

import json

import pytest
import timm
import torch
import transformers
from safetensors.torch import save_file

import vitkit
from vitkit.data.imagenet import imagenet1k_classes
from vitkit.weights import PRETRAINED, list_pretrained

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _snapshot(cache, repo_id):
    """The folder huggingface_hub's cache keeps a repository's files in (refs/main -> snapshots/<commit>)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


def test_table_lists_the_well_known_checkpoints():
    need = ["google/vit-base-patch16-224", "google/vit-base-patch16-224-in21k", "google/vit-large-patch16-224",
            "facebook/vit-mae-base", "facebook/dino-vitb16", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
            "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"]
    need += [f"facebook/deit-{s}{d}-patch16-224" for s in ("tiny", "small", "base") for d in ("", "-distilled")]
    assert set(need) <= set(list_pretrained())
    for entry in PRETRAINED.values():
        assert entry.license and entry.preprocess_cfg().size == (224, 224)


def test_hub_id_loads_offline_from_the_cache(tmp_path, offline):
    theirs = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=1000))).eval()
    theirs.save_pretrained(_snapshot(tmp_path, "google/vit-base-patch16-224"))
    ours = vitkit.load("google/vit-base-patch16-224", cache_dir=tmp_path)
    assert ours.load_info["format"] == "hf" and ours.load_info["preprocess_source"] == "vitkit pretrained table"
    assert ours.preprocess_cfg == PRETRAINED["google/vit-base-patch16-224"].preprocess_cfg()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(pixel_values=x).logits) <= 1e-5


def test_timm_alias_loads_offline_with_its_pretrained_cfg(tmp_path, offline):
    m = randomise(timm.create_model("vit_small_patch16_224", num_classes=1000, depth=1)).eval()
    snap = _snapshot(tmp_path, "timm/vit_small_patch16_224.augreg_in21k_ft_in1k")
    save_file(m.state_dict(), snap / "model.safetensors")
    pcfg = timm.models.get_pretrained_cfg("vit_small_patch16_224.augreg_in21k_ft_in1k").to_dict()
    (snap / "config.json").write_text(json.dumps(dict(
        architecture="vit_small_patch16_224", num_classes=1000, num_features=384, global_pool="token",
        pretrained_cfg={k: v for k, v in pcfg.items() if k in ("input_size", "interpolation", "crop_pct", "crop_mode",
                                                                 "mean", "std", "num_classes")})))
    ours = vitkit.load("vit_small_patch16_224.augreg_in21k_ft_in1k", cache_dir=tmp_path)
    assert ours.cfg.heads == 6 and ours.preprocess_cfg.crop_pct == 0.9
    assert ours.labels == imagenet1k_classes() and ours.labels[0] == "tench, Tinca tinca"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_diff(ours(x), m(x)) <= 1e-5


def test_missing_from_cache_offline_is_a_clear_error(tmp_path, offline):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        vitkit.load("google/vit-large-patch16-224", cache_dir=tmp_path)


def test_not_a_path_nor_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vitkit.load(str(tmp_path / "nope" / "deeper" / "x.pth"))


def test_1k_class_checkpoints_without_names_get_imagenet_names(tmp_path):
    model = vitkit.create_model(tiny_cfg(num_classes=1000))
    torch.save(model.state_dict(), tmp_path / "m.pth")  # a bare state dict: no names, no config
    back = vitkit.load(tmp_path / "m.pth", heads=4)
    assert back.labels == imagenet1k_classes()  # 1k-class checkpoints get ImageNet names
