"""What a training run is, as one typed object: `imrseg train` builds it from its
options and `train` runs it; everything that can be checked without reading the
data or loading a model is checked here, so bad arguments stop first. No torch
here: the command line reads these names at once.

The recipe (Section 5.2 and the authors' README): Adam, lr 4e-4 with 40 episodes
a batch and 2 refinement steps on PASCAL-5i, lr 2e-4 with 20 episodes and 3 steps
on COCO-20i; 400 epochs at most (their train.py's default: they kept the epoch
of the best validation mIoU once it saturated). A folder of one's own classes
gets PASCAL's recipe. A resumed run must share its recipe (`recipe()`), with
the rest of what defines it (`identity.run_identity`), with the run it continues."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..arguments import check_count, check_fields
from ..devices import check_precision_name
from ..data.classes import BACKBONE_TITLES, NUM_FOLDS, TRAIN_BENCHMARKS as BENCHMARKS
from ..errors import InputError, param

RECIPES = {
    "pascal": {"lr": 4e-4, "batch_size": 40, "steps": 2},
    "coco": {"lr": 2e-4, "batch_size": 20, "steps": 3},
    "folder": {"lr": 4e-4, "batch_size": 40, "steps": 2},
}
DEFAULT_EPOCHS = 400
SETTINGS_VERSION = 1
# What the trained weights depend on, so a resumed run must match it: not the epoch
# count (a larger `epochs` continues), nor how a batch is spread over ranks and
# forward passes (the same gradients), nor whether activations are recomputed (the
# very same numbers), nor the precision, nor where things are.
RECIPE_FIELDS = ("benchmark", "fold", "backbone", "steps", "batch_size", "lr", "val_episodes", "seed", "init")


@dataclass(frozen=True)
class TrainSettings:
    """A training run. None takes the paper's recipe for the benchmark (`steps`,
    `batch_size`, `lr`; 400 `epochs`), for `backbone` the one of `init` (else
    resnet50). `train` needs `data_root` and `out`; `fit` is handed the data, the
    run folder and the network instead, and uses the recipe."""

    benchmark: str  # pascal (PASCAL-5i), coco (COCO-20i) or folder (one subfolder per class, as FSS-1000)
    fold: int | None = None  # the test fold (pascal, coco; None for a folder)
    backbone: str | None = None  # resnet50 or vgg16
    steps: int | None = None  # refinement steps
    epochs: int | None = None  # in all; more than a finished run's continues it
    batch_size: int | None = None  # episodes per optimiser step, over all ranks
    lr: float | None = None  # Adam's
    val_episodes: int = 1000  # validation episodes after each epoch
    seed: int = 0  # of the epochs' episode draws and of a fresh network's initialisation
    precision: str = "fp32"
    micro_batch: int | None = None  # episodes per forward pass on one rank (None: its whole share)
    # Recompute each branch's 4D correlations and learner in the backward pass instead of
    # keeping them (`IMRHSNet.refine`): the same step in far less memory, for about one
    # more forward of the learner per step.
    recompute: bool = True
    init: str | None = None  # weights to fine-tune (any weights spec); None: a fresh network on ImageNet's
    data_root: Path | None = None  # HSNet's layout (VOC2012/ or COCO2014/), or the folder of classes
    out: Path | None = None  # the run folder; the same settings again continue the run in it
    splits: Path | None = None  # HSNet's data/splits; None: the official lists, downloaded once
    val_classes: tuple[str, ...] = ()  # folder: the classes held out for validation
    val_share: float | None = None  # folder: else this share of the classes (None: 0.2), picked with seed 0
    backbone_weights: Path | None = None  # ImageNet backbone weights without `init` (None: torchvision's)
    clip_weights: str | None = None
    hub_namespace: str | None = None
    device: str = "auto"
    workers: int | None = None  # image-decoding threads (None: up to 8)

    def __post_init__(self):
        check_fields(self)

    @classmethod
    def paper(cls, benchmark: str, fold: int | None, backbone: str, **given) -> "TrainSettings":
        """The paper's recipe for `benchmark`, with the values given (not None) instead."""
        return cls(benchmark, fold, backbone, **given).resolved(backbone)

    def resolved(self, backbone: str | None = None) -> "TrainSettings":
        """These settings with the recipe's values where they are None, and the backbone
        of the network that is trained (`backbone`), checked."""
        self._check_values()
        if backbone is not None and self.backbone not in (None, backbone):
            raise InputError(f"{param('backbone')} {self.backbone}: the network is a {backbone}")
        values = {**RECIPES[self.benchmark], "epochs": DEFAULT_EPOCHS}
        given = {name: getattr(self, name) for name in values if getattr(self, name) is not None}
        return replace(self, **{**values, **given}, backbone=backbone or self.backbone)

    def check(self) -> None:
        """Everything that can be checked before the data is read or a model loads."""
        self._check_values()
        for name in ("data_root", "out"):
            if getattr(self, name) is None:
                raise InputError(f"{param(name)} is needed to train")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: exists and is not a folder; {param('out')} names the run folder")
        if self.benchmark == "folder":
            if self.fold is not None:
                raise InputError(f"{param('fold')} is for pascal and coco; a folder's validation classes are "
                                 f"{param('val_classes')} or {param('val_share')}")
            data_root, out = self.data_root.resolve(), self.out.resolve()
            if out == data_root or data_root in out.parents:
                raise InputError(f"{param('out')} {self.out}: inside {param('data_root')}, where every folder is "
                                 "a class; choose a run folder outside it")
            return
        if self.fold is None:
            raise InputError(f"{param('fold')} is needed for {self.benchmark}: 0, 1, 2 or 3 (the test fold)")
        if self.fold not in range(NUM_FOLDS):
            raise InputError(f"{param('fold')} must be 0, 1, 2 or 3 (the test fold), not {self.fold!r}")
        if self.val_classes or self.val_share is not None:
            raise InputError(f"{param('val_classes')} and {param('val_share')} are for {param('benchmark')} "
                             "folder; pascal and coco validate on the test fold")

    def _check_values(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise InputError(f"{param('benchmark')} must be one of {', '.join(BENCHMARKS)}, not {self.benchmark!r}")
        if self.backbone is not None and self.backbone not in BACKBONE_TITLES:
            raise InputError(f"{param('backbone')} must be one of {', '.join(BACKBONE_TITLES)}, "
                             f"not {self.backbone!r}")
        for name in ("steps", "epochs", "batch_size", "micro_batch", "val_episodes", "workers"):
            value = getattr(self, name)
            if value is not None:
                check_count(name, value)
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"{param('lr')} must be positive, not {self.lr}")
        check_count("seed", self.seed, minimum=0)
        check_precision_name(self.precision)

    def recipe(self) -> dict:
        """What a resumed run must share with the run it continues (of resolved settings)."""
        values = {name: getattr(self, name) for name in RECIPE_FIELDS}
        return {"version": SETTINGS_VERSION, **values, "init": self.init or "imagenet"}
