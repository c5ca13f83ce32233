"""FP8 acceptance check on a trained model: top-1 agreement of the FP8 model with the bf16 model.

Trains a small ViT on scikit-learn's digits (CPU, about a minute), then converts a
copy with vitkit.bench.fp8.convert_to_fp8 (e4m3, row-wise scales, torch._scaled_mm,
which PyTorch also runs on the CPU) and compares its predictions on the held-out
split with the same model in bf16 (and fp32). Writes benchmarks/fp8_agreement_digits.json.

    PYTHONPATH=src python benchmarks/fp8_agreement.py [--threads 2]

On a GPU the same script runs the Hopper FP8 kernels with --device cuda; a
ViT-B/16 check on ImageNet-val is the row that still needs a GPU (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit import ViTConfig, VisionTransformer  # noqa: E402
from vitkit.bench.fp8 import convert_to_fp8, top1_agreement  # noqa: E402
from vitkit.bench.report import machine_info, now_utc, write_json  # noqa: E402
from vitkit.data.builtin import load_digits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime int8 check")
    ap.add_argument("--out", default=str(Path(__file__).with_name("fp8_agreement_digits.json")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    train, val = load_digits()
    cfg = ViTConfig(image_size=8, patch_size=2, channels=1, num_classes=10, width=64, depth=4, heads=4)
    model = VisionTransformer(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * ((len(train.images) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train.images))
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(train.images[idx].to(dev)), train.labels[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.time() - t0
    model.eval()
    x, y = val.images.to(dev), val.labels.to(dev)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    fp8 = copy.deepcopy(model).to(torch.bfloat16)
    n_fp8 = convert_to_fp8(fp8)
    fp8_ends = copy.deepcopy(model).to(torch.bfloat16)  # first and last block kept in bf16
    convert_to_fp8(fp8_ends, skip_blocks=(0, -1))
    with torch.no_grad():
        acc = {name: (m(x.to(dt)).argmax(-1) == y).float().mean().item()
               for name, m, dt in (("fp32", model, torch.float32), ("bf16", bf16, torch.bfloat16),
                                   ("fp8", fp8, torch.bfloat16), ("fp8_ends_bf16", fp8_ends, torch.bfloat16))}
    doc = {
        "what": "top-1 agreement of vitkit's FP8 inference mode with the bf16 model, on a trained model",
        "command": "PYTHONPATH=src python benchmarks/fp8_agreement.py " + " ".join(sys.argv[1:]),
        "date": now_utc(), "device": str(dev), "machine": machine_info(dev), "model_config": cfg.to_dict(),
        "data": f"scikit-learn digits, held-out split of {len(y)} images", "epochs": args.epochs,
        "train_seconds": round(train_s, 1), "fp8_linears": n_fp8, "accuracy": acc,
        "agreement_fp8_vs_bf16": top1_agreement(bf16, fp8, x, dtype=torch.bfloat16),
        "agreement_fp8_vs_fp32": _agree_mixed(model, fp8, x),
        "agreement_fp8_ends_bf16_vs_bf16": top1_agreement(bf16, fp8_ends, x, dtype=torch.bfloat16),
        "agreement_bf16_vs_fp32": _agree_mixed(model, bf16, x),
        "threshold": 0.995,
    }
    doc["agreement_ort_int8_vs_fp32"] = None if args.no_ort else _ort_int8_agreement(model.cpu(), x.cpu())
    doc["passes"] = {"fp8": doc["agreement_fp8_vs_bf16"] >= doc["threshold"],
                     "fp8_ends_bf16": doc["agreement_fp8_ends_bf16_vs_bf16"] >= doc["threshold"],
                     "ort_int8": None if args.no_ort else doc["agreement_ort_int8_vs_fp32"] >= doc["threshold"]}
    write_json(doc, args.out)
    print(json.dumps({k: doc[k] for k in ("accuracy", "agreement_fp8_vs_bf16", "agreement_fp8_ends_bf16_vs_bf16",
                                          "agreement_fp8_vs_fp32", "agreement_ort_int8_vs_fp32",
                                          "agreement_bf16_vs_fp32", "passes", "train_seconds")}, indent=2))


@torch.no_grad()
def _ort_int8_agreement(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Agreement of the int8-quantised ONNX Runtime model (vitkit bench --ort-int8) with fp32 PyTorch."""
    import tempfile

    from vitkit.bench.onnx_backend import ort_session, quantize_int8
    from vitkit.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model.float().eval(), path)  # dynamic batch
        q = ort_session(quantize_int8(path, Path(tmp) / "m8.onnx"))
        out = torch.from_numpy(q.run(None, {q.get_inputs()[0].name: x.float().numpy()})[0])
    return (model(x.float()).argmax(-1) == out.argmax(-1)).float().mean().item()


@torch.no_grad()
def _agree_mixed(ref: torch.nn.Module, low: torch.nn.Module, x: torch.Tensor) -> float:
    """Agreement of a bf16/fp8 model (bf16 input) with the fp32 model (fp32 input)."""
    return (ref(x.float()).argmax(-1) == low(x.to(torch.bfloat16)).argmax(-1)).float().mean().item()


if __name__ == "__main__":
    main()
