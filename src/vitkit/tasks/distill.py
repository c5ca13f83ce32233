"""DeiT's knowledge distillation (Touvron et al. 2021): a frozen teacher's predictions train the student.

The student's loss is ``(1 - alpha) * CE(class head, targets) + alpha * D(distillation head, teacher)``,
with DeiT's two kinds of ``D`` (its ``DistillationLoss``):

* hard: cross-entropy with the teacher's arg-max class;
* soft: ``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, summed and divided by the number of
  logits (batch x classes), as DeiT does.

A student built with the distillation token (``distilled=True``, e.g. ``deit_tiny_distilled_patch16_224`` or
``--model-set distilled=true``) learns the teacher through its second head and the labels through the first;
at inference the two heads are averaged. A student without the token distils through its one head.

The teacher is anything :func:`vitkit.load` reads, or a torchvision CNN given as ``torchvision:ARCH=WEIGHTS``
(DeiT's best teachers were convnets), frozen, in eval mode, under the run's autocast. It sees the
student's (augmented, mixed) images, converted to its own preprocessing: the student's normalisation undone,
resized to the teacher's input size, grey images repeated to three channels, the teacher's mean/std applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..train.augment import normalize
from .classify import ClassifyTask

if TYPE_CHECKING:  # pragma: no cover
    from ..train.engine import Trainer

KINDS = ("hard", "soft")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                      tau: float = 1.0) -> torch.Tensor:
    """DeiT's distillation term: student (B, K) and teacher (B, K) logits -> a scalar."""
    if kind == "hard":
        return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=1))
    if kind == "soft":
        s = F.log_softmax(student_logits.float() / tau, dim=1)
        t = F.log_softmax(teacher_logits.float() / tau, dim=1)
        return F.kl_div(s, t, reduction="sum", log_target=True) * (tau * tau) / student_logits.numel()
    raise ValueError(f"distillation must be one of {KINDS}, got {kind!r}")


def _fingerprint(model: nn.Module) -> float:
    """A cheap checksum of the teacher's weights, kept in checkpoints: a resume with another teacher is refused."""
    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in model.state_dict().values()
                         if p.is_floating_point()))


class TeacherInput(nn.Module):
    """Student-normalised images (B, C, H, W) -> the teacher's input (its size, channels and normalisation)."""

    def __init__(self, student_pre, teacher_pre, teacher_cfg):
        super().__init__()
        self.s_mean, self.s_std = tuple(student_pre.mean), tuple(student_pre.std)
        self.t_mean, self.t_std = tuple(teacher_pre.mean), tuple(teacher_pre.std)
        self.size = tuple(teacher_cfg.image_hw)
        self.channels = teacher_cfg.channels
        self.mode = "bicubic" if getattr(teacher_pre, "interpolation", "bilinear") == "bicubic" else "bilinear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.s_mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.s_std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        x = x * std + mean  # back to [0, 1]
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.mode, align_corners=False).clamp(0, 1)
        return normalize(x, self.t_mean, self.t_std)


