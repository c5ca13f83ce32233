"""`vitkit demo`: train a small ViT from scratch on scikit-learn's digits, on the CPU, in a few minutes.

The first thing a newcomer runs (`make demo`). It holds out a stratified 20 % of
the 1,797 digits (seed 0), trains with AdamW + warm-up/cosine + label smoothing
and a per-sample random affine augmentation, prints validation top-1 and the
time taken, saves the model as a vitkit folder, and classifies a few held-out digits.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ViTConfig
from ..data.builtin import load_digits
from ..data.preprocess import PreprocessConfig
from ..models.vit import VisionTransformer
from ..weights.api import load, save

# 8×8 digits upsampled to 16×16 and cut into 4×4 patches: 16 tokens + [CLS]
DEMO_CONFIG = dict(image_size=16, patch_size=4, channels=1, num_classes=10, width=128, depth=6, heads=4,
                   drop_path=0.1)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small ViT on scikit-learn's digits (CPU, a few minutes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--out", default="demo-run", help="folder the trained model is saved to (default demo-run)")
    p.add_argument("--seed", type=int, default=0, help="random seed for initialisation and augmentation")
    p.set_defaults(func=run)


def random_affine(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-sample rotation (±7.5°), scale (±5 %) and shift (±5 % of the side) of (B, C, H, W) images."""
    B = x.shape[0]
    angle = (torch.rand(B, generator=g) * 2 - 1) * math.radians(7.5)
    scale = 1 + (torch.rand(B, generator=g) * 2 - 1) * 0.05
    shift = (torch.rand(B, 2, generator=g) * 2 - 1) * 0.1  # affine_grid's coordinates span [-1, 1]
    theta = torch.zeros(B, 2, 3)  # output -> input sampling matrix
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos() / scale, -angle.sin() / scale
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin() / scale, angle.cos() / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    train, val = load_digits()
    cfg = ViTConfig(**DEMO_CONFIG, labels=train.classes)
    model = VisionTransformer(cfg)
    size = cfg.image_hw

    def prepare(x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) in [0, 1] -> (B, 1, 16, 16) in [-1, 1]
        return (F.interpolate(x, size=size, mode="bilinear", align_corners=False) - 0.5) / 0.5

    print(f"vitkit demo: {len(train.labels)} training and {len(val.labels)} validation digits (8x8, 10 classes); "
          f"ViT {cfg.width}w x {cfg.depth} blocks, {cfg.num_params() / 1e6:.2f}M parameters, {cfg.num_tokens} tokens")
    batch, lr = 64, 1e-3
    steps_per_epoch = math.ceil(len(train.labels) / batch)
    total, warmup = args.epochs * steps_per_epoch, max(1, args.epochs * steps_per_epoch // 10)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in model.no_weight_decay()]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in model.no_weight_decay()]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))

    start = time.time()
    bar = tqdm(total=total, desc="training", unit="step")
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = random_affine(F.interpolate(train.images[idx], size=size, mode="bilinear", align_corners=False), g)
            loss = F.cross_entropy(model((x - 0.5) / 0.5), train.labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    train_time = time.time() - start

    model.eval()
    with torch.no_grad():
        pred = model(prepare(val.images)).argmax(dim=1)
    top1 = (pred == val.labels).float().mean().item()
    print(f"validation top-1: {top1 * 100:.2f}% ({int((pred == val.labels).sum())}/{len(val.labels)}) "
          f"after {args.epochs} epochs; training took {train_time:.1f}s")

    # 8×8 values 0..1 map to PIL 'L' pixels 0..255, resized bilinearly to 16×16 like prepare()
    model.preprocess_cfg = PreprocessConfig(size=size, resize="squash", interpolation="bilinear", mean=(0.5,),
                                            std=(0.5,), mode="L")
    out = save(model, args.out)
    reloaded = load(out)
    print(f"saved the model to {out}/ (vitkit.load('{out}') reads it back)")
    with torch.no_grad():
        few = reloaded(prepare(val.images[:8])).softmax(dim=1)
    print("a few held-out digits:")
    for i in range(8):
        p, k = few[i].max(dim=0)
        print(f"  true {val.labels[i].item()}  predicted {cfg.labels[k]}  (p={p.item():.2f})")
    return 0
