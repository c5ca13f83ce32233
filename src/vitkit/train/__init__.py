"""Training and fine-tuning: the engine behind ``vitkit train`` (see docs/training.md).

>>> from vitkit.train import TrainConfig, train
>>> summary = train(TrainConfig(model="vit_tiny_patch4_16", data="digits", epochs=10, out="runs/digits"))
"""

from .config import TrainConfig, read_config_file
from .engine import NonFiniteLossError, ResumeError, Trainer, TrainingInterrupted, train

__all__ = ["NonFiniteLossError", "ResumeError", "TrainConfig", "Trainer", "TrainingInterrupted", "read_config_file",
           "train"]