TORCHVISION = "torchvision:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _TorchvisionTeacher(nn.Module):
    """A torchvision CNN as a teacher: its logits, with what TeacherInput needs to feed it (ImageNet's mean/std,
    three channels, bilinear resize to ``image_hw``: the student's input size unless ``@SIZE`` says another)."""

    def __init__(self, net: nn.Module, arch: str, image_hw: tuple[int, int], num_classes: int, source: str):
        super().__init__()
        self.net = net
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(num_classes=num_classes, labels=None, image_hw=image_hw, channels=3)
        self.describe = f"torchvision {arch}"
        self.preprocess_cfg = SimpleNamespace(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
        self.load_info = {"source": source, "format": "torchvision"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_torchvision_teacher(spec: str, num_classes: int, image_hw: tuple[int, int]) -> nn.Module:
    """``torchvision:ARCH=WEIGHTS[@SIZE]`` -> the CNN ``torchvision.models.get_model(ARCH, num_classes=...)`` with
    the state dict in WEIGHTS (a ``torch.save`` file read with ``weights_only=True``, or ``.safetensors``; a
    dict holding it under ``state_dict`` or ``model`` is unwrapped)."""
    import torchvision

    body = spec[len(TORCHVISION):]
    if "=" not in body:
        raise ValueError(f"--teacher {spec!r}: a torchvision teacher is torchvision:ARCH=WEIGHTS (e.g. "
                         "torchvision:resnet18=teacher.pth), trained on the data's classes")
    arch, path = body.split("=", 1)
    size = image_hw
    if "@" in path:
        path, side = path.rsplit("@", 1)
        if not side.isdigit() or int(side) < 1:
            raise ValueError(f"--teacher {spec!r}: @SIZE must be a positive number of pixels")
        size = (int(side), int(side))
    if arch not in torchvision.models.list_models():
        raise ValueError(f"--teacher {spec!r}: torchvision has no model {arch!r} (e.g. resnet18, resnet50, "
                         "convnext_tiny, efficientnet_b0, regnet_y_400mf)")
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--teacher {spec!r}: the weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or pickled objects weights_only refuses
            raise ValueError(f"--teacher {spec!r}: {path} is not a readable state dict ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines()[1:] if l.strip()]
        why = " ".join(lines)[:300] + ("..." if len(" ".join(lines)) > 300 else "")
        raise ValueError(f"--teacher {spec!r}: the weights are not a {arch} with {num_classes} output classes (the "
                         f"data's): {why}") from None
    return _TorchvisionTeacher(net, arch, size, num_classes, spec)


class DistillTask(ClassifyTask):
    name = "distill"

    def setup(self, trainer: "Trainer") -> list[str]:
        from ..weights.api import load

        notes = super().setup(trainer)
        cfg = self.cfg
        if not cfg.teacher:
            raise ValueError("--distill needs --teacher CHECKPOINT (anything vitkit.load reads)")
        classes = list(trainer.classes)
        if str(cfg.teacher).startswith(TORCHVISION):
            teacher = load_torchvision_teacher(cfg.teacher, len(classes), tuple(trainer.raw.cfg.image_hw))
        else:
            try:
                teacher = load(cfg.teacher, dtype=torch.float32)
            except (ValueError, FileNotFoundError) as e:
                hint = ("; a torchvision CNN's state dict is given as --teacher torchvision:ARCH=FILE"
                        if str(cfg.teacher).endswith((".pth", ".pt", ".bin", ".safetensors")) else "")
                raise type(e)(f"--teacher {cfg.teacher}: {e}{hint}") from None
        where = teacher.load_info.get("source", cfg.teacher)
        if teacher.cfg.num_classes == 0:
            raise ValueError(f"--teacher {where} has no classification head (a pre-trained encoder?): a teacher must "
                             "predict the data's classes; fine-tune it first (vitkit train --init)")
        if teacher.cfg.num_classes != len(classes):
            raise ValueError(f"--teacher {where} predicts {teacher.cfg.num_classes} classes, the data has "
                             f"{len(classes)}: a teacher must be trained on the same classes")
        self.order = None  # the teacher's logits re-ordered into the data's class order
        labels = teacher.cfg.labels
        if labels is not None and list(labels) != classes:
            if sorted(labels) != sorted(classes):
                extra = sorted(set(labels) - set(classes))[:5]
                missing = sorted(set(classes) - set(labels))[:5]
                raise ValueError(f"--teacher {where} was trained on other classes (it has {extra}, lacks "
                                 f"{missing}): a teacher must predict the data's classes")
            self.order = torch.tensor([list(labels).index(c) for c in classes], device=trainer.info.device)
            notes.append("the teacher's classes are re-ordered to the data's")
        teacher.eval().requires_grad_(False)
        self.teacher = teacher.to(trainer.info.device)
        self.fingerprint = _fingerprint(teacher)
        self.teacher_input = TeacherInput(trainer.raw.preprocess_cfg, teacher.preprocess_cfg, teacher.cfg)
        self.distilled = bool(trainer.raw.cfg.distilled)
        kind, alpha, tau = cfg.distill, cfg.distill_alpha, cfg.distill_tau
        notes.append(f"distillation: {kind}, alpha {alpha:g}{f', tau {tau:g}' if kind == 'soft' else ''}, teacher "
                     f"{where} (frozen, {getattr(teacher, 'describe', None) or f'ViT width {teacher.cfg.width}, depth {teacher.cfg.depth}'}"
                     f", {teacher.cfg.image_hw[0]} px input); the student learns it through its "
                     f"{'distillation token' if self.distilled else 'class head (no distillation token)'}")
        return notes

    @torch.no_grad()
    def teacher_logits(self, trainer: "Trainer", x: torch.Tensor) -> torch.Tensor:
        with trainer.autocast():
            t = self.teacher(self.teacher_input(x))
        t = t.float()
        return t if self.order is None else t[:, self.order]

    def loss(self, trainer: "Trainer", model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
        from ..train.mixup import soft_target_cross_entropy

        x, target = self.mixed(trainer, x, y, g)
        with trainer.autocast():
            if self.distilled:  # through forward (and so through DDP's wrapper): (class, distillation) logits
                cls, kd = model(x, distilled=True)
            else:
                cls = kd = model(x)
        teacher = self.teacher_logits(trainer, x)
        base = soft_target_cross_entropy(cls, target)
        alpha = self.cfg.distill_alpha
        return base * (1 - alpha) + distillation_loss(kd, teacher, self.cfg.distill, self.cfg.distill_tau) * alpha

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": str(self.cfg.teacher), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fp = state.get("fingerprint")
        if fp is not None and abs(fp - self.fingerprint) > 1e-6 * max(1.0, abs(fp)):
            from ..train.engine import ResumeError

            raise ResumeError(f"the teacher {self.cfg.teacher} is not the one this run started with (its weights "
                              "differ): resuming would not continue the same run")
