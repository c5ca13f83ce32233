"""Fresh-model init: vitkit's ViT against timm's, same shape, same plain PyTorch loop, on 32x32 digits.

    python benchmarks/init_compare.py [--epochs 5] [--seeds 0] [--json benchmarks/init.json]

Three models of the shape of issue 12's baseline (32x32, patch 4, width 96, depth 6, 3 heads, [CLS] pooling,
drop-path 0.1, 10 classes): timm's ``VisionTransformer`` with its default init, vitkit's with its init of
today, and vitkit's with the init it had before 2026-12-01 (std 0.02 cut at +-2 std for every Linear *and*
the patch convolution, zero head). The data are scikit-learn's digits, vitkit's fixed split (1,437 / 360),
resized to 32x32 as benchmarks/ssl_small_data.py's folder holds them, normalised with mean = std = 0.5.
The loop: AdamW lr 1e-3 (linear warm-up over 110 steps), weight decay 0.05, batch 64, label smoothing 0.1,
gradient clipping 1.0, no augmentation, one torch thread. Printed per epoch: the last batch's loss and the
validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from commands import cpu_id

SHAPE = dict(image_size=32, patch_size=4, width=96, depth=6, heads=3, num_classes=10)


def digits32():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, va = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)

    def images(ids):
        x = torch.tensor(d.images[ids] / 16.0, dtype=torch.float32)[:, None]
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
        x = (x * 255).round() / 255  # as the PNG folder stores them
        return ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)

    return images(tr), torch.tensor(d.target[tr]), images(va), torch.tensor(d.target[va])


def init_before_2026_12_01(m) -> None:
    """vitkit's init as it was: std 0.02 cut at +-2 std for Linear and conv alike, zero head."""
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.trunc_normal_(mod.weight, std=0.02, a=-0.04, b=0.04)
            if mod.bias is not None:
                torch.nn.init.zeros_(mod.bias)
    torch.nn.init.trunc_normal_(m.pos_embed, std=0.02, a=-0.04, b=0.04)
    torch.nn.init.zeros_(m.head.weight)


def build(kind: str):
    if kind == "timm":
        import timm

        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=6,
                                 num_heads=3, num_classes=10, global_pool="token", drop_path_rate=0.1)
    from vitkit.config import ViTConfig
    from vitkit.models.vit import VisionTransformer

    m = VisionTransformer(ViTConfig(**SHAPE, pooling="cls", drop_path=0.1))
    if kind == "vitkit-before":
        init_before_2026_12_01(m)
    return m


def train(kind: str, seed: int, epochs: int, data) -> list[dict]:
    xtr, ytr, xva, yva = data
    torch.manual_seed(seed)
    m = build(kind)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    step, rows = 0, []
    for ep in range(epochs):
        m.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr) - 63, 64):
            b = perm[i:i + 64]
            for group in opt.param_groups:
                group["lr"] = 1e-3 * min(1.0, (step + 1) / 110)
            loss = F.cross_entropy(m(xtr[b]), ytr[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            step += 1
        m.eval()
        with torch.no_grad():
            acc = (m(xva).argmax(1) == yva).float().mean().item()
        rows.append({"epoch": ep + 1, "loss": round(loss.item(), 4), "val_top1": round(acc, 4)})
        print(kind, "seed", seed, rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--kinds", nargs="+", default=["timm", "vitkit", "vitkit-before"])
    ap.add_argument("--json", default=str(Path(__file__).with_name("init.json")))
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = digits32()
    runs = []
    for seed in a.seeds:
        for kind in a.kinds:
            t0 = time.process_time()
            rows = train(kind, seed, a.epochs, data)
            runs.append({"kind": kind, "seed": seed, "epochs": rows, "cpu_s": round(time.process_time() - t0, 1)})
    doc = {"benchmark": "fresh-model init, plain loop on 32x32 digits", "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/init_compare.py " + " ".join(
               [f"--epochs {a.epochs}", "--seeds", *map(str, a.seeds), "--kinds", *a.kinds]),
           "machine": {"cpu_id": cpu_id(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__}, "runs": runs}
    Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
