"""`vitkit train`: train or fine-tune a ViT (one process, or every process under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..train.config import TrainConfig, read_config_file

DESCRIPTION = """\
Train a ViT from scratch, or fine-tune a checkpoint, on a built-in data set (digits,
lfw-faces), an image folder (train/<class>/..., val/<class>/...) or a CSV of path,label.

Settings come from the defaults (a good recipe for small data), a --config file (YAML or
JSON, keys as the long flags with '_' or '-'), and flags; flags win. The run folder (--out)
gets config.yaml, checkpoints/, metrics.jsonl, tensorboard/, curves.png, summary.json and the
final model as a vitkit folder in model/ (what `vitkit eval RUN` and vitkit.load read).

Several processes: torchrun --nproc_per_node N -m vitkit.cli.main train ... (DDP; add --fsdp
to shard the model). --batch-size is the global batch, so the result does not depend on N.

Example:
  vitkit train --model vit_tiny_patch4_16_gap --model-set width=64,depth=4,heads=4,mlp_ratio=2 \\
      --data digits --epochs 150 --threads 1 --out runs/digits
"""

# help for every setting (the flag is --name-with-dashes)
HELP: dict[str, str] = {
    "model": "model name (vit_tiny_patch4_32, B/16...), a ViT config .json, or a checkpoint to fine-tune "
             "(a vitkit folder, a run folder or a training .pt): the head is replaced for new classes and the "
             "position embedding resampled for a new --image-size",
    "data": "training data: digits, lfw-faces, a folder (train/<class>/*, val/<class>/*) or a .csv with "
            "header path,label",
    "val_data": "separate validation folder or CSV (default: the source's val/ part, else a stratified "
                "held-out split)",
    "out": "run folder for checkpoints, metrics, plots and the final model (default when resuming: the "
           "checkpoint's run folder)",
    "image_size": "input side in pixels (default: the model's; images are resized to it)",
    "patch_size": "patch size for a model built from a name or config; for a checkpoint, the patch kernel is "
                  "resized to it (FlexiViT)",
    "model_overrides": "ViTConfig fields for a model built from a name or config, as KEY=VALUE[,KEY=VALUE...], "
                       "e.g. width=64,depth=4,heads=4; when fine-tuning a checkpoint, only pooling (cls, gap) "
                       "and fc_norm: e.g. pooling=gap, as MAE fine-tunes its encoder",
    "init": "start from this checkpoint's weights (anything vitkit.load reads: a pre-trained run, a hub id, a "
            "timm file...); with --model NAME, the checkpoint must be of that architecture",
    "heads": "attention heads of a checkpoint that does not store them (a bare timm state dict whose width "
             "is no published size)",
    "pooling": "cls or gap, for a checkpoint that does not say",
    "act": "gelu or gelu_tanh, for a checkpoint that does not say (a JAX .npz)",
    "val_fraction": "fraction held out for validation when the source has no validation part (default 0.2)",
    "strict_data": "stop at the first unreadable image file with its path (default: skip it and report it)",
    "workers": "data-loading processes (default 0 for the built-ins, else min(4, CPUs - 1))",
    "epochs": "number of epochs",
    "steps": "number of optimizer steps (instead of --epochs)",
    "batch_size": "global batch per optimizer step, all processes and accumulation steps together (default 64)",
    "accum_steps": "gradient accumulation: micro-batches per optimizer step (default 1)",
    "optimizer": "adamw (default) or sgd (Nesterov momentum)",
    "lr": "peak learning rate after warm-up, in (0, 10] (default 1e-3)",
    "min_lr": "learning rate at the end of the cosine (default 1e-5)",
    "warmup_epochs": "linear warm-up length in epochs, fractions allowed (default 5; at most a quarter of the run)",
    "weight_decay": "weight decay, not applied to norms, biases, tokens and position embeddings (default 0.05)",
    "momentum": "SGD momentum (default 0.9)",
    "betas": "AdamW betas, two numbers (default 0.9 0.999)",
    "layer_decay": "layer-wise lr decay, e.g. 0.75 for fine-tuning: block i gets lr * d^(depth-i) "
                   "(default off; 'none' turns it off)",
    "clip_grad": "clip the global gradient norm to this ('none' = off; default 1.0)",
    "label_smoothing": "label smoothing (default 0.1)",
    "drop_path": "stochastic depth rate of the last block (default 0.1)",
    "rotate": "random rotation up to +- degrees (default 10)",
    "translate": "random shift up to +- this fraction of the side (default 0.1)",
    "scale": "random zoom by 1 +- this (default 0.1)",
    "hflip": "horizontal flip probability (default 0: digits and text must not be mirrored)",
    "randaugment": "torchvision RandAugment as N,M (ops, magnitude), e.g. 2,9 (default off)",
    "random_erasing": "torchvision RandomErasing probability per image (default 0)",
    "mixup": "mixup Beta alpha, e.g. 0.8 (default 0 = off)",
    "cutmix": "cutmix Beta alpha, e.g. 1.0 (default 0 = off)",
    "mix_prob": "probability a batch is mixed when mixup/cutmix are on (default 1)",
    "mix_switch_prob": "probability of cutmix instead of mixup when both are on (default 0.5)",
    "ema": "EMA decay of the weights, evaluated too (default 0.998; 'none' = off)",
    "linear_probe": "train only the head; the backbone is frozen",
    "amp": "autocast: auto (bf16 on CUDA that supports it, else off), none, bf16, fp16 (CUDA, with a grad scaler)",
    "compile": "torch.compile the model",
    "fsdp": "under torchrun, shard the model with FSDP (fully_shard) instead of DDP",
    "device": "cpu, cuda or cuda:N (default: the local rank's GPU when there is one, else cpu)",
    "threads": "torch CPU threads (default: torch's choice); 1 is fastest for tiny models and on busy machines",
    "seed": "random seed (weights, data order, augmentation; default 0)",
    "eval_every": "epochs between validations (default 1; the last epoch always)",
    "save_every_steps": "also write a checkpoint every N optimizer steps, mid-epoch (default 0: end of epoch only)",
    "keep_last": "step checkpoints kept (default 2; best.pt is kept apart)",
    "log_every": "optimizer steps between metrics.jsonl / TensorBoard points (default 10)",
    "progress": "show progress: a bar on a terminal, else a plain line every 50 steps (default on; "
                "--no-progress: neither)",
    "resume": "resume from a checkpoint file or run folder, in its own run folder (another --out is refused); "
              "without a value, the latest checkpoint in --out. Ctrl-C during a run writes a checkpoint and "
              "prints the command that resumes it",
    "overwrite": "start over in a run folder that already holds checkpoints (they are deleted)",
    # objectives
    "method": "the pre-training method: mae (masked autoencoder) or dino (self-distillation)",
    "distill": "DeiT distillation from --teacher: hard (the teacher's arg-max class) or soft (its softened "
               "distribution); a student built with distilled=true learns it through its distillation token",
    "teacher": "the frozen teacher for --distill: anything vitkit.load reads, trained on the same classes",
    "distill_alpha": "weight of the distillation term, 1 - alpha on the labels (default 0.5, DeiT's)",
    "distill_tau": "soft distillation temperature (default 1.0, DeiT's)",
    "mask_ratio": "MAE: fraction of the patches masked per image (default 0.75)",
    "norm_pix_loss": "MAE: reconstruct each patch normalised by its own mean and variance",
    "decoder_width": "MAE: decoder width (default 64)",
    "decoder_depth": "MAE: decoder blocks (default 2)",
    "decoder_heads": "MAE: decoder attention heads (default 4)",
    "crop_scale": "area range (min max) of MAE's random resized crop and of DINO's global crops",
    "out_dim": "DINO: output dimension of the projection head (default 4096)",
    "head_hidden": "DINO: hidden width of the projection MLP (default 2048)",
    "head_bottleneck": "DINO: width before the weight-normalised last layer (default 256)",
    "local_crops": "DINO: local crops per image beside the two global ones (default 6)",
    "local_size": "DINO: side of the local crops in pixels (default 3/7 of the image side, a multiple of the patch)",
    "local_scale": "DINO: area range (min max) of the local crops (default 0.05 0.4)",
    "teacher_temp": "DINO: teacher temperature after the warm-up (default 0.04)",
    "warmup_teacher_temp": "DINO: teacher temperature at the start (default 0.04)",
    "warmup_teacher_temp_epochs": "DINO: epochs of the linear teacher temperature warm-up (default 0)",
    "student_temp": "DINO: student temperature (default 0.1)",
    "center_momentum": "DINO: momentum of the teacher output centre (default 0.9)",
    "momentum_teacher": "DINO: teacher EMA momentum at the start, cosine to 1 (default 0.996)",
    "freeze_last_layer": "DINO: epochs the head's last layer stays fixed (default 1)",
    "koleo": "DINO: weight of the KoLeo regulariser (DINOv2's) that spreads the student's features of each global "
             "crop over the sphere, against the collapse of a small encoder (default 0: off; DINOv2 0.1)",
    "knn_k": "neighbours of the k-NN monitor after each pre-training epoch (default 20)",
    "knn_temperature": "temperature of the weighted k-NN vote (default 0.07)",
}

# settings only `vitkit pretrain` shows, and settings only `vitkit train` shows
PRETRAIN_ONLY = {"method", "mask_ratio", "norm_pix_loss", "decoder_width", "decoder_depth", "decoder_heads",
                 "crop_scale", "out_dim", "head_hidden", "head_bottleneck", "local_crops", "local_size", "local_scale",
                 "teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_epochs", "student_temp",
                 "center_momentum", "momentum_teacher", "freeze_last_layer", "koleo", "knn_k", "knn_temperature"}
TRAIN_ONLY = {"distill", "teacher", "distill_alpha", "distill_tau", "label_smoothing", "mixup", "cutmix", "mix_prob",
              "mix_switch_prob", "linear_probe", "ema", "rotate", "translate", "scale", "randaugment",
              "random_erasing", "layer_decay", "heads", "pooling", "act"}


OFF = "none"  # what an optional setting given as 'none'/'off' holds until the settings are merged


def _optional_float(v: str) -> float | str:
    return OFF if v.lower() in ("none", "off") else float(v)


def _overrides(v: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in v.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {part!r}")
        k, val = part.split("=", 1)
        try:
            out[k.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[k.strip()] = val
    return out


def add_settings(p: argparse.ArgumentParser, hide: set[str], helps: dict[str, str] | None = None) -> None:
    """One flag per TrainConfig field (but ``hide``); every default None, so the settings merge knows what was given."""
    p.add_argument("--config", help="YAML or JSON file of settings (flags given here win)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in hide:
            continue
        name = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=f.name, default=None, help=(helps or {}).get(f.name, HELP[f.name]))
        if f.name == "method":
            p.add_argument(name, choices=["mae", "dino"], **kw)
        elif f.name in ("crop_scale", "local_scale"):
            p.add_argument(name, type=float, nargs=2, metavar=("MIN", "MAX"), **kw)
        elif f.name == "distill":
            p.add_argument(name, choices=["hard", "soft"], **kw)
        elif f.name == "resume":
            p.add_argument(name, nargs="?", const="auto", metavar="PATH", **kw)
        elif f.name == "model_overrides":
            p.add_argument("--model-set", type=_overrides, metavar="KEY=VALUE,...", **kw)
        elif f.name == "betas":
            p.add_argument(name, type=float, nargs=2, metavar=("B1", "B2"), **kw)
        elif f.type in ("bool",):
            p.add_argument(name, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("layer_decay", "clip_grad", "ema"):
            p.add_argument(name, type=_optional_float, metavar="X|none", **kw)
        elif f.name == "optimizer":
            p.add_argument(name, choices=["adamw", "sgd"], **kw)
        elif f.name == "amp":
            p.add_argument(name, choices=["auto", "none", "bf16", "fp16"], **kw)
        elif "int" in str(f.type) and "float" not in str(f.type):
            p.add_argument(name, type=int, **kw)
        elif "float" in str(f.type):
            p.add_argument(name, type=float, **kw)
        else:
            p.add_argument(name, **kw)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a ViT (DeiT recipe and distillation, resume, torchrun)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, PRETRAIN_ONLY)
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    """defaults (TrainConfig's, then ``defaults``: a method's recipe) < resumed checkpoint's settings <
    --config file < flags."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    base = TrainConfig().to_dict()
    base.update(defaults or {})
    resume = given.get("resume")
    if resume:
        from ..train.checkpoint import checkpoint_to_resume, load_checkpoint

        if resume == "auto":
            if "out" not in given:
                raise ValueError("--resume without a path needs --out RUN (the run folder to continue)")
            resume = checkpoint_to_resume(given["out"])
        ck = load_checkpoint(resume)
        saved = dict(ck.get("train_config") or {})
        saved.pop("resume", None)
        base.update(saved)
        if "out" not in given:  # the run folder the checkpoint belongs to
            path = Path(ck["_path"])
            base["out"] = str(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    if args.config:
        base.update(read_config_file(args.config))
    base.update({k: (None if v == OFF else v) for k, v in given.items()})
    return TrainConfig.from_dict(base, where=args.config or "settings")


def run(args: argparse.Namespace) -> int:
    """Train; a full disk or a non-finite loss is a one-line error (exit 2); Ctrl-C writes a
    checkpoint at the step boundary, prints the command that resumes it and exits 130."""
    cfg = resolve_config(args)
    if cfg.method != "classify":  # a pre-training run's settings came back with --resume
        raise ValueError(f"{args.resume} is a {cfg.method.upper()} pre-training run: continue it with "
                         f"vitkit pretrain --resume {args.resume}")
    return run_config(cfg, "train")


def run_config(cfg: TrainConfig, command: str) -> int:
    """Run a resolved training config for ``vitkit train`` or ``vitkit pretrain`` (the same loop)."""
    import sys

    from ..train import engine
    from .main import UserError

    try:
        engine.train(cfg)
    except engine.NonFiniteLossError as e:
        raise UserError(str(e)) from None
    except engine.TrainingInterrupted as e:
        print(f"vitkit {command}: interrupted at step {e.step} of {e.total}; the checkpoint {e.checkpoint} holds the "
              f"run up to there. Resume with{' (under the same torchrun launch)' if e.world_size > 1 else ''}:",
              file=sys.stderr)
        print(e.resume_command().replace("vitkit train", f"vitkit {command}", 1), file=sys.stderr)
        return 130
    finally:
        from ..train.distributed import teardown

        teardown()
    return 0
