"""Reading and writing checkpoints: vitkit's own folder, Hugging Face, timm and Google npz.

One pure converter per foreign format (``convert_hf``, ``convert_timm``, ``convert_npz``),
safe file reading (``safe_io``), the pretrained table (``pretrained``) and hub downloads (``hub``).
"""

from .api import SAVE_FORMATS, load, save
from .pretrained import PRETRAINED, find_pretrained, list_pretrained
from .vitkit_format import load_vitkit, save_vitkit

__all__ = ["PRETRAINED", "SAVE_FORMATS", "find_pretrained", "list_pretrained", "load", "load_vitkit", "save",
           "save_vitkit"]
