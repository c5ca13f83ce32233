"""`vitkit pretrain`: self-supervised pre-training of a ViT encoder (MAE or DINO) on unlabelled images."""

from __future__ import annotations

import argparse

from ..train.config import DINO_FIELDS, MAE_FIELDS, read_config_file
from ..train.config import PRETRAIN_RECIPES as RECIPES
from .train import HELP, TRAIN_ONLY, add_settings, resolve_config, run_config

DESCRIPTION = """\
Pre-train a ViT encoder without labels, on the same training loop as `vitkit train` (exact resume,
checkpoints, metrics, curves, TensorBoard, AMP, --compile, torchrun):

  mae   masked autoencoder (He et al. 2021): 75 % of the patches are hidden, the encoder sees the
        rest, a light decoder reconstructs the hidden ones; RUN/reconstructions.png shows it.
  dino  self-distillation (Caron et al. 2021): a student matches a momentum teacher across
        multi-crop views; RUN/attention.png shows the teacher's [CLS] attention.

--data takes what `vitkit train` takes and also a plain folder of images (no class sub-folders).
Labels, where there are any, are used only by the k-NN monitor after each epoch (knn_top1 in
metrics.jsonl and curves.png). The encoder is saved as a plain vitkit model in RUN/model:
fine-tune it with `vitkit train --init RUN ...`, probe it with `vitkit eval RUN --knn 20`.

The defaults are a recipe for small data sets (docs/self_supervised.md says why each value).

Examples:
  vitkit pretrain --method mae --model vit_tiny_patch4_32 --model-set width=96,depth=6,heads=3 \\
      --data digits_folder --epochs 100 --out runs/mae
  vitkit pretrain --method dino --model vit_tiny_patch4_32 --model-set width=96,depth=6,heads=3,pooling=gap \\
      --data digits_folder --epochs 30 --local-crops 2 --out runs/dino
  (for DINO on small data, mean pooling (pooling=gap): a fresh ViT's [CLS] output is nearly the same for
  every image, and DINO learns far less from it)
"""

HELPS = {"lr": "peak learning rate after warm-up (default: MAE 1.5e-3, DINO 2.5e-4)",
         "data": "training data: a plain folder of images (no labels), or any source of vitkit train: digits, "
                 "lfw-faces, a folder (train/<class>/*, val/<class>/*) or a .csv with header path,label (the labels "
                 "only feed the k-NN monitor)",
         "warmup_epochs": "linear warm-up in epochs (default 10; at most a quarter of the run's steps)",
         "min_lr": "learning rate at the end of the cosine (default: MAE 1e-5, DINO 1e-6)",
         "weight_decay": "weight decay (default: MAE 0.05, DINO 0.04)",
         "betas": "AdamW betas (default: MAE 0.9 0.95, DINO 0.9 0.999)",
         "clip_grad": "clip gradients (default: MAE none; DINO 3.0, each parameter's gradient on its own, as DINO)",
         "drop_path": "stochastic depth of the encoder (default: MAE 0, DINO 0.1)",
         "teacher_temp": "DINO: teacher temperature after the warm-up (default 0.07)",
         "warmup_teacher_temp_epochs": "DINO: epochs of the linear teacher temperature warm-up (default 10)",
         "out_dim": "DINO: output dimension of the projection head (default 1024; the paper's 65536 is for ImageNet)",
         "head_hidden": "DINO: hidden width of the projection MLP (default 512)",
         "head_bottleneck": "DINO: width before the weight-normalised last layer (default 128)",
         "local_scale": "DINO: area range (min max) of the local crops (default 0.1 0.4)",
         "crop_scale": "area range (min max) of the random resized crop: MAE's view (default 0.2 1), DINO's global "
                       "crops (default 0.4 1)",
         "momentum_teacher": "DINO: teacher EMA momentum at the start, cosine to 1 (default 0.99)",
         "koleo": "DINO: weight of DINOv2's KoLeo regulariser, which spreads the student's features of each global "
                  "crop over the sphere so that a small encoder's output does not collapse (default 0.5; 0 is off)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pre-training (MAE, DINO) on unlabelled images",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, TRAIN_ONLY, {**HELP, **HELPS})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    method = args.method
    if method is None and args.resume:
        from ..train.checkpoint import checkpoint_to_resume, load_checkpoint

        src = args.resume if args.resume != "auto" else (checkpoint_to_resume(args.out) if args.out else None)
        method = (load_checkpoint(src).get("train_config") or {}).get("method") if src else None
    if method not in RECIPES:
        raise ValueError("give --method mae or --method dino" + (f" (the checkpoint's run is a {method} run)"
                                                                 if method else ""))
    other = {"mae": DINO_FIELDS, "dino": MAE_FIELDS}[method]
    unused = [f"--{k.replace('_', '-')}" for k in other if getattr(args, k, None) is not None]
    if args.config:  # the same settings in a --config file
        unused += [f"{k} (in {args.config})" for k in read_config_file(args.config) if k in other]
    if unused:
        raise ValueError(f"{', '.join(unused)}: {'DINO' if method == 'mae' else 'MAE'} setting(s), which "
                         f"--method {method} does not use")
    cfg = resolve_config(args, RECIPES[method])
    if cfg.method != method:
        raise ValueError(f"--method {method} does not match the settings' method {cfg.method!r}")
    return run_config(cfg, "pretrain")
