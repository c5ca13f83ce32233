"""Reading and writing checkpoints: vitkit's own format (and, later, foreign formats)."""

from .vitkit_format import load_vitkit, save_vitkit

__all__ = ["load_vitkit", "save_vitkit"]
