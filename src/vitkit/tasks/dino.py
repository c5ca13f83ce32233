"""DINO pre-training (Caron et al. 2021) on the training loop: the student (ViT + projection head) is the
trained module; the teacher, an EMA of it with a cosine momentum schedule, lives in the task and its
backbone becomes RUN/model. Schedules are arrays indexed by step or epoch, so a resumed run is exact."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..train import distributed as D
from .pretrain import PretrainTask

if TYPE_CHECKING:  # pragma: no cover
    from ..train.engine import Trainer

PNG_IMAGES = 4  # images shown in RUN/attention.png
LOCAL_FRACTION = 96 / 224  # DINO's local crop side relative to the global one


def local_crop_size(side: int, patch: int) -> int:
    """DINO's 96-of-224 local crops for another image side: the nearest multiple of the patch, at least two patches."""
    return max(2 * patch, int(round(side * LOCAL_FRACTION / patch)) * patch)


class DINOTask(PretrainTask):
    name = "dino"

    def setup(self, trainer: "Trainer") -> list[str]:
        from ..ssl.dino import (DINOHead, DINOLoss, MultiCropWrapper, allow_crop_sizes, make_teacher,
                                momentum_schedule, teacher_temp_schedule)

        cfg, dev, raw = self.cfg, trainer.info.device, trainer.raw
        side = raw.cfg.image_hw
        self.local_size = cfg.local_size or local_crop_size(min(side), raw.cfg.patch_size)
        if self.local_size > min(side):
            raise ValueError(f"--local-size {self.local_size} is larger than the images ({side[0]}x{side[1]}): local "
                             f"crops are small views (DINO: 96 px of 224); give at most {min(side)}")
        allow_crop_sizes(raw, [tuple(side), self.local_size])
        head = DINOHead(raw.cfg.num_features, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck)
        self.student = MultiCropWrapper(raw, head.to(dev))
        self.teacher = make_teacher(self.student)
        self.loss_fn = DINOLoss(cfg.out_dim, 2, cfg.student_temp, cfg.center_momentum).to(dev)
        epochs = trainer.total_epochs
        self.momentum = momentum_schedule(cfg.momentum_teacher, epochs, trainer.steps_per_epoch)
        warm = min(cfg.warmup_teacher_temp_epochs, epochs)
        self.teacher_temp = teacher_temp_schedule(cfg.warmup_teacher_temp, cfg.teacher_temp, warm, epochs)
        self._teacher_out: list[torch.Tensor] = []
        self._koleo: list[float] = []
        self._logs: dict[str, float] = {}
        self.warned_epoch = -1
        return [f"DINO: 2 global crops of {side[0]} px (area {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g}) + "
                f"{cfg.local_crops} local of {self.local_size} px ({cfg.local_scale[0]:g}-{cfg.local_scale[1]:g}); "
                f"head {cfg.head_hidden}->{cfg.head_bottleneck}->{cfg.out_dim}; teacher momentum "
                f"{cfg.momentum_teacher:g} cosine to 1, temperature {cfg.warmup_teacher_temp:g} -> "
                f"{cfg.teacher_temp:g} over {warm} epoch(s), student {cfg.student_temp:g}; last layer frozen "
                f"for {cfg.freeze_last_layer} epoch(s)" + (f"; KoLeo weight {cfg.koleo:g}" if cfg.koleo else "")]

    def module(self, trainer: "Trainer") -> torch.nn.Module:
        return self.student

    def encoder(self, trainer: "Trainer") -> torch.nn.Module:
        return self.teacher.backbone

    def train_transform(self, trainer: "Trainer"):
        from ..ssl.multicrop import MultiCrop

        pre, cfg = trainer.raw.preprocess_cfg, self.cfg
        return MultiCrop(trainer.raw.cfg.image_hw, self.local_size, cfg.local_crops, cfg.crop_scale,
                         cfg.local_scale, pre.mean, pre.std, hflip=cfg.hflip)

    def _epoch(self, trainer: "Trainer") -> int:
        return min(trainer.global_step // trainer.steps_per_epoch, len(self.teacher_temp) - 1)

    def loss(self, trainer: "Trainer", model: torch.nn.Module, crops: list[torch.Tensor], y: torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
        dev = trainer.info.device
        crops = [c.to(dev, non_blocking=True) for c in crops]
        temp = float(self.teacher_temp[self._epoch(trainer)])
        with trainer.autocast():
            with torch.no_grad():
                t_out = self.teacher(crops[:2]).float()  # the teacher sees the global crops only
            if self.cfg.koleo:
                s_out, feats = model(crops, return_features=True)
            else:
                s_out = model(crops)
            s_out = s_out.float()
        self._teacher_out.append(t_out)
        loss = self.loss_fn(s_out, t_out, temp)
        if self.cfg.koleo:  # DINOv2: the weight times the sum over the global crops of each crop's KoLeo term
            from ..ssl.dino import koleo_loss

            B = crops[0].shape[0]
            koleo = sum(koleo_loss(feats[i * B:(i + 1) * B]) for i in range(2))
            self._koleo.append(float(koleo.detach()))
            loss = loss + self.cfg.koleo * koleo
        return loss

    def after_backward(self, trainer: "Trainer") -> None:
        from ..ssl.dino import cancel_last_layer_gradients

        cancel_last_layer_gradients(self.student, self._epoch(trainer), self.cfg.freeze_last_layer)

    def clip_gradients(self, trainer: "Trainer", max_norm: float) -> None:
        """DINO clips each parameter's gradient norm on its own (its utils.clip_gradients), not the global one."""
        from ..ssl.dino import clip_gradients_per_parameter

        clip_gradients_per_parameter(self.student, max_norm)

    def after_step(self, trainer: "Trainer") -> None:
        from ..ssl.dino import collapse_stats, collapse_warning, ema_update

        step = trainer.global_step  # the step just taken (0-based)
        m = float(self.momentum[min(step, len(self.momentum) - 1)])
        ema_update(self.teacher, self.student, m)
        t_out = torch.cat(self._teacher_out)
        self._teacher_out = []
        temp = float(self.teacher_temp[self._epoch(trainer)])
        stats = collapse_stats(t_out, self.loss_fn.center, temp)  # before the centre moves: this step's targets
        info = trainer.info
        reduce = (lambda t: D.all_reduce_sum(t, info)) if info.enabled else None
        self.loss_fn.update_center(t_out, reduce, info.world_size)
        self._logs = {"teacher_entropy": stats["entropy"], "teacher_spread": stats["spread"],
                      "momentum": m, "teacher_temp": temp}
        if self._koleo:  # the mean over this step's micro-batches
            self._logs["koleo"] = sum(self._koleo) / len(self._koleo)
            self._koleo = []
        warning = collapse_warning(stats)
        epoch = self._epoch(trainer)
        if warning and epoch != self.warned_epoch and trainer.global_step >= trainer.steps_per_epoch:
            self.warned_epoch = epoch  # once per epoch, after the first (the start is near-uniform by design)
            trainer.log(f"  warning: step {step + 1}: {warning}")

    def step_logs(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self._logs.items() if math.isfinite(v)}

    @torch.no_grad()
    def evaluate(self, trainer: "Trainer") -> dict[str, Any]:
        out = self.knn_monitor(trainer)
        if "teacher_entropy" in self._logs:
            out["teacher_entropy"] = self._logs["teacher_entropy"]
        return out

    def describe(self, val: dict[str, Any]) -> str:
        return f"k-NN top-1 {100 * val['knn_top1']:.2f} % (teacher)" if "knn_top1" in val else "no k-NN monitor"

    def after_epoch(self, trainer: "Trainer", epoch: int, val: dict[str, Any]) -> None:
        """RUN/attention.png: the teacher's [CLS] attention on fixed images."""
        if not trainer.info.is_main:
            return
        from ..ssl.dino import save_cls_attention_png

        imgs = self.preview_images(trainer, PNG_IMAGES)
        if imgs:
            pre = trainer.raw.preprocess_cfg
            save_cls_attention_png(self.teacher.backbone, torch.stack(imgs).to(trainer.info.device),
                                   trainer.run_dir / "attention.png", pre.mean, pre.std)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
                "center": self.loss_fn.center.detach().cpu(), "warned_epoch": self.warned_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.loss_fn.center.copy_(state["center"].to(self.loss_fn.center.device))
        self.warned_epoch = int(state.get("warned_epoch", -1))

    def inference_source(self) -> dict[str, str]:
        return {"key": "task.state.teacher", "prefix": "backbone.", "which": "teacher"}

    def final_state(self, trainer: "Trainer", last_val: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
        state = self.teacher.state_dict()
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, "teacher"
