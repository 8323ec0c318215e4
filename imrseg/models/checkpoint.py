"""Reading the authors' checkpoints: a pickled state dict saved from
`nn.DataParallel` (keys prefixed `module.`), loaded without running any pickled code."""
from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping

import torch

from ..errors import CheckpointError

# A key only each backbone's checkpoints have.
BACKBONE_MARKERS = {"resnet50": "backbone.layer1.0.conv1.weight", "vgg16": "backbone.features.0.weight"}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True, every failure turned into one clear message."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # e.g. on the pickle protocol; a failure is explained below
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any file may be given: torch.load and safetensors raise many types
        raise load_error(path, path, exc) from None
    return _as_state_dict(obj, path)


def load_error(origin: str, path: str | os.PathLike, exc: Exception) -> CheckpointError:
    """Why the weight file `path` (given as `origin`) did not load, in one line. PyTorch's
    own message for a refused pickle advises loading with weights_only=False, i.e. running
    the file's code: it is never relayed."""
    if isinstance(exc, pickle.UnpicklingError):
        if _looks_pickled(path):
            found = re.search(r"GLOBAL (\S+)", str(exc))
            detail = (f"it references {found.group(1)}" if found
                      else "it uses pickle features a weights-only load refuses")
            return CheckpointError(f"{origin}: refused to load: the pickle holds objects other than tensors "
                                   f"({detail}); only plain state dicts are accepted")
        detail = "neither a torch.save zip nor a pickle"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}{': ' + first if first else ''}"
    return CheckpointError(f"{origin}: not a readable PyTorch checkpoint (truncated, corrupt or another kind of "
                           f"file: {detail})")


def _looks_pickled(path: str | os.PathLike) -> bool:
    """A zip (torch.save) or a pickle of protocol 2 or later: an UnpicklingError then means
    refused content, while for any other file (text, say) it only means unreadable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _as_state_dict(obj, origin: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin}: holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{origin}: entries that are not tensors: {', '.join(map(str, bad[:3]))}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_backbone(state_dict: Mapping[str, torch.Tensor], origin: str) -> str:
    for name, marker in BACKBONE_MARKERS.items():
        if marker in state_dict:
            return name
    raise CheckpointError(f"{origin}: not an IMR-HSNet checkpoint (no ResNet-50 or VGG-16 backbone keys; "
                          f"first keys: {', '.join(list(state_dict)[:3]) or 'none'})")


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str) -> None:
    """Strict load with an error that says what differs."""
    check_shapes(model, {k: tuple(v.shape) for k, v in state_dict.items()}, origin)
    model.load_state_dict(state_dict, strict=True)


def check_shapes(model: torch.nn.Module, declared: Mapping[str, tuple], origin: str) -> None:
    """CheckpointError unless `declared` (name -> tensor shape, as a file states them) has
    the model's names and shapes: checked before a tensor is read, a file cannot make
    imrseg allocate more than the model holds."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in declared]
    unexpected = [k for k in declared if k not in expected]
    shapes = [f"{k} {tuple(declared[k])} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in declared and tuple(declared[k]) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{origin}: does not match IMR-HSNet ({model.backbone_name} backbone):"]
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointError(" ".join(parts))


def load_official(cls, source):
    if isinstance(source, Mapping):
        origin, state_dict = "state dict", _as_state_dict(source, "state dict")
    else:
        origin, state_dict = os.fspath(source), read_state_dict(source)
    model = cls(infer_backbone(state_dict, origin))
    load_into(model, state_dict, origin)
    return model
