"""Turning command-line inputs (files and folders) into a list of image files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..data.datasets import IMAGE_EXTENSIONS  # what a folder is searched for; files named explicitly are tried


def list_images(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], bool]:
    """Expand files and folders into image paths, in input order (folders sorted).

    Returns (paths, whether any input was a folder). Hidden files are skipped inside
    folders. A missing input raises ``FileNotFoundError``; a folder without images a ``ValueError``.
    """
    out: list[Path] = []
    had_folder = False
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            had_folder = True
            pattern = p.rglob("*") if recursive else p.glob("*")
            found = sorted(f for f in pattern if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise ValueError(f"folder {str(p)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"image {str(p)!r} does not exist")
    return out, had_folder
