"""The training engine behind ``vitkit train``: one loop for one process, DDP or FSDP.

Exact resume: the data order of an epoch is a permutation seeded by (seed, epoch); each
image's augmentation is seeded by (seed, epoch, index); mixup/cutmix by (seed, step); the
learning rate is a function of the step. A checkpoint holds the model, optimizer, schedule,
grad scaler, EMA, the generator states of Python, NumPy and torch (CPU and CUDA, per
process) and the position in the data (epoch, batch), so a run resumed from a checkpoint
written in the middle of an epoch takes the same steps as the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..data.datasets import (AugmentedView, DataSpec, ImageDataset, TensorImageDataset, collate_skipping,
                             raise_if_strict)
from ..data.builtin import BUILTIN
from ..utils.atomic import reason
from ..utils.names import printable
from ..weights.api import save as save_model
from . import checkpoint as ckpt
from . import distributed as D
from .augment import EvalTransform
from .config import TrainConfig
from .ema import ModelEma
from .lock import RunLock
from .metrics import plot_curves
from .model_setup import architecture_diff, build_model
from .optim import WarmupCosine, build_optimizer

Hook = Callable[..., None]

# without a terminal (a log file, CI) the progress bar's redraws are replaced by one plain line
# every PROGRESS_EVERY optimizer steps (and the first and last), plus a line per epoch
PROGRESS_EVERY = 50


# what each objective is called in messages
_OBJECTIVE = {"classify": "classification (vitkit train)", "distill": "distillation (vitkit train --distill)",
              "mae": "MAE pre-training (vitkit pretrain --method mae)",
              "dino": "DINO pre-training (vitkit pretrain --method dino)"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the optimizer step."""


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed into this run (other architecture, classes, run folder...)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run at a step boundary, after writing ``checkpoint`` (a step
    checkpoint like any other: ``--resume`` continues from it exactly)."""

    def __init__(self, checkpoint: Path, step: int, total: int, world_size: int = 1):
        self.checkpoint, self.step, self.total, self.world_size = checkpoint, step, total, world_size
        super().__init__(f"interrupted at step {step} of {total}; checkpoint {checkpoint} written")

    def resume_command(self) -> str:
        import shlex

        return f"vitkit train --resume {shlex.quote(printable(str(self.checkpoint)))}"


def run_folder_of(checkpoint: str | os.PathLike) -> Path:
    """The run folder a checkpoint belongs to: RUN for RUN/checkpoints/step_*.pt (or best.pt),
    RUN/checkpoints or RUN; else the folder holding the file."""
    p = Path(checkpoint)
    if p.is_dir():
        return p.parent if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def _same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process (a terminal sends SIGINT to the whole
    process group), which stops at a step boundary and writes a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _native_channels(source: str) -> int:
    """Channels of the source's images before any conversion: the built-ins are grey, files RGB."""
    return 1 if source in BUILTIN else 3


def _micro_batches(order: list[int], step: int, global_batch: int, accum: int, rank: int, world: int) -> list[list[int]]:
    """The ``accum`` micro-batches (this process's part) of optimizer step ``step`` of an epoch.

    The global batch is split into ``accum`` consecutive chunks, each chunk into ``world``
    consecutive parts; process ``rank`` takes part ``rank`` of each chunk. One process with the
    same global batch sees the union, so DDP and one process compute the same mean gradient.
    """
    batch = order[step * global_batch:(step + 1) * global_batch]
    micro = global_batch // accum
    per = micro // world
    return [batch[a * micro + rank * per:a * micro + (rank + 1) * per] for a in range(accum)]


