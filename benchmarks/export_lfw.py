"""Write the built-in lfw-faces (vitkit's fixed 160 / 40 split) as a PNG image folder: train/<class>/, val/<class>/.

    python benchmarks/export_lfw.py OUT [--train-only]

Each 25x25 grey image in [0, 1] is stored as an 8-bit grey PNG at its own size. With --train-only only the 160
training images are written (no val/): `vitkit train` and `vitkit pretrain` then hold out their own 20 %
(stratified, seed 0), 128 / 32. That is the folder on which a fine-tune recipe is chosen without looking at the
40 validation images that the benchmarks report (benchmarks/self_supervised.md).
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.data.builtin import load_lfw_faces

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("out", type=Path)
ap.add_argument("--train-only", action="store_true")
a = ap.parse_args()
train, val = load_lfw_faces()
parts = [("train", train)] + ([] if a.train_only else [("val", val)])
for part, split in parts:
    for i, (img, label) in enumerate(zip(split.images, split.labels)):
        p = a.out / part / split.classes[int(label)]
        p.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(p / f"{i:03d}.png")
print(*(f"{part}: {len(split.labels)}" for part, split in parts))
