"""Write the built-in digits (vitkit's fixed 1,437 / 360 split) as a PNG image folder: train/<class>/, val/<class>/.

    python benchmarks/export_digits.py OUT [SIDE]      # SIDE defaults to 32

The folder the self-supervised, init and distillation benchmarks call digits32: each 8x8 image scaled from
0..16 to 0..1, resized bilinearly to SIDE x SIDE, stored as 8-bit grey PNG.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

out = Path(sys.argv[1])
side = int(sys.argv[2]) if len(sys.argv) > 2 else 32
d = load_digits()
idx = np.arange(len(d.target))
tr, va = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
for part, ids in (("train", tr), ("val", va)):
    for i in ids:
        img = torch.tensor(d.images[i] / 16.0, dtype=torch.float32)[None, None]
        big = F.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
        p = out / part / str(d.target[i])
        p.mkdir(parents=True, exist_ok=True)
        Image.fromarray((big.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(p / f"{i:04d}.png")
print(len(tr), len(va))