class Trainer:
    """Train a ViT as a :class:`TrainConfig` says.

    ``train_data``/``val_data`` may be given as data sets instead of ``cfg.data`` (Python use);
    ``hooks`` are called as ``hook(event, trainer, **info)`` with events ``"step"`` (after each
    optimizer step and its checkpoint, info: step, loss) and ``"epoch"`` (after validation).
    """

    def __init__(self, cfg: TrainConfig, train_data: ImageDataset | None = None,
                 val_data: ImageDataset | None = None, hooks: list[Hook] | None = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.hooks, self._log = cfg, list(hooks or []), log
        self._given = (train_data, val_data)
        self.skipped: dict[str, str] = {}
        self.lock: RunLock | None = None
        self._stop_requested = False  # set by the first Ctrl-C
        self._saved_at = -1  # the step of the last checkpoint written

    # ------------------------------------------------------------------ set-up
    @property
    def command(self) -> str:
        """The command a run belongs to, for its messages: train, or pretrain for MAE and DINO."""
        return "pretrain" if self.cfg.method in ("mae", "dino") else "train"

    def log(self, msg: str) -> None:
        if self.info.is_main:
            self._log(msg)

    def _resolve_resume(self) -> dict | None:
        cfg = self.cfg
        if not cfg.resume:
            return None
        if cfg.resume == "auto":
            return ckpt.load_checkpoint(ckpt.checkpoint_to_resume(cfg.out))
        state = ckpt.load_checkpoint(cfg.resume)
        # RELIABILITY item 37: a run continues in its own folder; resuming run A with --out B would
        # mix A's checkpoints into B (and B's metrics and model with A's)
        home = run_folder_of(state["_path"])
        if not _same_folder(home, cfg.out):
            raise ResumeError(f"cannot resume {state['_path']} into --out {cfg.out}: the checkpoint belongs to the "
                              f"run folder {home}. Continue it there (--out {home}, or no --out), or start a new "
                              f"run from its weights with --model {state['_path']}")
        return state

    def _lock_run_folder(self) -> None:
        """Rank 0 holds RUN/.lock for the run's lifetime (RELIABILITY item 36)."""
        if self.info.is_main and (self.lock is None or not self.lock.held):
            lock = RunLock(self.cfg.out)
            try:
                self.lock = lock.acquire()
            except OSError as e:
                raise ckpt.CheckpointError(e.errno, f"could not write the lock file {lock.path}: {reason(e)}") from None

    def close(self) -> None:
        """Release the run folder (the lock) and the TensorBoard writer; called when fit() ends."""
        if getattr(self, "tb", None) is not None:
            self.tb.close()
            self.tb = None
        if self.lock is not None:
            self.lock.release()

    def setup(self) -> "Trainer":
        try:
            return self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> "Trainer":
        cfg = self.cfg
        cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.info = info = D.setup(cfg.device)
        resume = self._resolve_resume()  # before anything is written: a bad resume changes nothing
        if Path(cfg.out).is_dir():
            self._lock_run_folder()  # a second run into a busy folder stops here, before any work
        old = ckpt.step_checkpoints(cfg.out) if Path(cfg.out).is_dir() else []
        if resume is None and old and not cfg.overwrite:
            raise ValueError(f"{cfg.out} already holds the checkpoints of a run ({old[-1][1].name}); continue it "
                             "with --resume, start over with --overwrite, or choose another --out")

        # --- data
        train_ds, val_ds = self._given
        native = _native_channels(cfg.data) if train_ds is None else train_ds_channels(train_ds)
        from ..tasks import make_task  # here, not at import: the tasks build on this package

        self.task = task = make_task(cfg)
        if resume is not None:  # before anything is built: another objective's state would not fit
            saved = (resume.get("task") or {}).get("name", "classify")
            if saved != task.name:
                raise ResumeError(f"cannot resume {resume['_path']}: it is a {_OBJECTIVE.get(saved, saved)} run, "
                                  f"these settings ask for {_OBJECTIVE.get(task.name, task.name)}")
        _seed_all(cfg.seed)  # same initial weights on every process
        if train_ds is not None:
            classes = list(train_ds.classes)
        else:
            classes = task.data_classes(cfg.data)
        model, notes = build_model(cfg.init or cfg.model, task.model_classes(classes), native, cfg.image_size,
                                   cfg.patch_size,
                                   0.0 if cfg.linear_probe else cfg.drop_path,
                                   None if cfg.init else cfg.model_overrides, cfg.load_options(),
                                   architecture=cfg.model if cfg.init else None,
                                   architecture_overrides=cfg.model_overrides if cfg.init else None)
        mcfg = model.cfg
        if train_ds is None:
            spec = DataSpec(image_size=mcfg.image_hw, channels=mcfg.channels, val_fraction=cfg.val_fraction,
                            strict=cfg.strict_data, preprocess=model.preprocess_cfg)
            train_ds, val_ds = task.load_data(cfg.data, spec, cfg.val_data)
        if list(train_ds.classes) != classes:
            raise ValueError(f"training data classes {train_ds.classes} differ from {classes}")
        if val_ds is not None and len(val_ds.classes) != len(classes):
            raise ValueError(f"validation data has {len(val_ds.classes)} classes, training data {len(classes)}")
        self.train_ds, self.val_ds, self.classes = train_ds, val_ds, classes

        if resume is not None:
            if list(resume["classes"]) != classes:
                raise ResumeError(f"cannot resume from {resume['_path']}: it was trained on "
                                  f"{len(resume['classes'])} classes {resume['classes'][:10]}, the data has "
                                  f"{len(classes)} {classes[:10]}")
            diff = architecture_diff(resume["model_config"], mcfg.to_dict())
            if diff:
                raise ResumeError(f"cannot resume from {resume['_path']}: it holds another architecture "
                                  f"({'; '.join(diff)})")

        # --- sizes
        W, A, G = info.world_size, cfg.accum_steps, cfg.batch_size
        if G % (W * A):
            raise ValueError(f"batch size {G} must be divisible by processes x accumulation steps = {W} x {A}")
        self.steps_per_epoch = len(train_ds) // G
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch size {G} is larger than the training set ({len(train_ds)} images); give a "
                             f"smaller --batch-size")
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        # --- model, optimizer, schedule
        if cfg.linear_probe:
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(("head.", "head_dist.")))
            notes.append("linear probe: backbone frozen, only the head trains")
        pre = model.preprocess_cfg  # the checkpoint's when fine-tuning, else vitkit's default
        self.raw = model.to(info.device)
        self.amp_dtype = self._amp_dtype()
        notes += task.setup(self)
        trained = task.module(self)  # the ViT, or the task's wrapper around it (MAE, DINO's student)
        ema_decay = cfg.ema if task.keeps_ema else None
        if ema_decay and cfg.fsdp and info.enabled:
            notes.append("EMA is not kept under FSDP (the weights are sharded); train without it")
            ema_decay = None
        self.ema = ModelEma(self.raw, ema_decay) if ema_decay else None
        self.model = D.wrap(trained, info, cfg.fsdp)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(D.unwrap(self.model), cfg.optimizer, cfg.lr, cfg.weight_decay,
                                         cfg.layer_decay, cfg.momentum, cfg.betas)
        # warm-up in steps, at most a quarter of a short run
        warmup = min(int(round(cfg.warmup_epochs * self.steps_per_epoch)), self.total_steps // 4)
        self.schedule = WarmupCosine(self.optimizer, cfg.lr, self.total_steps, warmup, cfg.min_lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.transform = task.train_transform(self)
        self.eval_transform = EvalTransform(pre.mean, pre.std)
        self.workers = cfg.workers if cfg.workers is not None else (
            0 if isinstance(train_ds, TensorImageDataset) else min(4, max(1, (os.cpu_count() or 2) - 1)))

        # --- progress
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best = {"score": None, "epoch": None, "step": None}
        self.epoch_losses: list[float] = []  # the losses of this epoch's steps so far (its "train loss")
        self.last_val: dict[str, Any] = {}  # the numbers of the last validation (top1 / ema_top1: which weights infer)
        _seed_all(cfg.seed + 1000003 * info.rank)  # dropout / stochastic depth differ per process
        if resume is not None:
            self._load_resume(resume)
            notes.append(f"resumed from {resume['_path']} at step {self.global_step} "
                         f"(epoch {self.epoch + 1}, batch {self.batch_in_epoch})")

        # --- run folder (rank 0)
        self.run_dir = Path(cfg.out)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.tb = None
        if info.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                ckpt.checkpoint_dir(self.run_dir).mkdir(exist_ok=True)
            except OSError as e:
                raise ckpt.CheckpointError(e.errno, f"could not write the run folder {self.run_dir}: {reason(e)}") from None
            self._lock_run_folder()
            for p in ckpt.checkpoint_dir(self.run_dir).glob(".*.tmp-*"):  # left by a write that was killed
                p.unlink(missing_ok=True)
            self._tidy_model_swap()
            if resume is None:  # a fresh run (--overwrite): earlier checkpoints and metrics go
                for _, p in ckpt.step_checkpoints(self.run_dir):
                    p.unlink()
                for p in (ckpt.checkpoint_dir(self.run_dir) / "best.pt", self.metrics_path,
                          self.run_dir / "skipped_files.txt"):
                    p.unlink(missing_ok=True)
            ckpt.write_bytes_atomic(self.run_dir / "config.yaml",
                                    yaml.safe_dump(self._resolved_config(), sort_keys=False).encode())
            self._trim_metrics()
            if cfg.log_every:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.global_step + 1)
                except ImportError:  # pragma: no cover - tensorboard is a dependency
                    self.tb = None
        D.barrier(info)
        self.log(f"vitkit {self.command}: {train_ds.describe()}; validation {val_ds.describe() if val_ds else 'none'}")
        if task.name != "classify":
            self.log(f"  objective: {task.name}")
        self.log(f"  model: {mcfg.image_hw[0]}x{mcfg.image_hw[1]}x{mcfg.channels} input, patch {mcfg.patch_size}, "
                 f"width {mcfg.width}, depth {mcfg.depth}, heads {mcfg.heads}, "
                 f"{sum(p.numel() for p in self.raw.parameters()) / 1e6:.2f}M parameters; "
                 f"{info.world_size} process(es) on {info.device.type}"
                 f"{' (FSDP)' if cfg.fsdp and info.enabled else ' (DDP)' if info.enabled else ''}"
                 f"{f', {torch.get_num_threads()} thread(s) each' if info.device.type == 'cpu' else ''}")
        for n in notes:
            self.log(f"  {n}")
        self.log(f"  {self.total_steps} steps ({self.steps_per_epoch} per epoch, batch {G}), {cfg.optimizer} "
                 f"lr {cfg.lr:g}, warm-up {warmup} steps, cosine to {cfg.min_lr:g}"
                 f"{f', EMA {ema_decay}' if ema_decay else ''}{', ' + str(self.amp_dtype).split('.')[-1] if self.amp_dtype else ''}")
        return self

    def _amp_dtype(self) -> torch.dtype | None:
        mode, dev = self.cfg.amp, self.info.device
        if mode == "none":
            return None
        if mode == "auto":
            return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
        if mode == "fp16" and dev.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; use bf16 or none on the CPU")
        return torch.bfloat16 if mode == "bf16" else torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.info.device.type, dtype=self.amp_dtype)

    def _resolved_config(self) -> dict[str, Any]:
        d = self.cfg.relevant()
        d["resolved"] = {"model_config": self.raw.cfg.to_dict(), "classes": self.classes,
                         "world_size": self.info.world_size, "steps_per_epoch": self.steps_per_epoch,
                         "total_steps": self.total_steps}
        return d

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        """Everything a resume needs (collective under FSDP; complete on rank 0)."""
        model_state = D.full_model_state(self.model)
        opt_state = D.full_optimizer_state(self.model, self.optimizer)
        rngs = D.all_gather_objects(ckpt.rng_state(), self.info)
        return {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION,
                "model": model_state, "model_config": self.raw.cfg.to_dict(), "classes": self.classes,
                "preprocess": self.raw.preprocess_cfg.to_dict(), "train_config": self.cfg.to_dict(),
                "optimizer": opt_state, "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema else None,
                "task": {"name": self.task.name, "state": self.task.state_dict(),
                         "inference": self.task.inference_source()},
                "progress": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                             "global_step": self.global_step, "best": dict(self.best),
                             "last_val": dict(self.last_val), "epoch_losses": list(self.epoch_losses)},
                "rng": rngs, "world_size": self.info.world_size}

    def save_checkpoint(self, best: bool = False) -> Path | None:
        self._saved_at = self.global_step
        state = self._state()
        path = None
        if self.info.is_main:
            d = ckpt.checkpoint_dir(self.run_dir)
            path = d / f"step_{self.global_step:08d}.pt"
            prev = ckpt.latest_checkpoint(self.run_dir)
            try:
                ckpt.save_checkpoint(state, path)
                ckpt.prune(self.run_dir, self.cfg.keep_last)
                if best:
                    ckpt.save_checkpoint(state, d / "best.pt")
            except ckpt.CheckpointError as e:
                raise ckpt.CheckpointError(e.errno, f"{e.args[-1]}; the run stopped at step {self.global_step}; "
                                                    f"the last good checkpoint {prev or '(none)'} is kept") from None
        D.barrier(self.info)
        return path

    def _load_resume(self, st: dict[str, Any]) -> None:
        D.load_full_model_state(self.model, st["model"])
        D.load_full_optimizer_state(self.model, self.optimizer, st["optimizer"])
        self.schedule.load_state_dict(st["scheduler"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None and st.get("ema"):
            self.ema.load_state_dict(st["ema"])
        self.task.load_state_dict((st.get("task") or {}).get("state") or {})
        p = st["progress"]
        self.epoch, self.batch_in_epoch, self.global_step = p["epoch"], p["batch_in_epoch"], p["global_step"]
        best = dict(p["best"])
        if "top1" in best:  # written before the tasks: the best top-1 is the classification score
            best["score"] = best.pop("top1")
            best["score"] = None if best["score"] is None or best["score"] < 0 else best["score"]
        self.best = best
        self.last_val = dict(p.get("last_val") or {})
        self.epoch_losses = [float(v) for v in p.get("epoch_losses") or []]  # older checkpoints: none
        rngs = st.get("rng") or []
        if len(rngs) == self.info.world_size:
            ckpt.set_rng_state(rngs[self.info.rank])
        else:
            self.log(f"  note: the checkpoint was written by {len(rngs)} process(es), this run has "
                     f"{self.info.world_size}; random states are re-seeded, so the run is not bit-exact")

    # ------------------------------------------------------------------ metrics
    def _trim_metrics(self) -> None:
        """On resume, drop metrics lines written after the checkpoint (by the interrupted run)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
            if r.get("step", 0) <= self.global_step:
                keep.append(line)
        ckpt.write_bytes_atomic(self.metrics_path, ("\n".join(keep) + "\n" if keep else "").encode())

    def _append(self, path: Path, line: str) -> None:
        """Append one line to a file of the run folder; a full disk is a one-line error."""
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            last = ckpt.latest_checkpoint(self.run_dir)
            raise ckpt.CheckpointError(e.errno, f"could not write {path}: {reason(e)}; the run stopped at step "
                                                f"{self.global_step}; the last good checkpoint {last or '(none)'} "
                                                f"is kept") from None

    def _record(self, row: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        self._append(self.metrics_path, json.dumps(row))
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("kind", "step", "epoch") and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"{row['kind']}/{k}", v, row["step"])
            self.tb.flush()

    def note_skipped(self, reasons: list[str]) -> None:
        """Report each unreadable file once (whichever worker, epoch or validation pass met it);
        with --strict-data, stop at the first (items read in loader workers come back marked)."""
        raise_if_strict(reasons)
        for r in reasons:
            path = getattr(r, "path", r)
            if path not in self.skipped:
                self.skipped[path] = r
                self.log(f"  skipped unreadable file {r}")
                if self.info.is_main:
                    self._append(self.run_dir / "skipped_files.txt", r)

    # ------------------------------------------------------------------ data
    def _loader(self, view, batches: list[list], epoch: int):
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)  # worker seeds only; global RNG untouched
        return torch.utils.data.DataLoader(view, batch_sampler=batches, num_workers=self.workers,
                                           collate_fn=collate_skipping, generator=g,
                                           worker_init_fn=_ignore_sigint if self.workers else None,
                                           pin_memory=self.info.device.type == "cuda")

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_ds), generator=g).tolist()

    def val_batches(self, ds: ImageDataset | None = None) -> Any:
        """This process's share of a data set (the validation set by default) as normalised, unaugmented
        ``(x, y, skipped)`` batches, padded with label D.PAD_LABEL so every process runs as many batches."""
        ds = self.val_ds if ds is None else ds
        W, r = self.info.world_size, self.info.rank
        n = len(ds)
        per = math.ceil(n / W)
        idx = [(i, True) for i in range(r, n, W)] + [(0, False)] * (per - len(range(r, n, W)))
        bs = max(1, self.cfg.batch_size // W)
        view = _EvalView(ds, self.eval_transform)
        return self._loader(view, [idx[i:i + bs] for i in range(0, len(idx), bs)], 0)

    def validate(self) -> dict[str, Any]:
        """The task's validation (top-1 for classification; k-NN and reconstruction for pre-training)."""
        return self.task.evaluate(self)

    # ------------------------------------------------------------------ the loop
    def _train_step(self, micro: list[tuple[torch.Tensor | None, torch.Tensor | None, list[str]]]) -> float:
        """Forward/backward over the micro-batches, then (if the loss is finite) one optimizer step."""
        cfg, dev, A = self.cfg, self.info.device, len(micro)
        g = torch.Generator().manual_seed(cfg.seed * 2_000_003 + self.global_step)  # mixup/cutmix of this step
        total = torch.zeros((), dtype=torch.float64)
        for a, (x, y, skipped) in enumerate(micro):
            self.note_skipped(skipped)
            if x is None:
                raise ValueError(f"every image of a batch at step {self.global_step + 1} was unreadable; "
                                 f"see {self.run_dir / 'skipped_files.txt'}")
            sync = a == A - 1 or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
            with (nullcontext() if sync else self.model.no_sync()):
                loss = self.task.loss(self, self.model, x, y, g) / A
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach().double().cpu()
        total = D.all_reduce_sum(total.to(dev) if dev.type == "cuda" else total, self.info).cpu()
        loss_value = float(total) / self.info.world_size
        if not math.isfinite(loss_value):
            last = ckpt.latest_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"the training loss is {loss_value} at step {self.global_step + 1} (epoch {self.epoch + 1}, batch "
                f"{self.batch_in_epoch + 1}); stopped before the optimizer step. The last good checkpoint "
                f"{last if last else '(none yet)'} is untouched. Lower --lr, check the data, or use --clip-grad.")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        self.task.after_backward(self)
        if cfg.clip_grad:
            self.task.clip_gradients(self, cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step(self)
        return loss_value

    # ------------------------------------------------------------------ Ctrl-C
    def _catch_sigint(self) -> None:
        """The first Ctrl-C asks the run to stop at the next step boundary with a checkpoint
        (RELIABILITY item 40); a second one stops at once (KeyboardInterrupt, no checkpoint)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def on_sigint(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            if self.info.is_main:  # os.write: print() is not safe inside a signal handler
                os.write(2, f"\nvitkit {self.command}: Ctrl-C: stopping after this step to write a checkpoint "
                            "(Ctrl-C again stops at once, without one)\n".encode())

        self._prev_sigint = (signal.signal(signal.SIGINT, on_sigint),)  # (None when set outside Python)

    def _restore_sigint(self) -> None:
        prev = getattr(self, "_prev_sigint", None)
        if prev is not None:
            signal.signal(signal.SIGINT, prev[0] if prev[0] is not None else signal.default_int_handler)
            self._prev_sigint = None

    def _stop_now(self) -> bool:
        """Whether Ctrl-C asked to stop, agreed by every process (the checkpoint is collective)."""
        stop = self._stop_requested
        if self.info.enabled:
            dev = self.info.device if self.info.device.type == "cuda" else torch.device("cpu")
            stop = bool(D.all_reduce_sum(torch.tensor([float(stop)], device=dev), self.info).item() > 0)
        return stop

    def _interrupt(self) -> None:
        """Write the checkpoint of this step boundary (unless it was just written) and stop."""
        if self._saved_at != self.global_step:
            self.save_checkpoint()
        path = ckpt.checkpoint_dir(self.run_dir) / f"step_{self.global_step:08d}.pt"
        raise TrainingInterrupted(path, self.global_step, self.total_steps, self.info.world_size)

    # ------------------------------------------------------------------ progress
    def _progress_bar(self):
        """A tqdm bar when stderr is a terminal; None (and plain lines) otherwise or with progress off."""
        if not (self.cfg.progress and self.info.is_main):
            return None, False
        if getattr(sys.stderr, "isatty", lambda: False)():
            from tqdm import tqdm

            return tqdm(total=self.total_steps, initial=self.global_step, unit="step", dynamic_ncols=True,
                        desc="training", file=sys.stderr), False
        return None, True

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        """Train to the end (resuming where a checkpoint left off) and return the summary.

        Ctrl-C stops at the next step boundary after writing a step checkpoint, and raises
        :class:`TrainingInterrupted` (a KeyboardInterrupt) naming it."""
        if not hasattr(self, "info"):
            self.setup()
        self._catch_sigint()
        try:
            return self._fit()
        finally:
            self._restore_sigint()
            if getattr(self, "_bar", None) is not None:
                self._bar.close()
            self.close()

    def _fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        G, A = cfg.batch_size, cfg.accum_steps
        view = AugmentedView(self.train_ds, self.transform, cfg.seed)
        bar, plain = self._progress_bar()
        self._bar = bar  # closed by fit() also when the run stops early
        t0, images_done, start_step = time.time(), 0, self.global_step
        last_val: dict[str, Any] = dict(self.last_val)  # a resumed run that is already complete keeps its numbers
        line_loss = []  # losses since the last plain line
        self.model.train()
        while self.global_step < self.total_steps:
            order = self.epoch_order(self.epoch)
            # this epoch runs to its end, or to the last step of the run (which may stop mid-epoch)
            steps_here = self.batch_in_epoch + min(self.steps_per_epoch - self.batch_in_epoch,
                                                   self.total_steps - self.global_step)
            micro_lists = []
            for s in range(self.batch_in_epoch, steps_here):
                micro_lists += [[(i, self.epoch) for i in mb]
                                for mb in _micro_batches(order, s, G, A, info.rank, info.world_size)]
            it = iter(self._loader(view, micro_lists, self.epoch))
            t_step = time.time()
            if self.batch_in_epoch == 0:  # a resumed epoch keeps the losses of its steps before the checkpoint
                self.epoch_losses = []
            while self.batch_in_epoch < steps_here:
                micro = [next(it) for _ in range(A)]
                loss = self._train_step(micro)
                lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0)
                self.schedule.step()
                if self.ema is not None:
                    self.ema.update(self.raw)  # the ViT (a task may train a wrapper around it)
                self.global_step += 1
                self.batch_in_epoch += 1
                images_done += G
                now = time.time()
                ips = G / max(now - t_step, 1e-9)
                t_step = now
                line_loss.append(loss)
                self.epoch_losses.append(loss)
                if self.global_step % cfg.log_every == 0 or self.global_step == self.total_steps:
                    self._record({"kind": "train", "step": self.global_step, "epoch": self.epoch + 1,
                                  "loss": loss, "lr": lr, "images_per_s": round(ips, 1), **self.task.step_logs()})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                    img_s=f"{images_done / max(time.time() - t0, 1e-9):.0f}")
                elif plain and (self.global_step % PROGRESS_EVERY == 0 or self.global_step == start_step + 1
                                or self.global_step == self.total_steps):
                    self.log(f"step {self.global_step}/{self.total_steps} (epoch {self.epoch + 1}/"
                             f"{self.total_epochs}): loss {sum(line_loss) / len(line_loss):.4f}, lr {lr:.2e}, "
                             f"{images_done / max(now - t0, 1e-9):.0f} img/s, {now - t0:.0f} s")
                    line_loss = []
                epoch_done = self.batch_in_epoch == steps_here
                if cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0 and not epoch_done:
                    self.save_checkpoint()
                for h in self.hooks:
                    h("step", self, step=self.global_step, loss=loss)
                if not epoch_done and self._stop_now():
                    self._interrupt()
            # --- end of epoch: validate, checkpoint, plot
            last_epoch = self.global_step >= self.total_steps
            shown = self.epoch + 1  # the epoch just trained (1-based)
            if self.batch_in_epoch == self.steps_per_epoch:  # complete; a run stopped by --steps stays put
                self.epoch += 1
                self.batch_in_epoch = 0
            improved = False
            line = None
            if self.task.can_validate(self) and (shown % cfg.eval_every == 0 or last_epoch):
                last_val = self.validate()
                self.last_val = {k: v for k, v in last_val.items() if isinstance(v, (int, float)) or v is None}
                score = self.task.score(last_val)
                improved = score is not None and (self.best["score"] is None or score > self.best["score"])
                if improved:
                    self.best = {"score": score, "epoch": shown, "step": self.global_step}
                self._record({"kind": "val", "step": self.global_step, "epoch": shown, **self.last_val})
                line = (f"epoch {shown}/{self.total_epochs}: {self.task.describe(last_val)}"
                        + f", train loss {sum(self.epoch_losses) / max(len(self.epoch_losses), 1):.4f}"
                        + f" ({time.time() - t0:.0f} s)")
            elif plain:  # an epoch summary in logs also when this epoch is not validated
                line = (f"epoch {shown}/{self.total_epochs}: train loss "
                        f"{sum(self.epoch_losses) / max(len(self.epoch_losses), 1):.4f} ({time.time() - t0:.0f} s)")
            if line is not None:
                if bar is not None:
                    bar.write(line)
                else:
                    self.log(line)
            self.task.after_epoch(self, shown, last_val)
            self.save_checkpoint(best=improved)
            if info.is_main:
                plot_curves(self.metrics_path, self.run_dir / "curves.png")
            for h in self.hooks:
                h("epoch", self, epoch=shown, **last_val)
            if not last_epoch and self._stop_now():
                self._interrupt()
        if bar is not None:
            bar.close()
            self._bar = None
        self._restore_sigint()  # the run is complete: a Ctrl-C now stops the final save at once
        elapsed = time.time() - t0
        return self._finish(last_val, elapsed, start_step)

    def _tidy_model_swap(self) -> None:
        """Undo what a run killed inside :meth:`_save_final_model` left behind."""
        final = self.run_dir / "model"
        for p in self.run_dir.glob(".model.old-*"):
            if not final.exists():
                os.replace(p, final)  # killed between the two renames: the previous model comes back
            else:
                shutil.rmtree(p, ignore_errors=True)
        for p in self.run_dir.glob(".model.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    def _save_final_model(self, model: torch.nn.Module) -> Path:
        """Write RUN/model as a whole: vitkit.save into RUN/.model.tmp-PID, then swapped in by two
        renames, so a full disk or a read-only folder keeps the previous RUN/model intact."""
        final = self.run_dir / "model"
        tmp, old = self.run_dir / f".model.tmp-{os.getpid()}", self.run_dir / f".model.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_model(model, tmp)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        except OSError as e:
            if old.exists() and not final.exists():
                os.replace(old, final)
            shutil.rmtree(tmp, ignore_errors=True)
            last = ckpt.latest_checkpoint(self.run_dir)
            kept = "; the previous model is kept" if final.exists() else ""
            raise ckpt.CheckpointError(e.errno, f"could not write {final}: {reason(e)}{kept}; the trained weights "
                                                f"are in the checkpoint {last} (vitkit eval reads it)") from None
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _finish(self, last_val: dict[str, Any], elapsed: float, start_step: int) -> dict[str, Any]:
        """Save the final model as a vitkit folder (``RUN/model``: the weights the task chooses, e.g. the
        EMA's when they validate better) and print the one-line summary."""
        state, which = self.task.final_state(self, last_val)  # collective under FSDP
        best = self.best["score"]
        summary = {"steps": self.global_step, "epochs": self.epoch, "seconds": round(elapsed, 1)}
        if self.global_step == start_step and start_step > 0:  # resumed when already complete: nothing trained
            self._log(f"vitkit {self.command}: the run was already complete ({self.global_step} steps); its final "
                      "model and summary are written again from the last checkpoint")
            try:
                summary["seconds"] = json.loads((self.run_dir / "summary.json").read_text())["seconds"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        if self.task.name in ("classify", "distill"):
            summary.update(val_top1=last_val.get("top1"), val_top5=last_val.get("top5"),
                           ema_top1=last_val.get("ema_top1"), best_top1=-1.0 if best is None else best)
        else:
            summary.update(objective=self.task.name, val={k: v for k, v in last_val.items()
                                                          if isinstance(v, (int, float))}, best_score=best)
        summary.update(best_epoch=self.best["epoch"], model_weights=which,
                       model_dir=str(self.run_dir / "model"), skipped_files=len(self.skipped))
        if self.info.is_main:
            from ..models.vit import VisionTransformer

            out = VisionTransformer(self.raw.cfg)
            out.load_state_dict({k: v.cpu() for k, v in state.items()})
            out.preprocess_cfg = self.raw.preprocess_cfg
            self._save_final_model(out)
            ckpt.write_bytes_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
            if self.task.name in ("classify", "distill"):
                top1 = summary["ema_top1"] if which == "ema" else summary["val_top1"]
                acc = (f"val top-1 {100 * top1:.2f} %{' (EMA weights)' if which == 'ema' else ''}"
                       if top1 is not None else "no validation")
                acc += f", best {100 * max(best or 0, 0):.2f} % at epoch {self.best['epoch']}"
            else:
                acc = (self.task.describe(last_val) if last_val else "no validation") + f" ({which} weights)"
            self._log(f"vitkit {self.command}: done: "
                      f"{self.global_step - start_step} steps in {elapsed:.1f} s, {acc}; "
                      f"model saved to {self.run_dir / 'model'}"
                      + (f"; {len(self.skipped)} unreadable file(s) skipped" if self.skipped else ""))
        D.barrier(self.info)
        return summary


class _EvalView(torch.utils.data.Dataset):
    """Validation items ``(index, real)``: normalised image and label, label D.PAD_LABEL for padding."""

    def __init__(self, base: ImageDataset, transform: EvalTransform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        i, real = key
        x, y = self.base[i]
        if x is None:
            return (None, y) if real else (None, "")
        return self.transform(x), (y if real else D.PAD_LABEL)


def train_ds_channels(ds: ImageDataset) -> int:
    x, _ = ds[0]
    return int(x.shape[0]) if x is not None else 3


def train(cfg: TrainConfig, **kw: Any) -> dict[str, Any]:
    """Run a training as ``cfg`` says (see :class:`Trainer`); returns the summary dict."""
    return Trainer(cfg, **kw).setup().fit()
