"""MAE pre-training (He et al. 2021) on the training loop: ``MAE(encoder=vit)`` is the trained module, its
loss the mean squared error on the masked patches; the encoder alone becomes RUN/model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..train import distributed as D
from ..train.augment import CropFlipTransform
from .pretrain import PretrainTask

if TYPE_CHECKING:  # pragma: no cover
    from ..train.engine import Trainer

PNG_IMAGES = 8  # images shown in RUN/reconstructions.png


class MAETask(PretrainTask):
    name = "mae"

    def setup(self, trainer: "Trainer") -> list[str]:
        from ..ssl.mae import MAE

        cfg = self.cfg
        self.mae = MAE(trainer.raw, decoder_width=cfg.decoder_width, decoder_depth=cfg.decoder_depth,
                       decoder_heads=cfg.decoder_heads, mask_ratio=cfg.mask_ratio,
                       norm_pix_loss=cfg.norm_pix_loss).to(trainer.info.device)
        self._step_g: tuple[int, torch.Generator] | None = None
        n = sum(p.numel() for n_, p in self.mae.named_parameters() if not n_.startswith("encoder."))
        return [f"MAE: mask ratio {cfg.mask_ratio:g}, decoder {cfg.decoder_width} wide x {cfg.decoder_depth} blocks "
                f"({cfg.decoder_heads} heads, {n / 1e6:.2f}M parameters), loss on the masked patches"
                f"{' (normalised pixels)' if cfg.norm_pix_loss else ''}"]

    def module(self, trainer: "Trainer") -> torch.nn.Module:
        return self.mae

    def train_transform(self, trainer: "Trainer"):
        pre = trainer.raw.preprocess_cfg
        return CropFlipTransform(trainer.raw.cfg.image_hw, self.cfg.crop_scale, self.cfg.hflip, pre.mean, pre.std)

    def _generator(self, trainer: "Trainer") -> torch.Generator:
        """This step's masking generator, one per (seed, step, process): a resumed run masks the same patches."""
        step = trainer.global_step
        if self._step_g is None or self._step_g[0] != step:
            seed = (self.cfg.seed * 3_000_017 + step) * 1009 + trainer.info.rank
            self._step_g = (step, torch.Generator().manual_seed(seed))
        return self._step_g[1]

    def loss(self, trainer: "Trainer", model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             g: torch.Generator) -> torch.Tensor:
        x = x.to(trainer.info.device, non_blocking=True)
        noise = self.mae.noise_for(x, self._generator(trainer))
        with trainer.autocast():
            loss, _, _ = model(x, noise=noise)
        return loss.float()

    def can_validate(self, trainer: "Trainer") -> bool:
        return trainer.val_ds is not None

    @torch.no_grad()
    def evaluate(self, trainer: "Trainer") -> dict[str, Any]:
        """Reconstruction loss on the validation set (the same masks every time), and the k-NN monitor."""
        was = self.mae.training
        self.mae.eval()
        total = torch.zeros(2, dtype=torch.float64)
        g = torch.Generator().manual_seed(0)
        for x, y, skipped in trainer.val_batches():
            trainer.note_skipped(skipped)
            if x is None:
                continue
            keep = y != D.PAD_LABEL  # padding of the last batches under torchrun (unlabelled images are -1)
            if not keep.any():
                continue
            x = x[keep].to(trainer.info.device)
            with trainer.autocast():
                loss, _, _ = self.mae(x, noise=self.mae.noise_for(x, g))
            total += torch.tensor([float(loss) * len(x), len(x)], dtype=torch.float64)
        self.mae.train(was)
        total = D.all_reduce_sum(total.to(trainer.info.device) if trainer.info.device.type == "cuda" else total,
                                 trainer.info).cpu()
        out: dict[str, Any] = {"val_loss": float(total[0] / total[1]) if total[1] else float("nan")}
        if trainer.classes:
            out.update(self.knn_monitor(trainer))
        return out

    def score(self, val: dict[str, Any]) -> float | None:
        if val.get("knn_top1") is not None:
            return val["knn_top1"]
        return -val["val_loss"] if val.get("val_loss") == val.get("val_loss") else None  # NaN: nothing to rank

    def describe(self, val: dict[str, Any]) -> str:
        parts = [f"val reconstruction loss {val['val_loss']:.4f}"]
        if "knn_top1" in val:
            parts.append(f"k-NN top-1 {100 * val['knn_top1']:.2f} %")
        return ", ".join(parts)

    def after_epoch(self, trainer: "Trainer", epoch: int, val: dict[str, Any]) -> None:
        """RUN/reconstructions.png: originals, masked inputs and reconstructions of fixed images."""
        if not trainer.info.is_main:
            return
        from ..ssl.mae import save_reconstruction_png

        imgs = self.preview_images(trainer, PNG_IMAGES)
        if imgs:
            pre = trainer.raw.preprocess_cfg
            save_reconstruction_png(self.mae, torch.stack(imgs).to(trainer.info.device),
                                    trainer.run_dir / "reconstructions.png", pre.mean, pre.std)

    def inference_source(self) -> dict[str, str]:
        return {"key": "model", "prefix": "encoder.", "which": "encoder"}

    def final_state(self, trainer: "Trainer", last_val: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
        state = D.full_model_state(trainer.model)
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}, "encoder"
