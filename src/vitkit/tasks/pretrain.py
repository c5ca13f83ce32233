"""What the self-supervised tasks share: the unlabelled data, the head-less encoder, and the k-NN monitor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import Task

if TYPE_CHECKING:  # pragma: no cover
    from ..train.engine import Trainer


class PretrainTask(Task):
    """A pre-training objective: labels are never read by the loss; where the data has them, a k-NN classifier
    on the encoder's frozen features (training set as memory, validation set as queries) follows the run."""

    needs_labels = False
    keeps_ema = False
    _said_knn_k = False  # the k-NN monitor's note on a --knn-k above the memory bank, said once

    def data_classes(self, source: str) -> list[str]:
        """A plain folder of images has none; every source of ``vitkit train`` has its classes."""
        import os

        from ..data.unlabelled import check_pretrain_source, plain_folder_images

        check_pretrain_source(source)
        if os.path.isdir(source) and plain_folder_images(source) is not None:
            return []
        return super().data_classes(source)

    def load_data(self, source: str, spec, val_source: str | None):
        from ..data.unlabelled import load_pretrain_source

        train_ds, val_ds, _labelled = load_pretrain_source(source, spec, val_source)
        return train_ds, val_ds

    def model_classes(self, classes: list[str]) -> list[str]:
        return []  # the encoder is trained without a head; fine-tuning adds one

    def encoder(self, trainer: "Trainer") -> torch.nn.Module:
        """The ViT whose features the monitor reads (MAE: the encoder; DINO: the teacher's backbone)."""
        return trainer.raw

    def can_validate(self, trainer: "Trainer") -> bool:
        return trainer.val_ds is not None and bool(trainer.classes)

    def knn_monitor(self, trainer: "Trainer") -> dict[str, Any]:
        """k-NN top-1 of the encoder's features (DINO's weighted vote), on the main process."""
        from ..ssl.probe import extract_features, knn_accuracy

        if not trainer.info.is_main:
            return {}
        enc = self.encoder(trainer)
        (ft, yt), (fv, yv) = (extract_features(enc, ds, trainer.eval_transform, batch_size=max(64, trainer.cfg.batch_size),
                                               device=trainer.info.device, autocast=trainer.autocast())
                              for ds in (trainer.train_ds, trainer.val_ds))
        k = min(self.cfg.knn_k, len(ft))
        if k < self.cfg.knn_k and not self._said_knn_k:
            trainer.log(f"k-NN monitor: --knn-k {self.cfg.knn_k} is more than the {len(ft)} training images "
                        f"(the memory bank); it votes with k = {k}")
            self._said_knn_k = True
        res = knn_accuracy(ft, yt, fv, yv, len(trainer.classes), k=k, temperature=self.cfg.knn_temperature)
        return {"knn_top1": res["top1"]}

    def preview_images(self, trainer: "Trainer", n: int) -> list[torch.Tensor]:
        """Up to ``n`` fixed images for the run's PNG, normalised: spread evenly over the validation set (else
        the training set), so that a class folder sorted by class shows more than its first class; an unreadable
        one is replaced by the next readable image."""
        ds = trainer.val_ds if trainer.val_ds is not None else trainer.train_ds
        picked: list[torch.Tensor] = []
        i = 0  # the next index not read yet
        for start in (round(j * len(ds) / n) for j in range(n)):
            i = max(i, start)
            while i < len(ds):
                x, _ = ds[i]
                i += 1
                if x is not None:
                    picked.append(trainer.eval_transform(x))
                    break
        return picked

    def score(self, val: dict[str, Any]) -> float | None:
        return val.get("knn_top1")
