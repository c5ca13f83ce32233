"""Supervised classification (DeiT's recipe): mixup/cutmix with label smoothing, soft-target
cross-entropy, top-1 validation of the weights and of their EMA, "best" = the higher top-1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..train import checkpoint as ckpt
from ..train import distributed as D
from ..train.augment import TrainTransform
from ..train.metrics import evaluate
from ..train.mixup import Mixer, soft_target_cross_entropy
from .base import Task

if TYPE_CHECKING:  # pragma: no cover
    from ..train.engine import Trainer


class ClassifyTask(Task):
    name = "classify"

    def setup(self, trainer: "Trainer") -> list[str]:
        cfg = self.cfg
        self.mixer = Mixer(len(trainer.classes), cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob,
                           cfg.label_smoothing)
        return []

    def train_transform(self, trainer: "Trainer"):
        pre = trainer.raw.preprocess_cfg
        return TrainTransform(self.cfg, pre.mean, pre.std)

    def mixed(self, trainer: "Trainer", x: torch.Tensor, y: torch.Tensor,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch mixed (mixup/cutmix, this step's generator) with its soft targets, on the device."""
        dev = trainer.info.device
        x, target = self.mixer(x, y, g)
        return x.to(dev, non_blocking=True), target.to(dev, non_blocking=True)

    def loss(self, trainer: "Trainer", model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
        x, target = self.mixed(trainer, x, y, g)
        with trainer.autocast():
            logits = model(x)
        return soft_target_cross_entropy(logits, target)

    def evaluate(self, trainer: "Trainer") -> dict[str, Any]:
        n = len(trainer.classes)
        res = evaluate(trainer.model, trainer.val_batches(), n, trainer.info.device, trainer.info,
                       trainer.autocast())
        out = {"top1": res["top1"], "top5": res["top5"], "val_loss": res["loss"]}
        if trainer.ema is not None:
            e = evaluate(trainer.ema.module, trainer.val_batches(), n, trainer.info.device, trainer.info,
                         trainer.autocast())
            out.update(ema_top1=e["top1"], ema_top5=e["top5"])
        trainer.note_skipped(res["skipped"])
        return out

    def score(self, val: dict[str, Any]) -> float | None:
        return max(val["top1"], val.get("ema_top1") or -1.0)

    def describe(self, val: dict[str, Any]) -> str:
        return (f"val top-1 {100 * val['top1']:.2f} %"
                + (f", EMA {100 * val['ema_top1']:.2f} %" if "ema_top1" in val else ""))

    def final_state(self, trainer: "Trainer", last_val: dict[str, Any]) -> tuple[dict[str, torch.Tensor] | None, str]:
        """The weights RUN/model gets: the EMA's when its last validation scored higher (collective under FSDP)."""
        use_ema = ckpt.prefers_ema(last_val, trainer.ema is not None)
        if use_ema:
            return trainer.ema.module.state_dict(), "ema"
        return D.full_model_state(trainer.model), "model"
