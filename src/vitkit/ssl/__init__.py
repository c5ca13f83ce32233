"""Self-supervised pre-training pieces that wrap a vitkit encoder (MAE, He et al. 2021; DINO, Caron et al.
2021) and evaluation on frozen features (DINO's weighted k-NN, a linear probe). The training loop runs them
through :mod:`vitkit.tasks`; they are usable on their own too.

Nothing is imported until it is asked for (``from vitkit.ssl import MAE`` imports ``vitkit.ssl.mae``), so that
``import vitkit`` stays as light as it is.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MAE": "mae", "random_masking": "mae", "mae_sincos_pos_embed": "mae", "save_reconstruction_png": "mae",
    "read_hf_mae": "..weights.hf_mae_format", "write_hf_mae": "..weights.hf_mae_format",
    "DINOHead": "dino", "DINOLoss": "dino", "MultiCropWrapper": "dino", "make_teacher": "dino",
    "ema_update": "dino", "cosine_schedule": "dino", "momentum_schedule": "dino", "teacher_temp_schedule": "dino",
    "collapse_stats": "dino", "collapse_warning": "dino", "save_cls_attention_png": "dino", "koleo_loss": "dino",
    "MultiCrop": "multicrop",
    "extract_features": "probe", "knn_classify": "probe", "knn_accuracy": "probe", "linear_probe": "probe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitkit.ssl' has no attribute {name!r}")
    target = _EXPORTS[name]
    module = importlib.import_module(target if target.startswith("..") else f".{target}", __name__)
    return getattr(module, name)
