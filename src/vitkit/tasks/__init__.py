"""Objectives on the one training loop: classification, distillation, MAE and DINO (see ``base.Task``)."""

from __future__ import annotations

from .base import Task


def make_task(cfg) -> Task:
    """The task a :class:`~vitkit.train.TrainConfig` asks for."""
    method = getattr(cfg, "method", "classify") or "classify"
    if method == "classify":
        if getattr(cfg, "distill", None):
            from .distill import DistillTask

            return DistillTask(cfg)
        from .classify import ClassifyTask

        return ClassifyTask(cfg)
    if method == "mae":
        from .mae import MAETask

        return MAETask(cfg)
    if method == "dino":
        from .dino import DINOTask

        return DINOTask(cfg)
    raise ValueError(f"unknown training method {method!r}; choose classify, mae or dino")


__all__ = ["Task", "make_task"]
