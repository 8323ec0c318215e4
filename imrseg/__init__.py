"""imrseg: segment objects from a few example images and a label text (IMR-HSNet)."""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "IMRHSNet": "imrseg.models",
    "ClipCAM": "imrseg.clip.cam",
    "Predictor": "imrseg.predictor",
}


def __getattr__(name):
    # Lazy so that `imrseg --help` and completion never import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imrseg' has no attribute {name!r}")


__all__ = ["IMRHSNet", "ClipCAM", "Predictor", "__version__"]
