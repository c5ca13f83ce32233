"""TrainConfig: every setting of a training run, with defaults that are a good recipe for small data.

Settings come from, in rising priority: these defaults, the saved config of a checkpoint
being resumed, a YAML/JSON config file, and command-line flags. The resolved config is
written to the run folder (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import yaml

AMP_MODES = ("auto", "none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")

# The largest peak learning rate accepted. Adam moves every weight by about lr per step and SGD
# by lr x gradient, so an lr above 10 moves weights initialised at ~0.02 by hundreds of times
# their size in one step: no recipe does that (large-batch SGD under the linear scaling rule
# stays below it: 0.1 x 8192/256 = 3.2), and lrs towards 1e38 overflow float32 (max 3.4e38) in
# Adam's first update, turning every weight into inf/NaN before the loss can show it.
MAX_LR = 10.0

# settings that hold real numbers (a YAML "1e-3" without a dot is a string: it is converted)
FLOAT_FIELDS = ("val_fraction", "lr", "min_lr", "warmup_epochs", "weight_decay", "momentum", "layer_decay",
                "clip_grad", "label_smoothing", "drop_path", "rotate", "translate", "scale", "hflip",
                "random_erasing", "mixup", "cutmix", "mix_prob", "mix_switch_prob", "ema", "distill_alpha",
                "distill_tau", "mask_ratio", "teacher_temp", "warmup_teacher_temp", "student_temp",
                "center_momentum", "momentum_teacher", "koleo", "knn_temperature")
PAIR_FIELDS = ("betas", "crop_scale", "local_scale")  # two numbers each
DISTILL_FIELDS = ("distill", "teacher", "distill_alpha", "distill_tau")
MAE_FIELDS = ("mask_ratio", "norm_pix_loss", "decoder_width", "decoder_depth", "decoder_heads")
DINO_FIELDS = ("out_dim", "head_hidden", "head_bottleneck", "local_crops", "local_size", "local_scale", "teacher_temp",
               "warmup_teacher_temp", "warmup_teacher_temp_epochs", "student_temp", "center_momentum",
               "momentum_teacher", "freeze_last_layer", "koleo")
MONITOR_FIELDS = ("knn_k", "knn_temperature")
METHODS = ("classify", "mae", "dino")
PRETRAIN_METHODS = ("mae", "dino")


# `vitkit pretrain`'s defaults per method, over TrainConfig's: recipes for small data (thousands of images,
# 16-64 px); the reason for each value is in docs/self_supervised.md
PRETRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "mae": dict(method="mae", lr=1.5e-3, min_lr=1e-5, warmup_epochs=10, weight_decay=0.05, betas=[0.9, 0.95],
                clip_grad=None, drop_path=0.0, ema=None, label_smoothing=0.0, rotate=0.0, translate=0.0, scale=0.0),
    "dino": dict(method="dino", crop_scale=[0.4, 1.0], local_scale=[0.1, 0.4], out_dim=1024, head_hidden=512,
                 head_bottleneck=128, lr=2.5e-4, min_lr=1e-6, warmup_epochs=10, weight_decay=0.04, clip_grad=3.0,
                 drop_path=0.1, ema=None, label_smoothing=0.0, rotate=0.0, translate=0.0, scale=0.0,
                 warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=10,
                 momentum_teacher=0.99, koleo=0.5),
}


@dataclass
class TrainConfig:
    """A training run. ``batch_size`` is the *global* batch per optimizer step (all processes
    and accumulation steps together), so the optimisation does not change with the number of
    processes: each process takes ``batch_size / (world_size * accum_steps)`` images per micro-step."""

    # what to train on what
    model: str | None = None  # model name, ViT config (.json), vitkit checkpoint folder, or run folder
    data: str | None = None  # digits | lfw-faces | folder | .csv
    val_data: str | None = None  # separate validation folder / CSV (default: the source's own split)
    out: str | None = None  # run folder
    image_size: int | None = None  # input side; default: the model's (pos-embed resampled for checkpoints)
    patch_size: int | None = None  # for a model built from a name/config; a checkpoint's kernel is resized (FlexiViT)
    model_overrides: dict[str, Any] | None = None  # ViTConfig fields for a name/config model, e.g. {width: 96}
    init: str | None = None  # start from this checkpoint's weights (anything vitkit.load reads); with a --model
    # name or config, the checkpoint must be of that architecture (classes and head aside)
    heads: int | None = None  # for a checkpoint that does not say (a bare timm state dict), as vitkit.load(heads=)
    pooling: str | None = None  # likewise: cls | gap
    act: str | None = None  # likewise: gelu | gelu_tanh
    val_fraction: float = 0.2  # held out when the source has no validation part (stratified, seed 0)
    strict_data: bool = False  # stop at the first unreadable image instead of skipping and reporting it
    workers: int | None = None  # data-loading processes; default 0 for in-memory data, else min(4, CPUs)

    # how long
    epochs: int | None = None
    steps: int | None = None  # optimizer steps (overrides epochs when set)
    batch_size: int = 64
    accum_steps: int = 1

    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-5  # end of the cosine
    warmup_epochs: float = 5.0  # linear warm-up (fractional epochs allowed)
    weight_decay: float = 0.05  # not applied to norms, biases, tokens and position embeddings
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    layer_decay: float | None = None  # layer-wise lr decay (e.g. 0.75 to fine-tune); None = off
    clip_grad: float | None = 1.0  # max global gradient norm; None = off
    label_smoothing: float = 0.1

    # regularisation and augmentation
    drop_path: float = 0.1  # stochastic depth (last block's rate)
    rotate: float = 10.0  # random affine: rotation up to ± degrees
    translate: float = 0.1  # shift up to ± this fraction of the side
    scale: float = 0.1  # zoom by 1 ± this
    hflip: float = 0.0  # probability of a horizontal flip (0 for digits and text)
    randaugment: str | None = None  # torchvision RandAugment "N,M" (ops, magnitude), e.g. "2,9"; None = off
    random_erasing: float = 0.0  # probability of torchvision RandomErasing per image
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 = off
    mix_prob: float = 1.0  # probability a batch is mixed when mixup/cutmix are on
    mix_switch_prob: float = 0.5  # probability of cutmix rather than mixup when both are on
    ema: float | None = 0.998  # EMA decay of the weights (evaluated too); None = off

    # objective: classify (vitkit train, DeiT distillation with --distill) or a pre-training method (vitkit pretrain)
    method: str = "classify"  # classify | mae | dino
    distill: str | None = None  # hard | soft: DeiT distillation from --teacher (vitkit train)
    teacher: str | None = None  # the frozen teacher: anything vitkit.load reads, trained on the same classes
    distill_alpha: float = 0.5  # weight of the distillation term; 1 - alpha on the labels (DeiT: 0.5)
    distill_tau: float = 1.0  # soft distillation temperature (DeiT: 1.0)
    # MAE (He et al. 2021)
    mask_ratio: float = 0.75  # fraction of patches masked per image
    norm_pix_loss: bool = False  # reconstruct each patch normalised by its own mean and variance
    decoder_width: int = 64  # MAE's paper: 512 wide, 8 deep, 16 heads (ViT-B and up at 224 px); small data: narrow and cheap
    decoder_depth: int = 2
    decoder_heads: int = 4
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range of the MAE view / DINO global crops
    # DINO (Caron et al. 2021)
    out_dim: int = 4096  # projection head output (the paper: 65536 for ImageNet)
    head_hidden: int = 2048  # projection MLP width
    head_bottleneck: int = 256  # width before the weight-normalised last layer
    local_crops: int = 6  # local crops per image beside the 2 global ones
    local_size: int | None = None  # local crop side (default: 3/7 of the image side, DINO's 96 of 224)
    local_scale: tuple[float, float] = (0.05, 0.4)  # area range of local crops (global: crop_scale)
    teacher_temp: float = 0.04  # teacher softmax temperature after warm-up
    warmup_teacher_temp: float = 0.04  # ...at the start, linear over warmup_teacher_temp_epochs
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996  # teacher EMA momentum, cosine to 1 over the run
    freeze_last_layer: int = 1  # epochs the head's last layer stays fixed
    koleo: float = 0.0  # weight of the KoLeo regulariser on the student's features of each global crop (DINOv2: 0.1)
    # frozen-feature monitor of pre-training (a labelled validation set) and `vitkit eval --knn`
    knn_k: int = 20
    knn_temperature: float = 0.07

    # mode
    linear_probe: bool = False  # train only the head; the backbone is frozen
    amp: str = "auto"  # autocast: auto = bf16 on CUDA that supports it, else off; none | bf16 | fp16
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # under torchrun: shard with FSDP (fully_shard) instead of DDP
    device: str | None = None  # default: cuda (local rank) when available, else cpu
    seed: int = 0
    threads: int | None = None  # torch CPU threads; default torch's choice (1 is fastest for tiny models)

    # bookkeeping
    eval_every: int = 1  # epochs between validations (and the last epoch always)
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (mid-epoch); 0 = end of epoch only
    keep_last: int = 2  # last-k step checkpoints kept (best.pt is kept separately)
    log_every: int = 10  # steps between metrics.jsonl lines (and TensorBoard points)
    progress: bool = True  # progress bar on rank 0
    resume: str | None = None  # checkpoint file or run folder to resume from ("auto": the latest in --out)
    overwrite: bool = False  # start over in a run folder that already holds checkpoints (they are replaced)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in PAIR_FIELDS:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown training setting(s) {unknown}; accepted: {sorted(known)}")
        d = dict(d)
        for name in FLOAT_FIELDS:
            if isinstance(d.get(name), str):
                try:
                    d[name] = float(d[name])
                except ValueError:
                    raise ValueError(f"{where}: {name} must be a number, got {d[name]!r}") from None
        for name in PAIR_FIELDS:
            if name in d and d[name] is not None:
                d[name] = tuple(d[name])
        return cls(**d)

    @classmethod
    def pretraining(cls, method: str, **settings: Any) -> "TrainConfig":
        """A pre-training run with ``vitkit pretrain``'s defaults for ``method`` (mae | dino), ``settings`` over
        them: ``TrainConfig.pretraining("mae", model=..., data=..., out=..., epochs=200)``. (A plain
        ``TrainConfig(method="mae")`` keeps the supervised defaults: lr, EMA, augmentation...)"""
        if method not in PRETRAIN_RECIPES:
            raise ValueError(f"method must be one of {sorted(PRETRAIN_RECIPES)}, got {method!r}")
        return cls.from_dict({**PRETRAIN_RECIPES[method], **settings}, where=f"{method} pre-training settings")

    def relevant(self) -> dict[str, Any]:
        """:meth:`to_dict` without the settings of the other objectives (what RUN/config.yaml shows)."""
        d = self.to_dict()
        drop = set(MAE_FIELDS) | set(DINO_FIELDS) | set(DISTILL_FIELDS)
        keep = {"mae": set(MAE_FIELDS) | {"crop_scale"} | set(MONITOR_FIELDS),
                "dino": set(DINO_FIELDS) | {"crop_scale"} | set(MONITOR_FIELDS)}.get(self.method, set())
        if self.method == "classify":
            keep = set(DISTILL_FIELDS) if self.distill else set()
            drop |= set(MONITOR_FIELDS) | {"crop_scale"}
        return {k: v for k, v in d.items() if k not in drop or k in keep}

    def load_options(self) -> dict[str, Any]:
        """The vitkit.load overrides for a checkpoint given as --model."""
        return {k: v for k, v in (("heads", self.heads), ("pooling", self.pooling), ("act", self.act)) if v is not None}

    def replace(self, **kw: Any) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def _validate_numbers(self) -> None:
        """Every real-valued setting is a finite number (inf and NaN get through comparisons)."""
        values = [(name, getattr(self, name)) for name in FLOAT_FIELDS]
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers, got {betas!r}")
        values += [(f"betas[{i}]", b) for i, b in enumerate(betas)]
        for name in ("crop_scale", "local_scale"):
            pair = getattr(self, name)
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{name} must be two numbers, got {pair!r}")
            values += [(f"{name}[{i}]", b) for i, b in enumerate(pair)]
        for name, v in values:
            if v is None and name in ("layer_decay", "clip_grad", "ema"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(betas)}")

    def validate(self) -> None:
        """Raise ValueError naming the setting when it is impossible."""
        if not self.model and not self.init:
            raise ValueError("no model: give --model (a name such as vit_tiny_patch4_32, a config .json, "
                             "or a checkpoint folder) or --init CHECKPOINT")
        if not self.data:
            raise ValueError("no data: give --data (digits, lfw-faces, a folder or a .csv)")
        if not self.out:
            raise ValueError("no run folder: give --out")
        if self.epochs is None and self.steps is None:
            raise ValueError("give --epochs or --steps")
        for name in ("epochs", "steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"--{name} must be a positive integer, got {v!r}")
        for name in ("batch_size", "accum_steps", "eval_every", "keep_last", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("save_every_steps", "workers", "image_size", "patch_size", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < (1 if name in ("image_size", "patch_size", "threads") else 0)):
                raise ValueError(f"{name} must be a {'non-negative' if name in ('workers', 'save_every_steps') else 'positive'} integer, "
                                 f"got {v!r}")
        self._validate_numbers()
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.warmup_epochs < 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ValueError("warmup_epochs, min_lr and weight_decay must not be negative")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"lr must be in (0, {MAX_LR:g}]: a larger peak learning rate diverges, and one near "
                             f"1e38 overflows the optimizer's float32 update; got {self.lr}")
        if self.min_lr > MAX_LR:
            raise ValueError(f"min_lr must be at most {MAX_LR:g}, got {self.min_lr}")
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"lr x weight_decay must be below 1 (each step multiplies the weights by 1 - lr x "
                             f"weight_decay), got {self.lr} x {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be positive (or None), got {self.clip_grad}")
        if not 0 <= self.translate <= 1:
            raise ValueError(f"translate must be in [0, 1] (a fraction of the side), got {self.translate}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"scale must be in [0, 1) (zoom by 1 +- scale), got {self.scale}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup and cutmix are Beta alphas: not negative, got {self.mixup} and {self.cutmix}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a decay in (0, 1) (or None), got {self.ema}")
        for name in ("label_smoothing", "drop_path", "hflip", "random_erasing", "mix_prob", "mix_switch_prob"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.randaugment is not None:
            parse_randaugment(self.randaugment)
        self._validate_objective()

    def _validate_objective(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.distill is not None:
            if self.distill not in ("hard", "soft"):
                raise ValueError(f"distill must be hard or soft, got {self.distill!r}")
            if self.method != "classify":
                raise ValueError(f"--distill trains a classifier; it does not combine with --method {self.method}")
            if not self.teacher:
                raise ValueError("--distill needs --teacher CHECKPOINT (a model trained on the same classes)")
        elif self.teacher:
            raise ValueError("--teacher is given without --distill hard|soft")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        for name in ("distill_tau", "teacher_temp", "warmup_teacher_temp", "student_temp", "knn_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1) (the fraction of patches masked), got {self.mask_ratio}")
        if not self.koleo >= 0:
            raise ValueError(f"koleo must be a weight >= 0 (0 turns the regulariser off), got {self.koleo}")
        for name in ("center_momentum", "momentum_teacher"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("decoder_width", "decoder_depth", "decoder_heads", "out_dim", "head_hidden", "head_bottleneck",
                     "knn_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"decoder_width {self.decoder_width} must be divisible by decoder_heads "
                             f"{self.decoder_heads}")
        for name in ("local_crops", "warmup_teacher_temp_epochs", "freeze_last_layer"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if self.local_size is not None and (not isinstance(self.local_size, int) or self.local_size < 1):
            raise ValueError(f"local_size must be a positive integer, got {self.local_size!r}")
        for name in ("crop_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be two areas 0 < min <= max <= 1, got {[lo, hi]}")


def parse_randaugment(spec: str) -> tuple[int, int]:
    """"N,M" -> (number of ops, magnitude 0..30)."""
    try:
        n, m = (int(v) for v in str(spec).split(","))
    except ValueError:
        raise ValueError(f"randaugment must be 'N,M' (ops, magnitude), e.g. '2,9'; got {spec!r}") from None
    if not (1 <= n <= 10 and 0 <= m <= 30):
        raise ValueError(f"randaugment {spec!r}: N must be 1..10 and M 0..30")
    return n, m


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON (.json) mapping of training settings."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of settings, got {type(data).__name__}")
    out = {k.replace("-", "_"): v for k, v in data.items()}
    if "model_set" in out:  # the flag's name (--model-set) for model_overrides
        out["model_overrides"] = out.pop("model_set")
    return out
