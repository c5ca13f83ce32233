"""What ONNX Runtime fuses in vitkit's exported ViT, and whether its transformer optimiser makes it faster
(issue 14, part 2).

    python benchmarks/ort_fusions.py [MODEL] [--batches 8 1] [--rounds 5] [--json benchmarks/ort_fusions.json]

Exports MODEL (default vit_small_patch16_224, random weights) with vitkit.export.export_onnx, then counts the
operators of: the exported graph; the graph ONNX Runtime's session optimiser writes at ORT_ENABLE_ALL; the graph
of onnxruntime.transformers.optimizer (model_type "vit": its Attention, SkipLayerNormalization and BiasGelu
fusions). Then times, interleaved, one thread each: the export and the transformer-optimised graph in ONNX
Runtime (ORT_ENABLE_ALL, sequential), and vitkit's PyTorch fp32 (with --cpu-linear auto's kernel choice).
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from commands import cpu_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="vit_small_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=str(Path(__file__).with_name("ort_fusions.json")))
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    import vitkit
    from vitkit.export import export_onnx
    from vitkit.export.onnx import cpu_session_options
    from vitkit.inference.cpu import optimize_for_cpu

    torch.set_num_threads(1)
    model = vitkit.create_model(a.model).eval()
    tmp = Path(tempfile.mkdtemp())
    export_onnx(model, tmp / "f.onnx", dynamic_batch=True)

    def ops(path):
        return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())

    def session(path, save=None):
        so = cpu_session_options(ort, 1)  # vitkit's sessions: one thread, sequential, no spin-waiting
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if save:
            so.optimized_model_filepath = str(save)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    session(tmp / "f.onnx", save=tmp / "f.ort.onnx")
    opt = optimize_model(str(tmp / "f.onnx"), model_type="vit", num_heads=model.cfg.heads,
                         hidden_size=model.cfg.width, opt_level=0)
    opt.save_model_to_file(str(tmp / "f.fused.onnx"))
    result = {"benchmark": "ONNX Runtime fusions and speed of vitkit's ONNX export, fp32, 1 thread",
              "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/ort_fusions.py " + a.model +
              " --batches " + " ".join(map(str, a.batches)) + f" --rounds {a.rounds}",
              "machine": {"cpu_id": cpu_id(), "python": platform.python_version(), "torch": torch.__version__,
                          "onnxruntime": ort.__version__},
              "ops": {"export": ops(tmp / "f.onnx"), "ort_enable_all": ops(tmp / "f.ort.onnx"),
                      "transformers_optimizer": ops(tmp / "f.fused.onnx")},
              "fused_by_transformers_optimizer": {k: v for k, v in opt.get_fused_operator_statistics().items() if v},
              "timings_ms": {}}
    sessions = {"onnxruntime": session(tmp / "f.onnx"), "onnxruntime_fused": session(tmp / "f.fused.onnx")}
    for b in a.batches:
        x = torch.randn(b, 3, *model.cfg.image_hw)
        feed = {"images": x.numpy()}
        pt = vitkit.create_model(a.model).eval()
        pt.load_state_dict(model.state_dict())
        optimize_for_cpu(pt, "auto", rows=b * model.cfg.num_tokens)
        with torch.inference_mode():
            ref = pt(x).numpy()
        fns = {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}

        def torch_fp32():
            with torch.inference_mode():
                pt(x)

        fns["vitkit_pytorch"] = torch_fp32
        diffs = {k: float(np.abs(s.run(None, feed)[0] - ref).max()) for k, s in sessions.items()}
        for f in fns.values():
            f()
        times = {k: [] for k in fns}
        for _ in range(a.rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}
        result["timings_ms"][str(b)] = {"median": med, "max_abs_diff_vs_pytorch": diffs,
                                        "onnxruntime / pytorch speed": round(med["vitkit_pytorch"] / med["onnxruntime"], 3),
                                        "fused / pytorch speed": round(med["vitkit_pytorch"] / med["onnxruntime_fused"], 3)}
        print(b, json.dumps(result["timings_ms"][str(b)]))
    print(json.dumps(result["ops"], indent=1))
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
