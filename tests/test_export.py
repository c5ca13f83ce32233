"""ONNX export: parity with PyTorch in onnxruntime (Ti/16 and registers + gap), dynamic batch, refusal."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import vitkit
from vitkit.cli.main import main
from vitkit.export import ExportParityError, export_onnx
from vitkit.export.onnx import DEFAULT_OPSET


def _sharpen(model):
    """Random weights of a realistic scale (the default init leaves attention near uniform and a zero head)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5 if "head" not in name else 0.1))
    return model.eval()


def ti16(**kw):
    """ViT-Ti/16's width, heads and patch (192, 3, 16) at 224, depth cut to 2 to stay fast."""
    cfg = vitkit.parse_model_name("vit_tiny_patch16_224").replace(depth=2, num_classes=10, **kw)
    assert (cfg.width, cfg.heads, cfg.patch_size, cfg.image_hw) == (192, 3, 16, (224, 224))
    return _sharpen(vitkit.create_model(cfg))


def reg_gap():
    cfg = vitkit.ViTConfig(image_size=64, patch_size=16, width=192, depth=2, heads=3, num_classes=7, reg_tokens=4,
                           class_token=False, pooling="gap", pos_embed_prefix=False)
    return _sharpen(vitkit.create_model(cfg))


def _ort_vs_torch(path, model, batch):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, *model.cfg.image_hw, generator=torch.Generator().manual_seed(batch + 100))
    out = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape == (batch, model.cfg.num_classes)
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


@pytest.mark.parametrize("make", [ti16, reg_gap], ids=["Ti16", "reg4-gap"])
def test_dynamic_batch_parity_1_and_7(make, tmp_path):
    model = make()
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, dynamic_batch=True)
    assert report.max_abs_diff <= 1e-4 and set(report.diffs) == {1, 7}
    assert report.files == [path] and path.is_file()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and isinstance(inp.shape[0], str)
    for batch in (1, 7):  # checked again here, on the test's own inputs
        diff, scale = _ort_vs_torch(path, model, batch)
        assert diff <= 1e-4 and scale > 0.1  # logits of a real size, not all ~0
    assert not [f for f in tmp_path.iterdir() if f.name != "model.onnx"]  # no temporary files left


def test_metadata_and_fixed_batch(tmp_path):
    model = reg_gap()
    model.cfg = model.cfg.replace(labels=[f"c{i}" for i in range(7)])
    model.preprocess_cfg = vitkit.PreprocessConfig(size=(64, 64))
    path = tmp_path / "fixed.onnx"
    report = export_onnx(model, path, dynamic_batch=False, batch_size=3)
    assert report.diffs.keys() == {3} and report.input_shape == (3, 3, 64, 64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [3, 3, 64, 64]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["vitkit.labels"]) == [f"c{i}" for i in range(7)]
    assert json.loads(meta["vitkit.config"])["reg_tokens"] == 4
    assert json.loads(meta["vitkit.preprocess"])["size"] == [64, 64]
    assert set(meta) == {"vitkit.config", "vitkit.labels", "vitkit.preprocess", "vitkit.input", "vitkit.output"}
    assert meta["vitkit.input"] == "images: (B, C, H, W) float32, normalised as vitkit.preprocess does"
    assert meta["vitkit.output"] == "logits: (B, classes) float32"
    headless = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=0).eval()
    export_onnx(headless, tmp_path / "features.onnx")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "features.onnx")).metadata_props}
    assert meta["vitkit.output"] == "features: (B, D) float32" and json.loads(meta["vitkit.labels"]) is None


def test_check_onnx_is_reproducible_and_seeded(tmp_path):
    """The parity check runs on seeded random images: the same seed gives the same differences, batch by batch,
    and another seed other images (so other differences)."""
    from vitkit.export.onnx import check_onnx

    model = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=2, num_classes=5).eval()
    export_onnx(model, tmp_path / "m.onnx")
    a = check_onnx(tmp_path / "m.onnx", model, (32, 32), (1, 3))
    assert a == check_onnx(tmp_path / "m.onnx", model, (32, 32), (1, 3), seed=0) and set(a) == {1, 3}
    assert all(0 <= d < 1e-4 for d in a.values())
    # other seeds, other images (three of them: two image sets could, rarely, share a rounded maximum)
    assert any(check_onnx(tmp_path / "m.onnx", model, (32, 32), (1, 3), seed=s) != a for s in (1, 2, 3))


