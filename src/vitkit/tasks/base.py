"""The objective a training run optimises, on the one loop of :mod:`vitkit.train.engine`.

The engine owns everything that does not depend on what is learnt: data order, micro-batches,
gradient accumulation, AMP, DDP/FSDP, the optimizer and schedule, checkpoints and exact resume,
progress, metrics, curves and TensorBoard. A :class:`Task` owns the rest: which classes the model
is built with, the module the optimizer trains (the ViT itself, or a wrapper around it such as
``MAE(encoder=vit)``), the views of one image, the loss of a micro-batch, what happens after an
optimizer step (an EMA teacher, a centre), validation, what "best" means, its own state in a
checkpoint, and which weights become ``RUN/model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..train.engine import Trainer


class Task:
    """One objective. Subclasses set ``name`` and override what differs from the defaults."""

    name = "task"
    needs_labels = True  # the loss reads labels (classification); pre-training reads images only
    keeps_ema = True  # the loop keeps --ema of the trained weights (a DINO teacher is its own EMA)

    def __init__(self, cfg):
        self.cfg = cfg

    # --- set-up -----------------------------------------------------------------
    def data_classes(self, source: str) -> list[str]:
        """The class names of a ``--data`` source, before it is read."""
        from ..data.datasets import source_classes

        return source_classes(source)

    def load_data(self, source: str, spec, val_source: str | None):
        """(training set, validation set or None) of a ``--data`` source."""
        from ..data.datasets import load_source

        return load_source(source, spec, val_source)

    def model_classes(self, classes: list[str]) -> list[str]:
        """The classes the ViT is built with: the data's, or none (a head-less encoder) for pre-training."""
        return classes

    def setup(self, trainer: "Trainer") -> list[str]:
        """Called once the ViT (``trainer.raw``) is on its device, before it is wrapped; returns notes to print."""
        return []

    def module(self, trainer: "Trainer") -> nn.Module:
        """The module the optimizer trains (DDP/compile wrap it): the ViT, or a wrapper holding it."""
        return trainer.raw

    def train_transform(self, trainer: "Trainer") -> Callable[[torch.Tensor, int], Any]:
        """``(image (C, H, W) in [0, 1], seed) -> view(s)`` of one training image."""
        raise NotImplementedError

    # --- one optimizer step -------------------------------------------------------
    def loss(self, trainer: "Trainer", model: nn.Module, x: Any, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The mean loss of one micro-batch (views ``x``, labels ``y``); ``g`` is this step's generator."""
        raise NotImplementedError

    def after_backward(self, trainer: "Trainer") -> None:
        """After the step's gradients are complete, before clipping and the optimizer step."""

    def clip_gradients(self, trainer: "Trainer", max_norm: float) -> None:
        """--clip-grad: the global gradient norm of the trained parameters, at most ``max_norm``."""
        torch.nn.utils.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], max_norm)

    def after_step(self, trainer: "Trainer") -> None:
        """After the optimizer step (``trainer.global_step`` not yet advanced)."""

    def step_logs(self) -> dict[str, float]:
        """Numbers of the last step for metrics.jsonl (beside loss and lr)."""
        return {}

    # --- validation and "best" --------------------------------------------------------
    def can_validate(self, trainer: "Trainer") -> bool:
        return trainer.val_ds is not None

    def evaluate(self, trainer: "Trainer") -> dict[str, Any]:
        raise NotImplementedError

    def score(self, val: dict[str, Any]) -> float | None:
        """What "best" maximises, from :meth:`evaluate`'s result; None: nothing to rank by."""
        return None

    def describe(self, val: dict[str, Any]) -> str:
        """The validation part of the epoch line."""
        return ", ".join(f"{k} {v:.4g}" for k, v in val.items() if isinstance(v, float))

    def after_epoch(self, trainer: "Trainer", epoch: int, val: dict[str, Any]) -> None:
        """End of an epoch, after validation (pictures of the run: reconstructions, attention)."""

    # --- checkpoints and the final model -------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def inference_source(self) -> dict[str, str] | None:
        """Where a checkpoint's inference ViT lives when not in ``model`` as is: ``{"key": "model" |
        "task.<name>", "prefix": "encoder."}`` (read by :func:`vitkit.train.checkpoint.inference_weights`)."""
        return None

    def final_state(self, trainer: "Trainer", last_val: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
        """(the state dict of the ViT that becomes RUN/model, which weights: "model" | "ema" | "teacher"...);
        collective under FSDP (every process calls it)."""
        raise NotImplementedError
