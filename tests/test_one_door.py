"""One door: every format the table knows, written by its peer library itself (random weights), in fp32, fp16 and
bf16, through every command that loads a model; training checkpoints as models; fine-tuning from a pretrained
checkpoint end to end, as README tells it."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vitkit
from vitkit.cli.main import main
from vitkit.weights.formats import FORMATS, detect

from weights_helpers import max_diff, randomise

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# a tiny ViT every peer can build: width 64 (no published width: a bare timm state dict must be told its 4 heads)
W, DEPTH, HEADS, PATCH, SIZE, CLASSES = 64, 1, 4, 8, 32, 3


def _hf(dtype, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    from transformers import ViTConfig as HFConfig, ViTForImageClassification

    m = ViTForImageClassification(HFConfig(hidden_size=W, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                           intermediate_size=2 * W, image_size=SIZE, patch_size=PATCH,
                                           num_labels=CLASSES, layer_norm_eps=1e-6))
    m.config.id2label = {0: "cat", 1: "dog", 2: "owl"}
    m.config.label2id = {v: k for k, v in m.config.id2label.items()}
    return randomise(m).to(dtype).eval()


def _timm(dtype):
    import timm

    return randomise(timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=PATCH, embed_dim=W,
                                       depth=DEPTH, num_heads=HEADS, mlp_ratio=2, num_classes=CLASSES)).to(dtype).eval()


def _write(kind: str, dtype: torch.dtype, root) -> tuple[object, torch.nn.Module | None, dict]:
    """(path, the peer model for a parity check or None, extra vitkit.load kwargs) of one format in ``dtype``."""
    p = root / kind
    if kind == "hf":
        peer = _hf(dtype)
        peer.save_pretrained(p)
        return p, peer, {}
    if kind in ("timm-safetensors", "timm-pth", "timm-folder"):
        peer = _timm(dtype)
        if kind == "timm-safetensors":
            save_file(peer.state_dict(), root / "t.safetensors")
            return root / "t.safetensors", peer, {"heads": HEADS}
        if kind == "timm-pth":
            torch.save(peer.state_dict(), root / "t.pth")
            return root / "t.pth", peer, {"heads": HEADS}
        from timm.models._hub import save_for_hf

        save_for_hf(peer, str(p))
        return p, peer, {}
    if kind == "npz":
        ours = randomise(vitkit.create_model(vitkit.ViTConfig(image_size=SIZE, patch_size=PATCH, width=W,
                                                              depth=DEPTH, heads=HEADS, num_classes=CLASSES)))
        vitkit.save(ours, root / "m.npz", format="npz")
        with np.load(root / "m.npz") as z:
            arrays = {k: (z[k].astype(np.float16) if dtype != torch.float32 and z[k].dtype == np.float32 else z[k])
                      for k in z.files}
        np.savez(root / "half.npz", **arrays)  # numpy has no bf16: both half dtypes are written as float16
        return root / "half.npz", None, {}
    if kind == "vitkit":
        ours = randomise(vitkit.create_model(vitkit.ViTConfig(image_size=SIZE, patch_size=PATCH, width=W,
                                                              depth=DEPTH, heads=HEADS, num_classes=CLASSES,
                                                              labels=["a", "b", "c"]))).to(dtype)
        vitkit.save(ours, p)
        return p, None, {}
    raise AssertionError(kind)


KINDS = ["hf", "timm-safetensors", "timm-pth", "timm-folder", "npz", "vitkit"]


def _photo(path, seed=0, size=(40, 52)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
def test_every_format_every_dtype_loads_in_fp32_with_parity_and_predicts(kind, dtype, tmp_path, caplog, capsys):
    path, peer, kw = _write(kind, DTYPES[dtype], tmp_path)
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        model = vitkit.load(path, **kw)
    assert next(model.parameters()).dtype == torch.float32  # cast to the run's dtype, fp32 by default
    cast_lines = [r.getMessage() for r in caplog.records if "cast to float32" in r.getMessage()]
    if dtype != "fp32":
        assert len(cast_lines) == 1 and str(path) in cast_lines[0]  # said in one line, naming the file
    else:
        assert not cast_lines
    if peer is not None:  # the same logits as the peer's own forward pass, on the peer's own (rounded) weights
        x = torch.randn(2, 3, SIZE, SIZE)
        with torch.no_grad():
            theirs = peer.float()(x)
            theirs = theirs.logits if hasattr(theirs, "logits") else theirs
            assert max_diff(model(x), theirs) <= 1e-4
    img = _photo(tmp_path / "p.png")
    flags = [f"--heads={kw['heads']}"] if "heads" in kw else []
    assert main(["predict", str(path), str(img), "--topk", "2", *flags]) == 0
    assert main(["features", str(path), str(img), "--out", str(tmp_path / "f.npy"), *flags]) == 0
    assert np.load(tmp_path / "f.npy").shape == (1, W)
    assert main(["explain", str(path), str(img), "--out", str(tmp_path / "e.png"), *flags]) == 0
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_through_convert_export_eval_bench_and_train(kind, tmp_path, capsys):
    path, _, kw = _write(kind, torch.float16, tmp_path)
    flags = [f"--heads={kw['heads']}"] if "heads" in kw else []
    ref = vitkit.load(path, **kw)
    assert main(["convert", str(path), str(tmp_path / "conv"), *flags]) == 0
    back = vitkit.load(tmp_path / "conv")
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert max_diff(back(x), ref(x)) <= 1e-6  # the same weights (memory layout may differ: fp32 rounding)
    assert main(["export", str(path), "--onnx", str(tmp_path / "m.onnx"), *flags]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    from vitkit.bench.options import BenchOptions
    from vitkit.bench.runner import bench_config

    assert bench_config(BenchOptions(model=str(tmp_path / "conv")), None).width == W  # bench reads checkpoints too
    data = _class_folder(tmp_path / "data", ref.cfg.labels or [f"class_{i}" for i in range(CLASSES)], n=4)
    assert main(["eval", str(path), "--data", str(data), "--out", str(tmp_path / "ev"), *flags]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["n"] == 4 * CLASSES
    run = tmp_path / "run"
    assert main(["train", "--model", str(path), "--data", str(data), "--steps", "2", "--batch-size", "4",
                 "--out", str(run), "--no-progress", "--threads", "1", "--workers", "0", *flags]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning from" in out
    tuned = vitkit.load(run / "model")
    assert (tuned.cfg.width, tuned.cfg.heads) == (W, HEADS) and tuned.cfg.labels == sorted(set(tuned.cfg.labels))
    assert tuned.preprocess_cfg.mean == ref.preprocess_cfg.mean and tuned.preprocess_cfg.std == ref.preprocess_cfg.std


def _class_folder(root, classes, n=2, size=(36, 44)):
    for i, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            _photo(d / f"{k}.png", seed=10 * i + k, size=size)
    return root


def test_detection_is_by_content_not_by_name(tmp_path):
    peer = _timm(torch.float32)
    save_file(peer.state_dict(), tmp_path / "weights.bin")  # safetensors bytes behind a pickle's name
    torch.save(peer.state_dict(), tmp_path / "weights.safetensors")  # and the other way round
    for name in ("weights.bin", "weights.safetensors"):
        assert detect(tmp_path / name).name == "timm"
        assert vitkit.load(tmp_path / name, heads=HEADS).cfg.heads == HEADS
    vitkit.save(vitkit.load(tmp_path / "weights.bin", heads=HEADS), tmp_path / "m.npz", format="npz")
    shutil.copy(tmp_path / "m.npz", tmp_path / "renamed.dat")
    assert detect(tmp_path / "renamed.dat").name == "npz"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError) as e:
        vitkit.load(tmp_path / "junk.pth")
    msg = str(e.value)
    assert "junk.pth" in msg and all(f.name in msg for f in FORMATS)  # says what each entry looked for
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        vitkit.load(tmp_path / "empty")


def test_bare_timm_head_count_decided_by_shapes_or_refused_with_the_flag(tmp_path, capsys):
    import timm

    peer = _timm(torch.float32)
    save_file(peer.state_dict(), tmp_path / "w128.safetensors")
    with pytest.raises(ValueError, match=r"heads=N \(CLI: --heads N\).*4 \(head width 16\)"):
        vitkit.load(tmp_path / "w128.safetensors")
    assert main(["predict", str(tmp_path / "w128.safetensors"), str(_photo(tmp_path / "p.png"))]) == 2
    assert "--heads N" in capsys.readouterr().err
    # a published width decides it: ViT-S's 384 has 6 heads at any depth
    small = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=2)
    save_file(small.state_dict(), tmp_path / "s.safetensors")
    got = vitkit.load(tmp_path / "s.safetensors")
    assert got.cfg.heads == 6 and any("6 heads" in n for n in got.load_info["notes"])
    # an override that contradicts what the file says is refused, not applied
    peer_hf = _hf(torch.float32)
    peer_hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="says heads=4"):
        vitkit.load(tmp_path / "hf", heads=2)
    with pytest.raises(ValueError, match="says pooling='cls'"):
        vitkit.load(tmp_path / "hf", pooling="gap")


def test_integer_tensor_in_a_float_slot_is_refused(tmp_path):
    peer = _timm(torch.float32)
    sd = peer.state_dict()
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"].view(torch.int32)  # same bytes, relabelled
    save_file(sd, tmp_path / "relabelled.safetensors")
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn\.qkv\.weight' \(int32\)"):
        vitkit.load(tmp_path / "relabelled.safetensors", heads=HEADS)
    mixed = {k: (v.half() if i % 2 else v) for i, (k, v) in enumerate(peer.state_dict().items())}
    save_file(mixed, tmp_path / "mixed.safetensors")
    m = vitkit.load(tmp_path / "mixed.safetensors", heads=HEADS)
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    assert any("float16, float32, cast to float32" in n for n in m.load_info["notes"])


def test_load_dtype_option_keeps_half_precision_when_asked(tmp_path):
    peer = _hf(torch.float32)
    peer.save_pretrained(tmp_path / "hf")
    m = vitkit.load(tmp_path / "hf", dtype="bf16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="unknown dtype"):
        vitkit.load(tmp_path / "hf", dtype="int8")


def _train_run(tmp_path, capsys, width=64, heads=4):
    data = _class_folder(tmp_path / "data", ["ant", "bee", "cow"], n=6, size=(16, 16))
    run = tmp_path / "run"
    assert main(["train", "--model", "vit_tiny_patch4_16", "--model-set", f"width={width},depth=2,heads={heads}",
                 "--data", str(data), "--epochs", "2", "--batch-size", "6", "--out", str(run), "--no-progress",
                 "--threads", "1", "--workers", "0", "--ema", "0.5"]) == 0
    capsys.readouterr()
    return run, data


def test_training_checkpoint_loads_as_trained_with_its_classes_and_predicts_like_the_run(tmp_path, capsys):
    run, data = _train_run(tmp_path, capsys)
    saved = vitkit.load(run / "model")
    last = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    for src in (last, run / "checkpoints" / "best.pt"):
        ck = vitkit.load(src)
        assert ck.load_info["format"] == "train-checkpoint"
        assert (ck.cfg.width, ck.cfg.heads, ck.cfg.depth) == (64, 4, 2)  # never a guessed head count
        assert ck.cfg.labels == ["ant", "bee", "cow"]
        assert ck.preprocess_cfg == saved.preprocess_cfg
    ck = vitkit.load(last)  # the last checkpoint holds the weights the run saved as its model (EMA or not)
    assert ck.load_info["weights_used"] == json.loads((run / "summary.json").read_text())["model_weights"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert max_diff(ck(x), saved(x)) == 0
    img = next((data / "bee").iterdir())
    assert main(["predict", str(last), str(img), "--json", str(tmp_path / "p.json")]) == 0
    pred = json.loads((tmp_path / "p.json").read_text())["results"][0]["predictions"][0]["label"]
    assert pred == saved.predict(img, topk=1)[0][0] and pred in ("ant", "bee", "cow")
    assert main(["eval", str(last), "--data", str(data)]) == 0  # goes into the run's folder
    assert (run / f"eval-data-{last.stem}" / "results.json").is_file()
    assert detect(run).name == "run" and vitkit.load(run).cfg.labels == ["ant", "bee", "cow"]


def test_fine_tune_from_a_transformers_checkpoint_end_to_end(tmp_path, capsys):
    """README's story: a transformers ViT saved with save_pretrained + an ImageNet-normalised processor ->
    train -> eval -> predict -> export; the result carries the checkpoint's mean/std and the folder's classes."""
    hf = _hf(torch.float32)
    hf.save_pretrained(tmp_path / "hf")
    imagenet = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(dict(
        image_processor_type="ViTImageProcessor", do_resize=True, size={"height": SIZE, "width": SIZE}, resample=3,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=imagenet["mean"],
        image_std=imagenet["std"])))
    data = _class_folder(tmp_path / "photos", ["fern", "moss"], n=4, size=(50, 40))
    run = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "hf"), "--data", str(data), "--epochs", "2", "--batch-size",
                 "4", "--out", str(run), "--no-progress", "--threads", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "head replaced: 3 -> 2 classes" in out and "preprocessing kept from the checkpoint" in out
    tuned = vitkit.load(run / "model")
    assert tuned.cfg.labels == ["fern", "moss"]
    assert tuned.preprocess_cfg.mean == tuple(imagenet["mean"]) and tuned.preprocess_cfg.std == tuple(imagenet["std"])
    assert tuned.preprocess_cfg.interpolation == "bicubic"
    assert (tuned.cfg.norm_eps, tuned.cfg.heads) == (1e-6, HEADS)
    assert main(["eval", str(run), "--data", str(data)]) == 0
    assert main(["predict", str(run / "model"), str(data / "moss"), "--csv", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("image,rank,label") and any(",fern," in r or ",moss," in r for r in rows[1:])
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    # the new --image-size resamples the position embedding and the preprocessing follows
    assert main(["train", "--model", str(tmp_path / "hf"), "--data", str(data), "--steps", "1", "--batch-size", "4",
                 "--image-size", "48", "--out", str(tmp_path / "run48"), "--no-progress", "--threads", "1",
                 "--workers", "0"]) == 0
    big = vitkit.load(tmp_path / "run48" / "model")
    assert big.cfg.image_hw == (48, 48) and big.preprocess_cfg.size == (48, 48)
    assert "position embedding resampled: grid 4x4 -> 6x6" in capsys.readouterr().out


def test_absurd_config_refused_before_training_allocates(tmp_path):
    from vitkit.train.model_setup import build_model

    with pytest.raises(ValueError, match="refused before allocating"):
        build_model("vit_base_patch16_224", ["a", "b"], 3, overrides=dict(width=8192, depth=48, heads=64))


def test_fine_tuning_from_a_half_precision_timm_file_trains_in_fp32(tmp_path, capsys):
    peer = _timm(torch.bfloat16)
    torch.save(peer.state_dict(), tmp_path / "bf16.pth")
    data = _class_folder(tmp_path / "d", ["x", "y"], n=3)
    assert main(["train", "--model", str(tmp_path / "bf16.pth"), "--heads", "4", "--data", str(data), "--steps", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "r"), "--no-progress", "--threads", "1",
                 "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "bfloat16, cast to float32" in captured.out + captured.err
    assert {p.dtype for p in vitkit.load(tmp_path / "r" / "model").parameters()} == {torch.float32}


def test_npz_keeps_the_checkpoints_preprocessing(tmp_path, capsys):
    hf = _hf(torch.float32)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(dict(
        size={"shortest_edge": 36}, do_center_crop=True, crop_size={"height": SIZE, "width": SIZE}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])))
    src = vitkit.load(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "m.npz")]) == 0
    back = vitkit.load(tmp_path / "m.npz")
    assert back.preprocess_cfg == src.preprocess_cfg and back.cfg.labels == ["cat", "dog", "owl"]
    img = _photo(tmp_path / "p.png", size=(50, 70))
    assert back.predict(img) == src.predict(img)


def test_eval_of_a_run_scores_its_held_out_split_and_checkpoints_write_apart(tmp_path, capsys):
    run, data = _train_run(tmp_path, capsys)  # a folder without val/: the run held out 20 % of it
    assert main(["eval", str(run), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "the run's held-out 20%" in out
    assert json.loads((run / "eval-data" / "results.json").read_text())["n"] == 3  # 1 of 6 per class, not all 18
    assert main(["eval", str(run / "checkpoints" / "best.pt"), "--data", str(data)]) == 0
    assert (run / "eval-data-best" / "results.json").is_file() and (run / "eval-data" / "results.json").is_file()
    other = _class_folder(tmp_path / "other", ["ant", "bee", "cow"], n=2, size=(16, 16))
    assert main(["eval", str(run), "--data", str(other)]) == 0  # another source: every image is scored
    assert json.loads((run / "eval-other" / "results.json").read_text())["n"] == 6
    capsys.readouterr()
    assert main(["convert", str(run), str(tmp_path / "conv")]) == 0
    assert "(run)" in capsys.readouterr().out


def test_an_impossible_pooling_override_blames_the_flag(tmp_path):
    import timm

    reg = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=2,
                            class_token=False, global_pool="avg", reg_tokens=2, no_embed_class=True)
    save_file(reg.state_dict(), tmp_path / "reg.safetensors")
    with pytest.raises(ValueError, match=r"pooling='cls' \(--pooling\) does not fit this file"):
        vitkit.load(tmp_path / "reg.safetensors", pooling="cls")


def test_train_init_starts_from_a_checkpoint_of_the_named_architecture(tmp_path, capsys):
    run, data = _train_run(tmp_path, capsys)
    common = ["--data", str(data), "--steps", "1", "--batch-size", "6", "--no-progress", "--threads", "1",
              "--workers", "0"]
    assert main(["train", "--init", str(run), "--out", str(tmp_path / "a"), *common]) == 0
    assert "fine-tuning from" in capsys.readouterr().out
    assert main(["train", "--init", str(run), "--model", "vit_tiny_patch4_16", "--model-set",
                 "width=64,depth=2,heads=4", "--out", str(tmp_path / "b"), *common]) == 0
    capsys.readouterr()
    assert main(["train", "--init", str(run), "--model", "vit_tiny_patch4_16", "--model-set",
                 "width=64,depth=3,heads=4", "--out", str(tmp_path / "c"), *common]) == 2
    assert "is not a 'vit_tiny_patch4_16' (depth: 3 != 2)" in capsys.readouterr().err
    assert not (tmp_path / "c" / "model").exists()