def test_refuses_to_write_when_parity_fails(tmp_path):
    model = reg_gap()
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(ExportParityError, match=r"differ by .* more than the allowed 1e-06; nothing was written"):
        export_onnx(model, path, fp16=True, atol=1e-6)  # fp16 cannot match fp32 to 1e-6
    assert path.read_bytes() == b"an earlier export"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.onnx"]


def test_fp16_export_keeps_float32_io(tmp_path):
    model = reg_gap()
    report = export_onnx(model, tmp_path / "half.onnx", fp16=True)
    assert 0 < report.max_abs_diff <= 2e-2
    sess = ort.InferenceSession(str(tmp_path / "half.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    init_types = {t.data_type for t in onnx.load(str(tmp_path / "half.onnx")).graph.initializer if t.dims}
    assert onnx.TensorProto.FLOAT16 in init_types  # the weights really are half precision
    assert model.patch_embed.proj.weight.dtype == torch.float32  # the caller's model was not converted


def test_cli_export(tmp_path, capsys):
    src = vitkit.save(reg_gap(), tmp_path / "m")
    out = tmp_path / "m.onnx"
    assert main(["export", str(src), "--onnx", str(out), "--dynamic-batch", "--opset", "18"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "input batchx3x64x64" in text and "max abs diff" in text
    worst = float(text.split("max abs diff ")[1].split()[0])
    assert 0 <= worst <= 1e-4
    model = vitkit.load(src)
    for batch in (1, 7):
        assert _ort_vs_torch(out, model, batch)[0] <= 1e-4


@pytest.mark.parametrize("argv,needle", [
    (["SRC", "--onnx", "OUTDIR/m.txt"], "should end in .onnx"),
    (["SRC", "--onnx", "OUTDIR/nofolder/m.onnx"], "does not exist"),
    (["OUTDIR/missing", "--onnx", "OUTDIR/m.onnx"], "missing"),  # names the checkpoint
    (["SRC", "--onnx", "OUTDIR/m.onnx", "--size", "40"], "not divisible by patch_size 16"),  # other sizes resample
])
def test_cli_export_errors(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing path must never become a download
    src = vitkit.save(reg_gap(), tmp_path / "m")
    argv = [a.replace("SRC", str(src)).replace("OUTDIR", str(tmp_path)) for a in argv]
    rc = main(["export"] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and "vitkit: error:" in err and needle in err and "Traceback" not in err


@pytest.mark.parametrize("fp16,default,under,over", [(False, 1e-4, 5e-5, 3e-4), (True, 2e-2, None, 6e-2)],
                         ids=["fp32", "fp16"])
def test_default_parity_threshold_refuses_a_runtime_that_differs(tmp_path, monkeypatch, fp16, default, under, over):
    """Without an explicit atol the documented defaults apply (1e-4 fp32, 2e-2 fp16): an onnxruntime whose
    output is off by more than that is refused and nothing is written; within it, the export goes through."""
    model = _sharpen(vitkit.create_model(vitkit.ViTConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2,
                                                          num_classes=4)))
    shift = {}

    class Perturbed(ort.InferenceSession):
        def run(self, *a, **kw):
            outs = super().run(*a, **kw)
            outs[0][0, 0] += shift["delta"]  # one logit off by delta
            return outs

    monkeypatch.setattr(ort, "InferenceSession", Perturbed)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier export")
    shift["delta"] = over
    with pytest.raises(ExportParityError, match=rf"more than the allowed {default:g}; nothing was written"):
        export_onnx(model, path, fp16=fp16, dynamic_batch=False)
    assert path.read_bytes() == b"an earlier export"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.onnx"]
    shift["delta"] = 0.0 if under is None else under
    report = export_onnx(model, path, fp16=fp16, dynamic_batch=False)
    assert report.atol == default and report.max_abs_diff <= default
    if under is not None:
        assert report.max_abs_diff >= under / 2  # the perturbed runtime was the one checked
    assert path.read_bytes() != b"an earlier export"


def test_onnx_runtime_sessions_do_not_spin_and_use_the_given_threads(tmp_path):
    """ONNX Runtime's intra-op threads spin after each run by default, taking a small CPU's cores from whatever
    runs next (the PyTorch model in the bench, the service's next request): every session vitkit opens turns it
    off and takes the thread count asked for (torch's by default)."""
    from vitkit.bench.onnx_backend import ort_session
    from vitkit.export.int8 import Int8Session
    from vitkit.export.onnx import cpu_session_options

    so = cpu_session_options(ort, 3)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert cpu_session_options(ort).intra_op_num_threads == torch.get_num_threads()
    model = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=3).eval()
    export_onnx(model, tmp_path / "m.onnx")
    for session in (ort_session(tmp_path / "m.onnx", threads=1), Int8Session(tmp_path / "m.onnx", threads=1).session):
        opts = session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.intra_op_num_threads == 1


def test_defaults_a_dynamic_batch_named_batch_checked_at_1_and_7(tmp_path):
    model = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=3).eval()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.dynamic_batch is True and report.fp16 is False and report.opset == DEFAULT_OPSET
    assert set(report.diffs) == {1, 7} and report.input_shape == ("batch", 3, 32, 32)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, 32, 32]
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["logits"]
    assert sess.run(None, {"images": np.zeros((5, 3, 32, 32), np.float32)})[0].shape == (5, 3)
    headless = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=0).eval()
    export_onnx(headless, tmp_path / "h.onnx")
    hsess = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in hsess.get_outputs()] == ["features"]
    # the threshold is inclusive: a file exactly at atol is written (the check's images are seeded: same worst)
    again = export_onnx(model, tmp_path / "again.onnx", atol=report.max_abs_diff)
    assert again.max_abs_diff == report.max_abs_diff
    fixed = export_onnx(model, tmp_path / "f.onnx", dynamic_batch=False)  # the fixed batch defaults to 1
    assert fixed.input_shape == (1, 3, 32, 32) and set(fixed.diffs) == {1}


