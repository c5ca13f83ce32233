"""Make the model and images that docs/inference.md runs `vitkit predict/explain/export/features` on.

    PYTHONPATH=src python docs/inference_example.py /tmp/vitkit-demo

Trains a small ViT (32x32 grey input, 4x4 patches -> an 8x8 grid, width 64, depth 2) for 20
epochs on scikit-learn's digits upscaled x4, saves it with its labels and preprocessing to
OUT/digits-vit, and writes 6 held-out digits as 32x32 PNGs to OUT/digits/. No network needed.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vitkit
from vitkit.data.builtin import load_digits


def main(out: Path) -> None:
    torch.manual_seed(0)
    train, val = load_digits()
    up = lambda x: F.interpolate(x, scale_factor=4, mode="nearest")  # (N, 1, 8, 8) -> (N, 1, 32, 32)
    x_tr, x_va = up(train.images), up(val.images)
    cfg = vitkit.ViTConfig(image_size=32, patch_size=4, channels=1, width=64, depth=2, heads=4, num_classes=10,
                           labels=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    model = vitkit.create_model(cfg)
    epochs, bs, lr = 20, 32, 2e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(x_tr) // bs), pct_start=0.15)
    t0 = time.time()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr))
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x_tr[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_va).argmax(-1) == val.labels).float().mean().item()
    print(f"trained in {time.time() - t0:.0f} s; validation accuracy {acc:.3f} ({len(val.labels)} digits)")
    # files hold 0..255 grey; the model was trained on 0..1: rescale 1/255, mean 0, std 1
    model.preprocess_cfg = vitkit.PreprocessConfig(size=(32, 32), mode="L", mean=(0.0,), std=(1.0,))
    vitkit.save(model, out / "digits-vit")
    (out / "digits").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        a = (x_va[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(a, mode="L").save(out / "digits" / f"val{i}_true_{cfg.labels[int(val.labels[i])]}.png")
    print(f"wrote {out / 'digits-vit'} and 6 PNGs in {out / 'digits'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vitkit-demo"))
