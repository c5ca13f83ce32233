"""A new user's checkpoints and commands that the feature tests did not cover (QA pass on issues 3 and 5)."""

import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

import vitkit
from vitkit.cli.main import main

from helpers import tiny_cfg
from weights_helpers import max_diff, randomise

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timm(**kw):
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=1, num_classes=3)  # heads = 64/64
    args.update(kw)
    return randomise(TimmViT(**args)).eval()


def test_non_square_timm_state_dict_loads_when_image_size_is_given(tmp_path, capsys):
    # timm.create_model(..., img_size=(224, 320)) saved as a plain state dict: the grid is not square, so the
    # size cannot be guessed; the error says "pass image_size=(H, W)", and doing so must work
    theirs = _timm(img_size=(32, 48))
    save_file(theirs.state_dict(), tmp_path / "ns.safetensors")
    ours = vitkit.load(tmp_path / "ns.safetensors", image_size=(32, 48), heads=4)
    assert ours.cfg.image_hw == (32, 48)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-5
    assert main(["convert", str(tmp_path / "ns.safetensors"), str(tmp_path / "out"), "--image-size", "32", "48",
                 "--heads", "4"]) == 0
    assert "image 32x48" in capsys.readouterr().out


def test_grey_checkpoints_without_preprocessing_get_grey_preprocessing(tmp_path):
    # 1-channel peers saved without any preprocessing file: predict must feed them 1-channel images
    from transformers import ViTConfig as HFConfig, ViTForImageClassification

    hf = ViTForImageClassification(HFConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=64, image_size=32, patch_size=8, num_channels=1,
                                            num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "hf")
    save_file(_timm(in_chans=1).state_dict(), tmp_path / "t.safetensors")
    img = Image.fromarray(np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3) % 251)
    for src, kw in ((tmp_path / "hf", {}), (tmp_path / "t.safetensors", {"heads": 4})):
        model = vitkit.load(src, **kw)
        assert model.preprocess_cfg.mode == "L" and len(model.preprocess_cfg.mean) == 1
        preds = model.predict(img, topk=3)
        assert len(preds) == 3 and abs(sum(p for _, p in preds) - 1) < 1e-5
    # and a grey image processor saved beside the HF model (one mean/std value) is read as grey
    from transformers import ViTImageProcessorPil

    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.25], image_std=[0.5],
                         do_convert_rgb=False).save_pretrained(tmp_path / "hf")
    pre = vitkit.load(tmp_path / "hf").preprocess_cfg
    assert (pre.mode, pre.mean, pre.std) == ("L", (0.25,), (0.5,))


def test_convert_to_a_file_in_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    vitkit.save(vitkit.create_model(tiny_cfg()), tmp_path / "src")
    for name in ("m.safetensors", "m.npz", "m.pth"):
        dst = tmp_path / "no such dir" / name
        assert main(["convert", str(tmp_path / "src"), str(dst)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vitkit: error:") and "Traceback" not in err
        assert "no such dir" in err and "does not exist" in err and ".tmp" not in err
    assert not (tmp_path / "no such dir").exists()


def test_export_at_another_size_from_a_checkpoint(tmp_path, capsys):
    # `vitkit export --size` on a saved checkpoint: the CLI user cannot set dynamic_img_size on it
    model = randomise(vitkit.create_model(tiny_cfg())).eval()
    vitkit.save(model, tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--onnx", str(tmp_path / "m.onnx"), "--size", "48x64"]) == 0
    assert "input 1x3x48x64" in capsys.readouterr().out
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": np.zeros((1, 3, 48, 64), np.float32)})[0].shape == (1, 5)


def test_mistyped_local_path_says_it_is_not_a_local_path(tmp_path, monkeypatch, capsys):
    # 'models/vit' (a relative folder that is not there) is also a valid hub id: the message must say both
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "mymodels/vit", "out"]) == 2
    err = capsys.readouterr().err
    assert "no local file or folder 'mymodels/vit'" in err and "not in the Hugging Face cache" in err


def test_bad_max_pixels_is_one_error_not_a_skip_per_image(tmp_path, capsys):
    vitkit.save(vitkit.create_model(tiny_cfg()), tmp_path / "m")
    for i in range(2):
        Image.new("RGB", (40, 30)).save(tmp_path / f"{i}.png")
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "0.png"), str(tmp_path / "1.png"),
                 "--max-pixels", "-1"]) == 2
    err = capsys.readouterr().err
    assert "skipped" not in err and err.count("max_pixels must be a positive int or None") == 1


