"""What shapes a run's masks, as one fingerprint recorded in the run header.

A re-run into an output folder may keep a finished mask only if it would come out
the same: same network and CLIP weights (by content), label, supports and drawn
support masks (by content), steps, CAM mode, competitors, prompt and precision.
All of it is read from files without loading a model, so a run asked to do
something other than what the folder holds stops before the slow part."""
from __future__ import annotations

import hashlib
import json

from ..durable import file_sha256
from ..errors import ImrsegError
from ..clip.vocabulary import class_vocabulary
from .settings import RunSettings


def _weights(settings: RunSettings) -> dict:
    from ..hub import fetch_weights, locate_weights

    source = locate_weights(settings.weights, settings.hub_namespace)
    if source.kind == "official":  # an authors' best_model.pt: the file is the whole checkpoint
        return {"sha256": file_sha256(source.path), "config_sha256": None}
    # Hub specs: the cached files (downloaded now if need be; the registry's sha256 is checked).
    files = fetch_weights(source)
    return {"sha256": files.sha256, "config_sha256": file_sha256(files.config)}


def _clip(settings: RunSettings) -> dict:
    from ..hub import fetch_clip, locate_clip

    source = locate_clip(settings.clip_weights)
    weights, config = fetch_clip(source)
    return {"model": source.model_name or source.repo_id, "quick_gelu": source.quick_gelu,
            "sha256": file_sha256(weights), "config_sha256": file_sha256(config) if config else None}


def run_identity(settings: RunSettings, supports: list[list]) -> dict:
    """Everything that shapes a mask; `supports` are each class's support files found.
    `steps` None stands for the checkpoint's own, which its weights fix. A one-class
    run names its class at the top level; a run of several lists them in order."""
    classes = [{"label": spec.label, "supports": [file_sha256(p) for p in files],
                "support_masks": [file_sha256(p) for p in spec.support_masks],
                "vocabulary": class_vocabulary(spec.label, settings.labels, settings.vocab)}
               for spec, files in zip(settings.classes, supports)]
    return {
        "weights": _weights(settings), "clip": _clip(settings), **(classes[0] if len(classes) == 1 else
                                                                     {"classes": classes}),
        "zero_shot": settings.zero_shot, "steps": settings.steps, "cam_mode": settings.cam_mode,
        "prompt_template": settings.prompt_template, "precision": settings.precision,
    }


def fingerprint_of(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def differences(before: dict | None, now: dict) -> list[str]:
    """The names of what differs between two identities (all of it when `before` is unknown)."""
    before = before or {}
    return [name for name in now if before.get(name) != now[name]]


def check_loaded(identity: dict, predictor) -> None:
    """The predictor was built from the files the fingerprint describes (a Hub branch
    that moved, or a file replaced, since they were hashed would break that)."""
    if (predictor.weights_info.sha256 != identity["weights"]["sha256"]
            or file_sha256(predictor.clip_info.path) != identity["clip"]["sha256"]):
        raise ImrsegError("the weight files changed while the run was starting; run the command again")
