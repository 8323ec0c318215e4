"""Where imrseg keeps things between runs: its own cache (CLIP-CAMs, split lists,
evaluation state) and the Hugging Face cache that holds downloaded weights.

Both are read from the environment at each call, not at import, so a program (or a
test) can point them elsewhere after importing imrseg."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "IMRSEG_CACHE"


def cache_root() -> Path:
    """`$IMRSEG_CACHE`, else `~/.cache/imrseg`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "imrseg")


def hf_cache_dir() -> str:
    """The Hugging Face Hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else the library's default."""
    from huggingface_hub import constants as hf_constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return hf_constants.HF_HUB_CACHE