def test_distilled_model_saved_as_timm_folder_loads_in_timm(tmp_path):
    # the folder's architecture must be a DeiT distilled one: timm's plain VisionTransformer has no dist_token
    import timm

    ours = randomise(vitkit.create_model(tiny_cfg(distilled=True))).eval()
    vitkit.save(ours, tmp_path / "folder", format="timm")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), theirs(x)) <= 1e-5
    # what timm's distilled class cannot build is refused before anything is written
    reg = vitkit.create_model(tiny_cfg(distilled=True, reg_tokens=2))
    try:
        vitkit.save(reg, tmp_path / "reg", format="timm")
        raise AssertionError("a distilled model with registers was written as a timm folder")
    except ValueError as e:
        assert "distilled" in str(e)
    assert not (tmp_path / "reg").exists()


def test_convert_onto_an_existing_folder_named_like_a_file(tmp_path, capsys):
    vitkit.save(vitkit.create_model(tiny_cfg()), tmp_path / "src")
    (tmp_path / "m.npz").mkdir()
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "m.npz"), "--force"]) == 2
    err = capsys.readouterr().err
    assert "m.npz' is a folder" in err and ".tmp" not in err
    assert (tmp_path / "m.npz").is_dir()


def test_non_square_foreign_npz_loads_when_image_size_is_given(tmp_path):
    # a Google-style npz (no vitkit config inside) of a 32x48 model: 4*6 + 1 = 25 rows also read as a 5x5 grid
    from vitkit.weights.convert_npz import CONFIG_KEY

    ours = randomise(vitkit.create_model(tiny_cfg(image_size=(32, 48), act="gelu_tanh"))).eval()
    vitkit.save(ours, tmp_path / "m.npz", format="npz")
    arrays = dict(np.load(tmp_path / "m.npz"))
    del arrays[CONFIG_KEY]
    np.savez(tmp_path / "google.npz", **arrays)
    back = vitkit.load(tmp_path / "google.npz", image_size=(32, 48), heads=4)
    assert back.cfg.image_hw == (32, 48) and back.cfg.pos_embed_prefix
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert max_diff(back(x), ours(x)) <= 1e-5


def test_hf_id2label_with_a_gap_does_not_shift_names(tmp_path):
    # id2label {0: a, 1: b, 5: z} on a 3-class head: class 2 has no name; 'z' (class 5) must not become class 2's
    import json

    from transformers import ViTConfig as HFConfig, ViTForImageClassification

    ViTForImageClassification(HFConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=64, image_size=32, patch_size=8,
                                       num_labels=3)).save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "a", "1": "b", "5": "z"}, {"a": 0, "b": 1, "z": 5}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    model = vitkit.load(tmp_path / "hf")
    assert model.labels != ["a", "b", "z"]
    assert [lab for lab, _ in vitkit.pipeline(model)(Image.new("RGB", (32, 32)), topk=3)] != []
    cfg["id2label"] = {"1": "b", "0": "a", "2": "c"}  # order in the file does not matter
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    assert vitkit.load(tmp_path / "hf").labels == ["a", "b", "c"]


def test_explain_of_a_model_without_cls_does_not_claim_cls_attention(tmp_path, capsys):
    cfg = tiny_cfg(class_token=False, pooling="gap", reg_tokens=2, pos_embed_prefix=False)
    vitkit.save(randomise(vitkit.create_model(cfg)).eval(), tmp_path / "m")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    assert main(["explain", str(tmp_path / "m"), str(tmp_path / "a.png"), "--out", str(tmp_path / "e.png")]) == 0
    out = capsys.readouterr().out
    assert "[CLS]" not in out and "mean patch-query attention, layer 1" in out
