"""Downloads through ``huggingface_hub`` into its normal cache; works offline from that cache.

Offline (``HF_HUB_OFFLINE=1``) nothing is fetched: the files must already be in the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
META_FILES = ["config.json", "preprocessor_config.json"]
SAFE_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


def looks_like_repo_id(s: str) -> bool:
    return bool(REPO_ID.match(s)) and ".." not in s


def offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def download(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local snapshot folder of ``repo_id`` (config, preprocessing and weights; safetensors preferred)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    local_only = offline()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                        allow_patterns=META_FILES + SAFE_FILES, local_files_only=local_only))
        if not any(folder.glob("*.safetensors")) and not local_only:
            # an older repository with pickles only: loaded with torch.load(weights_only=True)
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                            allow_patterns=META_FILES + PICKLE_FILES))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{repo_id!r} is not in the Hugging Face cache"
                                f"{f' ({cache_dir})' if cache_dir else ''} and downloads are off "
                                "(HF_HUB_OFFLINE=1) or the hub cannot be reached") from None
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"could not download {repo_id!r} from the Hugging Face hub: {e}") from None
    return folder
