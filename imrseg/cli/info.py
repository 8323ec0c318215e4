"""`imrseg info`: what this installation can run on and what it has cached."""
from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .. import __version__
from . import app


@app.command(epilog="Examples:\n\n  imrseg info\n\n  imrseg info --json")
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Version, torch/CUDA/MPS availability, the cache location and cached weights."""
    import torch

    from ..hub import is_cached, load_registry
    from ..paths import hf_cache_dir

    mps = getattr(torch.backends, "mps", None)
    data = {
        "imrseg": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps": bool(mps and mps.is_available()), "cache": hf_cache_dir(),
        "cached_weights": [name for name, entry in load_registry().entries.items() if is_cached(entry)],
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        typer.echo(f"{key:15s} {', '.join(value) if isinstance(value, list) else value}")
