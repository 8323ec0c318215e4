"""A training run's folder, written so that a killed run loses at most the steps
since its last save and never leaves a half-written file (every file goes
through `durable.atomic_write_bytes`).

RUN/last/checkpoint.pt          what continuing needs: the trained weights, the
                                optimiser, the position (epoch, step), the history,
                                the best epoch and the RNG states
RUN/last/backbone.safetensors   the frozen backbone, written once (it never changes,
                                and VGG-16's is 0.5 GB: not rewritten at every save)
RUN/best/                       the best validation mIoU so far, in the Hub layout
                                (config.json, model.safetensors, README.md), usable
                                as `weights` and by `imrseg weights push`
RUN/metrics.jsonl               one row per finished epoch
RUN/curves.png                  train loss and validation mIoU per epoch
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..durable import atomic_write_bytes, remove_temporaries
from ..errors import InputError, param, show_path
from ..hub.weights import CONFIG_FILE, WEIGHTS_FILE
from ..models.checkpoint import load_error

CHECKPOINT_FORMAT = 1
BACKBONE = "backbone."


@dataclass
class TrainState:
    """Where a run is. `position` counts the optimiser steps of epoch `epoch`
    (0-based) that are done; `loss_sum` and `seconds` are that epoch's so far."""

    epoch: int = 0
    position: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    optimizer_steps: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    origin: str = ""  # where the weights started from, for the model card


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


class RunFolder:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.last = self.root / "last"
        self.best = self.root / "best"
        self.checkpoint = self.last / "checkpoint.pt"
        self.backbone = self.last / "backbone.safetensors"
        self.metrics = self.root / "metrics.jsonl"
        self.curves = self.root / "curves.png"

    def clean(self) -> None:
        """Temporary files a killed run left (the caller holds the folder's lock)."""
        remove_temporaries([self.root, self.last, self.best])

    # ------------------------------------------------------------------ last/
    def saved_backbone(self) -> str | None:
        """The backbone of the run saved here (None if there is none): a resumed run is
        rebuilt from last/, whatever `init` or `backbone_weights` say."""
        if not self.checkpoint.is_file():
            return None
        return self._read()["recipe"].get("backbone")

    def _read(self) -> dict:
        try:
            saved = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: torch raises many types
            raise load_error(str(self.checkpoint), exc) from None
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{show_path(self.checkpoint)}: not an imrseg training checkpoint")
        return saved

    def resume(self, recipe: dict, model, optimizer, scaler) -> TrainState:
        """The saved state loaded into `model`, `optimizer` and `scaler`; a fresh
        state if there is none. InputError if the run was made with another recipe."""
        if not self.checkpoint.is_file():
            return TrainState()
        saved = self._read()
        if saved["recipe"] != recipe:
            differ = sorted(k for k in set(recipe) | set(saved["recipe"]) if recipe.get(k) != saved["recipe"].get(k))
            shown = "; ".join(f"{k} {saved['recipe'].get(k)!r} there, {recipe.get(k)!r} now" for k in differ)
            raise InputError(f"{show_path(self.root)}: a run with other settings ({shown}); run it with its own "
                             f"settings to continue it, or choose another {param('out')}")
        from safetensors.torch import load_file

        try:
            backbone = load_file(str(self.backbone))
        except Exception as exc:
            raise load_error(str(self.backbone), exc) from None
        weights = {**{BACKBONE + k: v for k, v in backbone.items()}, **saved["model"]}
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        if saved["scaler"] is not None:
            scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"])
        if torch.cuda.is_available() and len(saved["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        return TrainState(**saved["state"])

    def save_last(self, recipe: dict, model, optimizer, scaler, state: TrainState) -> None:
        weights = model.state_dict()
        if not self.backbone.is_file():
            atomic_write_bytes(self.backbone, _safetensors(
                {k[len(BACKBONE):]: v for k, v in weights.items() if k.startswith(BACKBONE)}))
        saved = {
            "format": CHECKPOINT_FORMAT, "recipe": recipe, "state": asdict(state),
            "model": {k: v.detach().cpu() for k, v in weights.items() if not k.startswith(BACKBONE)},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        atomic_write_bytes(self.checkpoint, buffer.getvalue())

    # ------------------------------------------------------------------ best/
    def save_best(self, model, card: Callable[[str], str]) -> None:
        """The model in the Hub layout: config.json (constant over a run), the
        weights, then the card that describes them (`card(sha256 of the weights)`)."""
        config = {"backbone": model.backbone_name, "benchmark": model.benchmark, "fold": model.fold,
                  "steps": model.steps, "class_names": model.class_names}
        atomic_write_bytes(self.best / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        weights = _safetensors(model.state_dict())
        atomic_write_bytes(self.best / WEIGHTS_FILE, weights)
        atomic_write_bytes(self.best / "README.md", card(hashlib.sha256(weights).hexdigest()).encode("utf-8"))

    # --------------------------------------------------------------- metrics
    def write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl from the saved history, so it always agrees with last/."""
        atomic_write_bytes(self.metrics, "".join(json.dumps(row) + "\n" for row in history).encode())
