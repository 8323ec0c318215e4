"""What a training run is, so that running it again continues that run and no other.

`run_identity` holds what the trained weights depend on: the recipe
(`TrainSettings.recipe`: benchmark, fold, backbone, steps, batch, lr, validation
episodes, seed), the data (its resolved root, the training and validation splits
by content, the validation classes by name) and, by sha256, the weights the run
starts from and the CLIP whose CAMs it learns from (`weights_identity`, read
without loading a model). The run folder records it when the run starts
(RUN/run.json) and in every checkpoint; a run asked for with anything different is
refused with one line naming each difference (`refusal`).

Not in it: the number of epochs (a larger one continues a run), how a batch is
spread over processes and forward passes (the same steps), whether activations
are recomputed in the backward pass (the same numbers), the precision, the
device, the number of decoding threads and where the caches are."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from ..durable import file_sha256, finite_json
from ..errors import InputError, param, show_path
from .settings import TrainSettings

# Keys that are `TrainSettings` parameters: named as such (the command line shows its flags).
PARAMETERS = frozenset(f.name for f in fields(TrainSettings))
SHOWN = 160  # characters of a value a refusal shows (a crafted run.json may hold any)


def weights_identity(settings: TrainSettings) -> dict:
    """The content of the weights a run starts from (`init`'s, or the ImageNet
    backbone's) and of CLIP's, by sha256; Hub weights are downloaded if need be."""
    from ..hub import fetch_clip, fetch_weights, locate_clip, locate_weights

    if settings.init is not None:
        source = locate_weights(settings.init, settings.hub_namespace)
        sha256 = file_sha256(source.path) if source.kind == "official" else fetch_weights(source).sha256
        init = f"sha256 {sha256}"
    elif settings.backbone_weights is not None:
        init = f"ImageNet backbone, sha256 {file_sha256(settings.backbone_weights)}"
    else:
        init = "ImageNet backbone, torchvision IMAGENET1K_V1"
    clip = locate_clip(settings.clip_weights)
    clip_file, _ = fetch_clip(clip)
    return {"init": init, "clip_weights": f"{clip.model_name or clip.repo_id}, sha256 {file_sha256(clip_file)}"}


def run_identity(settings: TrainSettings, split, val_split, data, weights: Mapping | None = None) -> dict:
    """Everything a resumed run must share with the run it continues, as JSON values.
    `split`/`val_split`: the training and validation `Split`s; `data`: their images'
    (its `root`); `weights`: `weights_identity`'s (else `init` counts by its name).
    The backbone counts where no `init` gives it (ResNet-50 if none is named)."""
    settings = settings.resolved()
    identity = {
        **settings.recipe(),
        "backbone": None if settings.init else settings.backbone or "resnet50",
        "data_root": str(Path(data.root).resolve()),
        "val_classes": [val_split.class_names[c] for c in val_split.class_ids],
        **(weights or {}),
        "training_split": split.sha256,
        "validation_split": val_split.sha256,
    }
    return json.loads(finite_json(identity))


def differences(before: Mapping, now: Mapping) -> list[str]:
    """The keys whose values differ between two identities, in order."""
    return [key for key in dict.fromkeys([*now, *before]) if before.get(key) != now.get(key)]


def refusal(where: str | Path, before: Mapping, now: Mapping) -> InputError | None:
    """The one-line refusal to continue the run `before` as the run `now` (None if
    they are the same run); `where` names the run folder."""
    differ = differences(before, now)
    if not differ:
        return None
    shown = "; ".join(f"{_name(key)} {_shown(before.get(key))} there, {_shown(now.get(key))} now" for key in differ)
    return InputError(f"{show_path(where)}: a run with other settings ({shown}); run it with its own settings to "
                      f"continue it, or choose another {param('out')}")


def _name(key: str) -> str:
    return param(key) if key in PARAMETERS else key.replace("_", " ")


def _shown(value) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ", ".join(value) or "none"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    text = show_path(text)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."
