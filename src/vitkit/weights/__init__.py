"""Reading and writing checkpoints: vitkit's own folder, training runs, Hugging Face, timm and Google npz,
through one table of formats (``formats``) behind ``vitkit.load`` / ``vitkit.save``.

One pure converter per foreign format (``convert_hf``, ``convert_timm``, ``convert_npz``),
safe file reading (``safe_io``), the pretrained table (``pretrained``) and hub downloads (``hub``).
"""

from .api import SAVE_FORMATS, load, save
from .pretrained import PRETRAINED, find_pretrained, list_pretrained
from .formats import FORMATS, Format, detect
from .options import LoadOptions
from .vitkit_format import save_vitkit

__all__ = ["FORMATS", "Format", "LoadOptions", "PRETRAINED", "SAVE_FORMATS", "detect", "find_pretrained",
           "list_pretrained", "load", "save", "save_vitkit"]
