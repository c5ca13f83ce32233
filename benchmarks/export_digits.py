"""Write the built-in digits (vitkit's fixed 1,437 / 360 split) as a PNG image folder: train/<class>/, val/<class>/.

    python benchmarks/export_digits.py OUT [SIDE] [--train-per-class N]     # SIDE defaults to 32

The folder the self-supervised, init and distillation benchmarks call digits32: each 8x8 image scaled from
0..16 to 0..1, resized bilinearly to SIDE x SIDE, stored as 8-bit grey PNG. With --train-per-class N only N
training images of each class are written (the first N of each class in the fixed split's order, which is
shuffled: a random subset without a seed of its own); val/ keeps all 360 images.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("out", type=Path)
ap.add_argument("side", type=int, nargs="?", default=32)
ap.add_argument("--train-per-class", type=int, default=None, metavar="N")
a = ap.parse_args()
d = load_digits()
idx = np.arange(len(d.target))
tr, va = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
if a.train_per_class is not None:
    tr = np.concatenate([tr[d.target[tr] == c][:a.train_per_class] for c in range(10)])
for part, ids in (("train", tr), ("val", va)):
    for i in ids:
        img = torch.tensor(d.images[i] / 16.0, dtype=torch.float32)[None, None]
        big = F.interpolate(img, size=(a.side, a.side), mode="bilinear", align_corners=False)[0, 0]
        p = a.out / part / str(d.target[i])
        p.mkdir(parents=True, exist_ok=True)
        Image.fromarray((big.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(p / f"{i:04d}.png")
print(len(tr), len(va))
