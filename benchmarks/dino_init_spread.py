"""How much a fresh ViT's [CLS] output depends on the image, and what DINO's teacher makes of it at step 0.

    python benchmarks/dino_init_spread.py DIGITS32   # the folder benchmarks/export_digits.py writes

On 64 training images (every 20th file), for the ViT of benchmarks/self_supervised.md (vit_tiny_patch4_32, width
96, depth 6) and the DINO head `vitkit pretrain` builds by default (512 -> 128 -> 1024): the mean pairwise cosine
of the [CLS] features (and of the raw pixels), the per-dimension spread of the head's outputs across images, and
the teacher's entropy after centering at temperature 0.04; for vitkit's init, MAE's xavier init
(MAE.init_encoder) and mean pooling. Seed 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import vitkit
from vitkit.data.preprocess import preprocess
from vitkit.inference.pipeline import default_preprocess_cfg
from vitkit.ssl.dino import DINOHead
from vitkit.ssl.mae import MAE


def mean_pairwise_cosine(t: torch.Tensor) -> float:
    t = F.normalize(t.flatten(1), dim=-1)
    n = len(t)
    return float(((t @ t.T).sum() - n) / (n * n - n))


def main(folder: str) -> None:
    torch.manual_seed(0)
    files = sorted(Path(folder, "train").glob("*/*.png"))[::20][:64]
    kw = dict(width=96, depth=6, heads=3, num_classes=0)
    fresh = vitkit.create_model("vit_tiny_patch4_32", **kw).eval()
    x = preprocess([Image.open(f).convert("RGB") for f in files], default_preprocess_cfg(fresh.cfg))
    head = DINOHead(96, 1024, 512, 128)
    xavier = vitkit.create_model("vit_tiny_patch4_32", **kw).eval()
    MAE(xavier, decoder_width=16, decoder_depth=1, decoder_heads=2).init_encoder(fixed_pos_embed=False)
    gap = vitkit.create_model("vit_tiny_patch4_32", pooling="gap", **kw).eval()
    print(f"{len(files)} images; raw pixels: mean pairwise cosine {mean_pairwise_cosine(x):.3f}")
    with torch.no_grad():
        for name, m in (("vitkit init, [CLS]", fresh), ("MAE xavier init, [CLS]", xavier), ("vitkit init, mean pooling", gap)):
            f = m(x)
            out = head(f)
            t = F.softmax((out - out.mean(0)) / 0.04, -1)
            entropy = float(-(t * t.clamp_min(1e-12).log()).sum(-1).mean())
            print(f"{name}: features cosine {mean_pairwise_cosine(f):.3f}, bottleneck cosine "
                  f"{mean_pairwise_cosine(head.mlp(f)):.3f}, output spread {float(out.std(0).mean()):.4f}, "
                  f"teacher entropy at 0.04 {entropy:.3f} of {torch.log(torch.tensor(1024.0)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
