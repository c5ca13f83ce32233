"""int8 against fp32 on real validation sets (issue 14, part 3): top-1 agreement, with the counts.

    python benchmarks/int8_agreement.py MODEL FOLDER [MODEL FOLDER ...] [--calibration-images 64]
                                        [--json benchmarks/int8_agreement.json] [--lfw-folder DIR]

Each MODEL (anything vitkit.load reads) is quantised exactly as `vitkit predict --dtype int8 --calibrate
FOLDER` does (vitkit.export.int8: static S8S8, weight products only), calibrated on FOLDER/train (at most
--calibration-images, spread over the classes) and checked on every image of FOLDER/val. The figure is recorded
whatever it is (the 99.5 % refusal is switched off here, and its verdict recorded). --lfw-folder DIR first writes
the built-in lfw-faces split (vitkit's fixed 160 / 40) as a PNG folder there, so that a model trained with
`--data lfw-faces` can be checked on its own validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from commands import cpu_id


def write_lfw(out: Path) -> None:
    from vitkit.data.builtin import BUILTIN

    for part, split in zip(("train", "val"), BUILTIN["lfw-faces"]()):
        for i, (img, y) in enumerate(zip(split.images, split.labels)):
            p = out / part / split.classes[int(y)]
            p.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(p / f"{i:03d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", metavar="MODEL FOLDER")
    ap.add_argument("--calibration-images", type=int, default=64)
    ap.add_argument("--lfw-folder", default=None)
    ap.add_argument("--json", default=str(Path(__file__).with_name("int8_agreement.json")))
    a = ap.parse_args()
    if len(a.pairs) % 2:
        ap.error("give MODEL FOLDER pairs")
    if a.lfw_folder and not Path(a.lfw_folder).exists():
        write_lfw(Path(a.lfw_folder))
    from vitkit import load
    from vitkit.export.int8 import MIN_AGREEMENT, images_for_int8, quantize_int8

    rows = []
    for model_src, folder in zip(a.pairs[0::2], a.pairs[1::2]):
        model = load(model_src).eval()
        cal, chk, where = images_for_int8(model, [folder], calibration_images=a.calibration_images)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            rep = quantize_int8(model, Path(tmp) / "m.onnx", cal, chk, min_agreement=1e-9)
        rows.append({"model": model_src, "data": folder, "calibration_images": len(cal), "checked": rep.checked,
                     "agreed": rep.agreed, "agreement": round(rep.agreement, 6),
                     "passes_99_5": rep.agreement >= MIN_AGREEMENT, "where": where,
                     "quantise_and_check_s": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    doc = {"benchmark": "int8 (ONNX Runtime static S8S8) top-1 agreement with fp32", "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/int8_agreement.py " + " ".join(a.pairs),
           "machine": {"cpu_id": cpu_id(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__}, "rows": rows}
    Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