def test_image_size_sets_the_graph_input_and_the_model_is_left_as_it_was(tmp_path):
    model = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=3,
                                dynamic_img_size=True).eval().half()
    report = export_onnx(model, tmp_path / "m.onnx", image_size=(48, 32))
    assert report.input_shape == ("batch", 3, 48, 32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, 48, 32]
    assert all(p.dtype == torch.float16 for p in model.parameters())  # exported from an fp32 copy


def test_weights_over_the_limit_go_to_an_external_data_file(tmp_path, monkeypatch):
    """Above EXTERNAL_DATA_BYTES of weights (ONNX's 2 GB protobuf limit) the weights go to a data file beside the
    .onnx; at exactly the limit they stay inside."""
    from vitkit.export import onnx as export_mod

    model = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=3).eval()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", n_bytes)
    (tmp_path / "a").mkdir()
    inside = export_onnx(model, tmp_path / "a" / "m.onnx")
    assert [f.name for f in inside.files] == ["m.onnx"] and sorted(f.name for f in (tmp_path / "a").iterdir()) == ["m.onnx"]
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", n_bytes - 1)
    (tmp_path / "b").mkdir()
    outside = export_onnx(model, tmp_path / "b" / "m.onnx")
    assert len(outside.files) > 1 and outside.files[-1].name == "m.onnx"
    assert (tmp_path / "b" / "m.onnx").stat().st_size < n_bytes / 2  # the weights are not in the .onnx
    sess = ort.InferenceSession(str(tmp_path / "b" / "m.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 3)


def test_the_temporary_folder_is_hidden_beside_the_target(tmp_path, monkeypatch):
    """The file is written in a hidden folder next to the target, so the final rename stays on one file system
    (atomic) and a crash leaves nothing that looks like a model."""
    from vitkit.export import onnx as export_mod

    seen = []
    real = export_mod.tempfile.mkdtemp

    def spy(*a, **k):
        seen.append(Path(real(*a, **k)))
        return str(seen[-1])

    monkeypatch.setattr(export_mod.tempfile, "mkdtemp", spy)
    model = vitkit.create_model("vit_tiny_patch16_224", image_size=32, depth=1, num_classes=3).eval()
    export_onnx(model, tmp_path / "m.onnx")
    assert len(seen) == 1 and seen[0].parent == tmp_path and seen[0].name.startswith(".vitkit-export-")
    assert not seen[0].exists()
