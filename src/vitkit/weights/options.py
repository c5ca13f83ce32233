"""What a caller may say about a checkpoint when loading it: the overrides every reader takes.

One object, so that ``vitkit.load``, every format's reader and the CLI's shared option group
(``vitkit.cli.model_args``) carry the same fields under the same names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ACTIVATIONS, POOLINGS
from ..data.preprocess import PreprocessConfig

log = logging.getLogger("vitkit")

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_load_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The parameter dtype a loaded model gets: float32 unless asked (``"bf16"``, ``torch.float16``...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; accepted: {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class LoadOptions:
    """The overrides of ``vitkit.load``.

    ``heads``, ``pooling``, ``act``: for files that do not say (a bare timm state dict stores no head
    count; a JAX npz no GELU form). A value that contradicts what the file says is refused.
    ``image_size``: load at another resolution (the position embedding is resampled; only when asked).
    ``patch_size``: run at another patch size (FlexiViT: the kernel resized by the pseudo-inverse, the
    position embedding resampled to the new grid; only when asked).
    ``dynamic_img_size``: accept other input sizes at run time. ``dtype``: the parameters' dtype
    (float32 by default; half-precision files are cast, said in one line).
    ``default_preprocess``: the preprocessing to use when the file carries none (the pretrained table's).
    """

    image_size: int | tuple[int, int] | None = None
    heads: int | None = None
    pooling: str | None = None
    act: str | None = None
    dynamic_img_size: bool | None = None
    patch_size: int | None = None
    dtype: torch.dtype = torch.float32
    map_location: str | torch.device = "cpu"
    default_preprocess: PreprocessConfig | None = None
    notes: list[str] = field(default_factory=list)  # what loading decided or changed, for load_info

    def __post_init__(self) -> None:
        if self.heads is not None and (not isinstance(self.heads, int) or isinstance(self.heads, bool)
                                       or self.heads < 1):
            raise ValueError(f"heads must be a positive int, got {self.heads!r}")
        if self.patch_size is not None and (not isinstance(self.patch_size, int) or isinstance(self.patch_size, bool)
                                            or self.patch_size < 1):
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.act is not None and self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        self.dtype = resolve_load_dtype(self.dtype)

    def hints(self) -> dict[str, Any]:
        """The overrides a reader uses where its file does not say (heads, pooling, act)."""
        return {k: v for k, v in (("heads", self.heads), ("pooling", self.pooling), ("act", self.act))
                if v is not None}

    def note(self, msg: str, loud: bool = False) -> None:
        """Record what loading decided; ``loud`` ones are also said on one line (the ``vitkit`` logger)."""
        self.notes.append(msg)
        if loud:
            log.warning(msg)
