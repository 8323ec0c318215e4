"""A training run's folder, written through the one guard (`guard.OwnedFolder`):
one run at a time holds it, every file is claimed as imrseg's and written
atomically, never over a file imrseg did not write and never through a link (a
symbolic link at RUN/last or RUN/best is refused, not followed), so a killed run
loses at most the steps since its last save and never leaves half a file.
Everything read back is checked: a damaged or crafted file is one line naming it.

RUN/run.json                    what the run is (`identity.run_identity`), from its
                                start: running it again with other settings is refused
RUN/last/checkpoint.pt          what continuing needs: the trained weights, the
                                optimiser, the position (epoch, step), the history,
                                the best epoch and the RNG states
RUN/last/backbone.safetensors   the frozen backbone, written once a process (it never
                                changes, and VGG-16's is 0.5 GB: not at every save)
RUN/best/                       the best validation mIoU so far, in the Hub layout
                                (config.json, model.safetensors, README.md), usable
                                as `weights` and by `imrseg weights push`
RUN/metrics.jsonl               one row per finished epoch
RUN/curves.png                  train loss and validation mIoU per epoch
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.classes import BACKBONE_TITLES
from ..durable import finite_json
from ..errors import CheckpointError, ImrsegError, InputError, one_line, param, show_path
from ..guard import Fields, OwnedFolder
from ..hub.weights import CONFIG_FILE, WEIGHTS_FILE, config_bytes, safetensors_bytes
from ..models.checkpoint import load_error, load_into
from .identity import refusal
from .plot import curves_png

CHECKPOINT_FORMAT = 2
BACKBONE = "backbone."
IDENTITY, METRICS, CURVES = "run.json", "metrics.jsonl", "curves.png"
CHECKPOINT, BACKBONE_FILE = "last/checkpoint.pt", "last/backbone.safetensors"
BEST_CONFIG, BEST_WEIGHTS, BEST_CARD = f"best/{CONFIG_FILE}", f"best/{WEIGHTS_FILE}", "best/README.md"
FILES = (IDENTITY, CHECKPOINT, BACKBONE_FILE, BEST_CONFIG, BEST_WEIGHTS, BEST_CARD, METRICS, CURVES)


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


def _epoch_row(fields: Fields) -> dict:
    """A row of metrics.jsonl (an epoch of the history), checked."""
    return {"epoch": fields.integer("epoch", 1), "train_loss": fields.number("train_loss"),
            "val_miou": fields.number("val_miou", 0, 100), "val_fb_iou": fields.number("val_fb_iou", 0, 100),
            "episodes": fields.integer("episodes", 0), "seconds": fields.number("seconds", 0),
            "optimizer_steps": fields.integer("optimizer_steps", 0)}


def _train_state(fields: Fields) -> TrainState:
    best = fields.fields("best", optional=True)
    return TrainState(
        epoch=fields.integer("epoch", 0), position=fields.integer("position", 0),
        loss_sum=fields.number("loss_sum"), seconds=fields.number("seconds", 0),
        optimizer_steps=fields.integer("optimizer_steps", 0),
        history=[_epoch_row(row) for row in fields.items("history")],
        best=_epoch_row(best) if best is not None else None, origin=fields.text("origin"))


class RunFolder:
    """RUN (`root`): paths for display (`last`, `best`, `metrics`, `curves`), and,
    while `opened`, reading and writing the run's files."""

    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)
        self.last, self.best = self.root / "last", self.root / "best"
        self.checkpoint, self.backbone = self.root / CHECKPOINT, self.root / BACKBONE_FILE
        self.metrics, self.curves = self.root / METRICS, self.root / CURVES
        self.folder: OwnedFolder | None = None
        self.writer = False
        self._saved: dict | None = None
        self._backbone_written = False  # by this process, or read back and checked

    @contextlib.contextmanager
    def opened(self, writer: bool = True) -> Iterator[RunFolder]:
        """The folder for the `with` block; already open, as it is. The `writer` (the
        one process of a run that writes: rank 0) holds its lock, removes what a killed
        run left, and claims the run's files: a link, a folder or a file of the user's
        where one of them goes is refused here, before anything is trained."""
        if self.folder is not None:
            yield self
            return
        with OwnedFolder(self.root, parameter="out", overwrite=None, lock=writer) as folder:
            self.folder, self.writer = folder, writer
            try:
                if writer:
                    self._prepare()
                yield self
            finally:
                self.folder, self.writer, self._saved, self._backbone_written = None, False, None, False

    def _prepare(self) -> None:
        for name in ("last", "best", *FILES):
            path = self.folder.path(name)  # refuses a link on the way
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ImrsegError(f"{show_path(path)}: cannot read ({exc.strerror or one_line(exc)})") from None
            wanted = stat.S_ISDIR if name in ("last", "best") else stat.S_ISREG
            if not wanted(mode):
                kind = "a folder" if wanted is stat.S_ISDIR else "a file"
                raise ImrsegError(f"{show_path(path)}: is not {kind}; imrseg keeps the run's {name} there (move it, "
                                  f"or choose another {param('out')})")
        self.folder.clean(["", "last", "best"])
        self.folder.check(FILES)  # each becomes imrseg's only when it is written

    # -------------------------------------------------------------- run.json
    def begin(self, identity: dict) -> None:
        """Record what the run is when it starts; a folder holding another run (by its
        run.json, else by its checkpoint) is refused with what differs. The ranks that
        do not write only compare."""
        recorded = self._recorded()
        if recorded is not None:
            error = refusal(self.root, recorded, identity)
            if error is not None:
                raise error
        if self.writer and not self.folder.is_file(IDENTITY):
            self.folder.write(IDENTITY, (finite_json(identity, indent=2) + "\n").encode("ascii"))

    def _recorded(self) -> dict | None:
        if not self.folder.is_file(IDENTITY):
            saved = self.saved()
            return saved["identity"] if saved is not None else None
        where = show_path(self.root / IDENTITY)
        try:
            recorded = json.loads(self.folder.read_bytes(IDENTITY))
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{where}: not readable JSON ({one_line(exc)})") from None
        return dict(Fields(recorded, where).row)

    # ------------------------------------------------------------------ last/
    def saved(self) -> dict | None:
        """last/checkpoint.pt, read back and checked (once; None if there is none)."""
        if self._saved is None and self.folder.is_file(CHECKPOINT):
            self._saved = self._read_checkpoint()
        return self._saved

    def saved_backbone(self) -> str | None:
        """The backbone of the run saved here (None if there is none): a resumed run is
        rebuilt from last/, whatever `init` or `backbone_weights` say."""
        saved = self.saved()
        return saved["backbone"] if saved is not None else None

    def _read_checkpoint(self) -> dict:
        where = show_path(self.checkpoint)
        data = self.folder.read_bytes(CHECKPOINT)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: torch raises many types
            raise load_error(where, self.checkpoint, exc) from None
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{where}: not a training checkpoint of this imrseg version")
        fields = Fields(saved, where)
        try:
            checked = {"identity": dict(fields.fields("identity").row),
                       "backbone": fields.text("backbone", choices=BACKBONE_TITLES),
                       "state": _train_state(fields.fields("state")),
                       "model": _tensors(saved.get("model"), where, "model"),
                       "optimizer": fields.fields("optimizer").row,
                       "scaler": fields.fields("scaler", optional=True),
                       "rng": _rng(fields.fields("rng"), where)}
        except InputError as exc:
            raise CheckpointError(str(exc)) from None
        checked["scaler"] = checked["scaler"].row if checked["scaler"] is not None else None
        return checked

    def _read_backbone(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        data = self.folder.read_bytes(BACKBONE_FILE)
        try:
            return load(data)
        except Exception as exc:  # safetensors raises its own and Python's types
            raise CheckpointError(f"{show_path(self.backbone)}: not a readable safetensors file (truncated, corrupt "
                                  f"or another kind of file: {one_line(exc)[:200]})") from None

    def resume(self, identity: dict, model, optimizer, scaler) -> TrainState:
        """The saved state loaded into `model`, `optimizer` and `scaler`; a fresh
        state if there is none. InputError if it is another run's."""
        saved = self.saved()
        if saved is None:
            return TrainState()
        error = refusal(self.root, saved["identity"], identity)
        if error is not None:
            raise error
        backbone = self._read_backbone()
        expected = {k[len(BACKBONE):]: v.shape for k, v in model.state_dict().items() if k.startswith(BACKBONE)}
        if {k: v.shape for k, v in backbone.items()} != expected:
            raise CheckpointError(f"{show_path(self.backbone)}: not the {model.backbone_name} backbone of this run")
        where = show_path(self.checkpoint)
        try:
            load_into(model, {**{BACKBONE + k: v for k, v in backbone.items()}, **saved["model"]}, where)
        except RuntimeError as exc:  # the keys and shapes fit, the values do not (their type)
            raise CheckpointError(f"{where}: its weights do not fit this run's network ({one_line(exc)[:200]})") \
                from None
        try:
            optimizer.load_state_dict(saved["optimizer"])
            _check_optimizer(optimizer)
            if saved["scaler"] is not None:
                scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["rng"]["torch"])
            if torch.cuda.is_available() and len(saved["rng"]["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"{where}: its optimiser or random state does not fit this run "
                                  f"({one_line(exc)[:200]})") from None
        self._backbone_written, self._saved = True, None
        return saved["state"]

    def save_last(self, identity: dict, model, optimizer, scaler, state: TrainState) -> None:
        weights = model.state_dict()
        if not self._backbone_written:
            self.folder.write(BACKBONE_FILE, _safetensors(
                {k[len(BACKBONE):]: v for k, v in weights.items() if k.startswith(BACKBONE)}))
            self._backbone_written = True
        saved = {
            "format": CHECKPOINT_FORMAT, "identity": identity, "backbone": model.backbone_name,
            "state": asdict(state),
            "model": {k: v.detach().cpu() for k, v in weights.items() if not k.startswith(BACKBONE)},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        self.folder.write(CHECKPOINT, buffer.getvalue())

    # ------------------------------------------------------------------ best/
    def save_best(self, model, card: Callable[[str], str]) -> None:
        """The model in the Hub layout: config.json (constant over a run), the
        weights, then the card that describes them (`card(sha256 of the weights)`)."""
        config = {"backbone": model.backbone_name, "benchmark": model.benchmark, "fold": model.fold,
                  "steps": model.steps, "class_names": model.class_names}
        self.folder.write(BEST_CONFIG, config_bytes(config))
        weights = safetensors_bytes(model)
        self.folder.write(BEST_WEIGHTS, weights)
        self.folder.write(BEST_CARD, card(hashlib.sha256(weights).hexdigest()).encode("utf-8"))

    # --------------------------------------------------------------- metrics
    def record(self, history: list[dict]) -> None:
        """metrics.jsonl and curves.png from the saved history, so they agree with
        last/; each written only where it differs from the file there (a run killed
        after saving last/ and before them has them written when it is continued)."""
        metrics = b"".join(finite_json(row).encode("ascii") + b"\n" for row in history)
        for name, data in ((METRICS, metrics), (CURVES, curves_png(history))):
            if history and not (self.folder.is_file(name) and self.folder.read_bytes(name) == data):
                self.folder.write(name, data)


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


def _tensors(value, where: str, key: str) -> dict:
    """`value` if it maps names to tensors; else InputError naming the field."""
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise InputError(f"{where}: field \"{key}\" must hold tensors only")
    return value


def _rng(fields: Fields, where: str) -> dict:
    cuda = fields.raw("cuda", [])
    if not isinstance(cuda, list):
        raise InputError(f"{where}: field \"rng\" must list the CUDA random states")
    return {"torch": _tensors({"torch": fields.raw("torch")}, where, "rng")["torch"],
            "cuda": list(_tensors(dict(enumerate(cuda)), where, "rng").values())}


def _check_optimizer(optimizer) -> None:
    """Adam's moments have their parameter's shape (a crafted checkpoint would
    otherwise fail deep in the first step)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor) or (name != "step" and value.shape != p.shape):
                    raise ValueError(f"optimiser state {name!r} does not match its parameter {tuple(p.shape)}")
