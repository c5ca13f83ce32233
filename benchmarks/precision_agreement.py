"""bf16 and int8 embeddings against fp32 on real validation sets (issue 14, parts 3 and 4), with the counts.

    python benchmarks/precision_agreement.py MODEL FOLDER [MODEL FOLDER ...]
                                             [--json benchmarks/precision_agreement.json]

For each MODEL (anything vitkit.load reads; a classifier) and every image of FOLDER/val:
- bf16 (autocast) against fp32: top-1 agreement, and the lowest cosine similarity of the [CLS]/pooled embeddings
  (what `--dtype auto` checks on the first batch: the same top-1, cosine >= 0.99);
- int8 embeddings (`vitkit features --dtype int8`: the model without its head, quantised as vitkit.export.int8
  does, calibrated on FOLDER/train): the lowest cosine with fp32's and how many reach 0.99;
- what `--dtype auto` decides on this machine for that model (its one line).
bf16 runs on any CPU (emulated where the CPU has no bf16 instructions: slow, but the same rounding), so the
agreement figures hold for the machines where auto picks it. The figures are recorded whatever they are.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from commands import cpu_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", metavar="MODEL FOLDER")
    ap.add_argument("--json", default=str(Path(__file__).with_name("precision_agreement.json")))
    a = ap.parse_args()
    if len(a.pairs) % 2:
        ap.error("give MODEL FOLDER pairs")
    from vitkit import load
    from vitkit.data.decode import open_image
    from vitkit.data.preprocess import default_preprocess, preprocess
    from vitkit.export.int8 import Int8Session, images_for_int8, quantize_int8
    from vitkit.inference.images import list_images
    from vitkit.inference.pipeline import ModelRunner

    rows = []
    for model_src, folder in zip(a.pairs[0::2], a.pairs[1::2]):
        model = load(model_src).eval()
        pre = model.preprocess_cfg or default_preprocess(model.cfg.image_hw, model.cfg.channels)
        paths, _ = list_images([Path(folder) / "val"])
        x = preprocess([open_image(p) for p in paths], pre)
        with torch.no_grad():
            logits = model(x)
            with torch.autocast("cpu", torch.bfloat16):
                logits16 = model(x).float()
            headless = copy.deepcopy(model)
            headless.reset_classifier(0)
            feats = headless(x)
            with torch.autocast("cpu", torch.bfloat16):
                feats16 = headless(x).float()
        cos16 = torch.nn.functional.cosine_similarity(feats, feats16, dim=1)
        cal, _, _ = images_for_int8(model, [folder])
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            report = quantize_int8(headless, Path(tmp) / "f.onnx", cal, x, min_agreement=1e-9)
            feats8 = Int8Session(report.path)(x)
        cos8 = torch.nn.functional.cosine_similarity(feats, feats8, dim=1)
        runner = ModelRunner(model, device="cpu", dtype="auto")
        rows.append({
            "model": model_src, "data": folder, "checked": len(x),
            "bf16_top1_agreed": int((logits.argmax(-1) == logits16.argmax(-1)).sum()),
            "bf16_embedding_cosine_min": round(float(cos16.min()), 6),
            "bf16_embeddings_at_0_99": int((cos16 >= 0.99).sum()),
            "int8_embedding_cosine_min": round(float(cos8.min()), 6),
            "int8_embedding_cosine_mean": round(float(cos8.mean()), 6),
            "int8_embeddings_at_0_99": int((cos8 >= 0.99).sum()),
            "int8_calibration_images": len(cal), "int8_quantise_and_check_s": round(time.time() - t0, 1),
            "auto_here": runner.precision,
        })
        print(json.dumps(rows[-1]))
    out = {"benchmark": "bf16 and int8 against fp32: top-1 and embedding cosine, every validation image",
           "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/precision_agreement.py " + " ".join(a.pairs),
           "machine": {"cpu_id": cpu_id(), "cores": __import__("os").cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__},
           "rows": rows}
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
