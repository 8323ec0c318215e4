"""What a training run is: the paper's recipe per benchmark, and the settings a
resumed run must share with the run it continues.

The recipe (Section 5.2 and the authors' README): Adam, lr 4e-4 with 40 episodes
a batch and 2 refinement steps on PASCAL-5i, lr 2e-4 with 20 episodes and 3 steps
on COCO-20i; 400 epochs at most (their train.py's default: they kept the epoch
of the best validation mIoU once it saturated). A folder of one's own classes
gets PASCAL's recipe."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..data.classes import TRAIN_BENCHMARKS as BENCHMARKS
from ..errors import InputError

RECIPES = {
    "pascal": {"lr": 4e-4, "batch_size": 40, "steps": 2},
    "coco": {"lr": 2e-4, "batch_size": 20, "steps": 3},
    "folder": {"lr": 4e-4, "batch_size": 40, "steps": 2},
}
DEFAULT_EPOCHS = 400
SETTINGS_VERSION = 1


@dataclass(frozen=True)
class TrainSettings:
    benchmark: str
    fold: int | None  # the test fold (None for a folder)
    backbone: str
    steps: int  # refinement steps
    epochs: int
    batch_size: int  # episodes per optimiser step, over all ranks
    lr: float
    val_episodes: int = 1000
    seed: int = 0  # of the epochs' episode draws and of a fresh network's initialisation
    precision: str = "fp32"
    micro_batch: int | None = None  # episodes per forward pass on one rank (None: its whole share)
    init: str = "imagenet"  # the --init spec a fresh run started from, or "imagenet"

    @classmethod
    def paper(cls, benchmark: str, fold: int | None, backbone: str, **given) -> "TrainSettings":
        """The paper's recipe for `benchmark`, with the values given (not None) instead."""
        if benchmark not in BENCHMARKS:
            raise InputError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
        values = {**RECIPES[benchmark], "epochs": DEFAULT_EPOCHS}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(benchmark, fold, backbone, **values)

    def __post_init__(self):
        for name in ("steps", "epochs", "batch_size", "val_episodes"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be 1 or more, not {getattr(self, name)}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise InputError(f"--micro-batch must be 1 or more, not {self.micro_batch}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, not {self.lr}")
        if self.seed < 0:
            raise InputError(f"--seed must be 0 or more, not {self.seed}")

    def recipe(self) -> dict:
        """What the trained weights depend on, so a resumed run must match it: not
        the epoch count (a larger --epochs continues), nor how a batch is spread
        over ranks and forward passes (the same gradients), nor the precision."""
        keep = asdict(self)
        for name in ("epochs", "micro_batch", "precision"):
            keep.pop(name)
        return {"version": SETTINGS_VERSION, **keep}
