"""The one reader of small JSON files (configs, preprocessing, shard indexes): size-capped, errors name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 50 * 1024 * 1024  # a sharded index of a very large model is a few MB; configs are KB


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object read from ``path``; ValueError naming the file when it is too large, not UTF-8, not
    JSON (deep nesting included) or not an object."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes is too large for a JSON config file (at most {max_bytes})")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{path} is not a usable JSON file: nested too deeply") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(d).__name__}")
    return d
