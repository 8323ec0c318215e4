"""What a benchmark evaluation is asked to do, as one typed object: `imrseg eval`
builds it from its options and `run_benchmark` runs it. Everything that can be
checked without reading the data or loading a model is checked here, so bad
arguments stop first. No torch here: the command line reads these names at once."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..arguments import check_count, check_fields
from ..data.classes import BACKBONE_TITLES, NUM_FOLDS, TEST_BENCHMARKS
from ..durable import LOCK_FILE
from ..errors import InputError, param
from ..guard import MANIFEST, OwnedFolder

# "imr": the network; "cam": the query's CLIP-CAM >= 0.5 (paper, Table 4).
METHODS = ("imr", "cam")
ALL_FOLDS = "all"
FOLDS = tuple(str(f) for f in range(NUM_FOLDS)) + (ALL_FOLDS,)


def check_evaluation(method: str, seed: int, **counts: int | None) -> None:
    """The checks every evaluation's settings share: a known method, a seed of 0 or
    more, and each of `counts` (shots, episodes, ...) 1 or more (None: its default)."""
    if method not in METHODS:
        raise InputError(f"{param('method')} must be one of {', '.join(METHODS)}, not {method!r}")
    for name, value in counts.items():
        if value is not None:
            check_count(name, value)
    check_count("seed", seed, minimum=0)


@dataclass(frozen=True)
class BenchmarkSettings:
    benchmark: str  # pascal (PASCAL-5i), coco (COCO-20i) or fss (FSS-1000's test classes, as HSNet)
    data_root: Path  # holds VOC2012/, COCO2014/ or FSS-1000/ in HSNet's layout
    fold: int | str | None = None  # 0-3 or "all" for pascal and coco; None for fss (one test split)
    splits: Path | None = None  # HSNet's data/splits; None: the official lists, downloaded once
    shots: int = 1
    episodes: int | None = None  # per fold; None: 1000 (fss: one per test image, as HSNet)
    seed: int = 0  # numpy seed of the episode draw
    steps: int | None = None  # None: the checkpoint's, else the paper's for the benchmark
    weights: str | None = None  # every fold's; None: each fold's registry checkpoint for `backbone`
    clip_weights: str | None = None
    hub_namespace: str | None = None
    backbone: str = "resnet50"  # of the registry checkpoints, when `weights` is None
    method: str = "imr"
    zero_shot: bool = False  # each query is its own support
    original_size: bool = False  # score at each query's resolution instead of 400x400
    device: str = "auto"
    batch_size: int | None = None  # None: devices.default_batch_size
    report: Path | None = None  # the results as JSON
    no_cache: bool = False  # neither read nor write the CLIP-CAM disk cache

    def __post_init__(self):
        check_fields(self)

    @property
    def folds(self) -> list[int | None]:
        """The folds to evaluate, in order (the settings checked); [None] for FSS-1000's one test split."""
        if self.benchmark == "fss":
            return [None]
        return list(range(NUM_FOLDS)) if self.fold == ALL_FOLDS else [int(self.fold)]

    def check(self) -> None:
        """Everything that can be checked before the data is read or a model loads."""
        if self.benchmark not in TEST_BENCHMARKS:
            raise InputError(f"{param('benchmark')} must be one of {', '.join(TEST_BENCHMARKS)}, "
                             f"not {self.benchmark!r}")
        if self.benchmark == "fss":
            if self.fold is not None:
                raise InputError(f"{param('fold')} is for pascal and coco; FSS-1000 has one test split")
        elif self.fold is None:
            raise InputError(f"{param('fold')} is needed for {self.benchmark}: one of {', '.join(FOLDS)}")
        elif str(self.fold) not in FOLDS:
            raise InputError(f"{param('fold')} must be one of {', '.join(FOLDS)}, not {self.fold!r}")
        check_evaluation(self.method, self.seed, shots=self.shots, episodes=self.episodes, steps=self.steps,
                         batch_size=self.batch_size)
        if self.backbone not in BACKBONE_TITLES:
            raise InputError(f"{param('backbone')} must be one of {', '.join(BACKBONE_TITLES)}, "
                             f"not {self.backbone!r}")
        if self.zero_shot and self.method == "cam":
            raise InputError(f"{param('zero_shot')} and {param('method')} cam exclude each other "
                             "(cam uses no network)")
        if self.report is not None:
            _check_report(Path(self.report))


def report_folder(path: os.PathLike | str) -> OwnedFolder:
    """The folder of the report `path`, through the guard: the report is never written
    through a link nor over a file imrseg did not write (`overwrite` None: a user's file
    is refused, a report imrseg wrote there before is replaced). Not locked: the report
    is one atomic write, and a run writing into that folder must not stop it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: {param('report')} is a folder; give a file name, e.g. {path / 'report.json'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{path}: {param('report')} cannot be written there ({path.parent} is not a folder)")
    if path.name in (MANIFEST, LOCK_FILE):
        raise InputError(f"{path}: {param('report')} names a file imrseg keeps for itself; give another name")
    return OwnedFolder(path.parent, parameter="report", overwrite=None, lock=False)


def _check_report(path: Path) -> None:
    """Find a report that cannot be written before the evaluation, not after it: a
    folder that cannot be made, a link on the way, a file of the user's there. Nothing
    is claimed: the name becomes imrseg's only when the report is written."""
    with report_folder(path) as folder:
        folder.check([path.name])
