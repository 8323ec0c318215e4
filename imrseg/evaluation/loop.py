"""The paper's benchmark evaluation, as the authors' `test.py` runs it.

`evaluate` draws the episodes (`episodes.sample_episodes`), runs queries in
batches, and feeds the meter (`metrics.IoUMeter`). CLIP-CAMs come from a
`CamSource` (`clip.cache`); a `RunState` (`state`) records each finished episode,
so an interrupted run resumes. One split at a time: `benchmark.run_benchmark` runs
a whole evaluation."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import Shard
from ..errors import InputError, param
from ..models import IMRHSNet
from ..models.imr_hsnet import INPUT_SIZE
from ..transforms import network_input
from ..clip.cache import CamSource
from ..data.classes import paper_steps
from ..data.datasets import BenchmarkData, ground_truth, read_matching_mask
from ..data.episodes import Episode, sample_episodes
from .metrics import IoUMeter, intersection_union
from ..data.splits import Split
from .settings import check_evaluation
from .state import STATE_VERSION, RunState

CAM_THRESHOLD = 0.5


@dataclass(frozen=True)
class EvalSettings:
    benchmark: str
    fold: int
    shots: int = 1
    episodes: int = 1000
    seed: int = 0
    steps: int | None = None  # None: the paper's for the benchmark
    method: str = "imr"  # one of settings.METHODS
    zero_shot: bool = False  # the query is its own support (paper, Table 3)
    original_size: bool = False  # evaluate at the query's size instead of 400x400
    batch_size: int = 8

    def __post_init__(self):
        if self.steps is None:
            object.__setattr__(self, "steps", paper_steps(self.benchmark))
        check_evaluation(self.method, self.seed, shots=self.shots, episodes=self.episodes, steps=self.steps,
                         batch_size=self.batch_size)

    def state_setting(self, split: Split, data_root: Path, weights_sha256: str | None, clip_id: str,
                      cam_mode: str) -> dict:
        """Everything the numbers depend on: batch size, device and episode count
        are left out (the first N episodes do not depend on how many follow)."""
        return {"version": STATE_VERSION, "benchmark": self.benchmark, "fold": self.fold, "shots": self.shots,
                "seed": self.seed, "steps": self.steps if self.method == "imr" else None,
                "method": self.method, "zero_shot": self.zero_shot, "original_size": self.original_size,
                "split_sha256": split.sha256, "data_root": str(Path(data_root).resolve()),
                "weights_sha256": weights_sha256 if self.method == "imr" else None,
                "clip": clip_id, "cam_mode": cam_mode}


@dataclass
class EvalResult:
    settings: EvalSettings
    miou: float
    fb_iou: float
    per_class: dict[str, float]
    episodes: int
    resumed: int  # episodes taken from the state file
    seconds: float
    cams_computed: int = 0
    unevaluated: list[str] = field(default_factory=list)  # classes no episode drew: 0 IoU in mIoU
    extra: dict = field(default_factory=dict)
    state_path: Path | None = None  # the file of finished episodes; None: not resumable

    def to_dict(self) -> dict:
        s = self.settings
        return {"benchmark": s.benchmark, "fold": s.fold, "shots": s.shots,
                "steps": s.steps if s.method == "imr" else None, "episodes": self.episodes, "seed": s.seed,
                "method": s.method, "zero_shot": s.zero_shot, "original_size": s.original_size,
                "miou": self.miou, "fb_iou": self.fb_iou,
                "per_class": self.per_class, "unevaluated_classes": self.unevaluated,
                "seconds": self.seconds, "resumed_episodes": self.resumed,
                "cams_computed": self.cams_computed, **self.extra}


ProgressCallback = Callable[[int, int, IoUMeter], None]


def evaluate(settings: EvalSettings, split: Split, data: BenchmarkData, model: IMRHSNet | None,
             cams: CamSource, state: RunState | None = None, device="cpu",
             on_episode: ProgressCallback | None = None, shard: Shard = Shard()) -> EvalResult:
    """Run the fold's episodes; finished ones in `state` are counted, not run again.
    `model` may be None for `method="cam"`. Under torch.distributed (`shard`), each
    rank runs episodes rank, rank + world, ... and the counts are summed at the end
    (no resumable state then)."""
    if shard.distributed and state is not None:
        raise InputError(f"a distributed evaluation keeps no resumable state; {param('state')} must be None")
    if settings.benchmark != split.benchmark or settings.fold != split.fold:
        raise InputError(f"{param('split')} is {split.benchmark} fold {split.fold}, {param('settings')} say "
                         f"{settings.benchmark} fold {settings.fold}")
    if settings.method == "imr" and model is None:
        raise InputError(f"method imr needs the network: {param('model')} is None")
    start = time.perf_counter()
    meter = IoUMeter(settings.benchmark, split.class_ids, split.class_names)
    done = state.rows[:settings.episodes] if state else []
    runner = _BatchRunner(settings, data, model, cams, torch.device(device))
    pending: list[Episode] = []

    def flush() -> None:
        for episode, (inter, union) in zip(pending, runner(pending)):
            meter.update(episode.class_id, inter, union)
            if state is not None:
                state.append(episode, inter, union)
            if on_episode:
                on_episode(episode.index + 1, settings.episodes, meter)
        pending.clear()

    # Every episode is drawn, finished ones included, so the generator's stream
    # reaches the first unfinished episode exactly as in an uninterrupted run.
    for episode in sample_episodes(split, settings.shots, settings.episodes, settings.seed):
        if episode.index < len(done):
            row = done[episode.index]
            state.check(row, episode)
            meter.update(episode.class_id, row.inter, row.union)
            if on_episode:
                on_episode(episode.index + 1, settings.episodes, meter)
            continue
        if episode.index % shard.world != shard.rank:
            continue
        pending.append(episode)
        if len(pending) == settings.batch_size:
            flush()
    if pending:
        flush()
    if shard.distributed:
        meter.merge(shard)
    return EvalResult(settings, meter.miou, meter.fb_iou, meter.per_class(), meter.count, len(done),
                      time.perf_counter() - start, cams.computed, meter.unevaluated(),
                      state_path=state.path if state is not None else None)


class _BatchRunner:
    """Predictions and counts for a batch of episodes."""

    def __init__(self, settings: EvalSettings, data: BenchmarkData, model, cams: CamSource, device):
        self.settings, self.data, self.cams, self.device = settings, data, cams, device
        self.model = model.to(device).eval() if model is not None else None

    def __call__(self, episodes: Sequence[Episode]) -> list[tuple[np.ndarray, np.ndarray]]:
        s = self.settings
        needs_supports = s.method == "imr" and not s.zero_shot
        names = {e.query for e in episodes}
        if needs_supports:
            names.update(n for e in episodes for n in e.supports)
        images = {name: self.data.read_image(name) for name in sorted(names)}
        truths = [self._truth(e, images[e.query]) for e in episodes]
        sizes = [t[0].shape for t in truths]
        # Grad-CAM needs autograd, so every CAM is made before inference mode starts,
        # all in one call: queries first, then the k-th supports for each k.
        columns = [[e.query for e in episodes]]
        if needs_supports:
            columns += [[e.supports[k] for e in episodes] for k in range(s.shots)]
        cams = self._cams([n for column in columns for n in column], [e.class_id for e in episodes] * len(columns),
                          images).split(len(episodes))
        query_cams, support_cams = cams[0], cams[1:]
        with torch.inference_mode():
            if s.method == "cam":
                preds = [F.interpolate(query_cams[b][None, None], size, mode="bilinear", align_corners=True)[0, 0]
                         >= CAM_THRESHOLD for b, size in enumerate(sizes)]
            else:
                preds = self._network(episodes, images, query_cams, support_cams, sizes)
        return [intersection_union(p.cpu().numpy(), fg, ignore) for p, (fg, ignore) in zip(preds, truths)]

    def _truth(self, episode: Episode, image) -> tuple[np.ndarray, np.ndarray]:
        mask = read_matching_mask(self.data, episode.query, image)
        size = None if self.settings.original_size else INPUT_SIZE
        return ground_truth(mask, self.settings.benchmark, episode.class_id, size)

    def _cams(self, names: Sequence[str], class_ids: Sequence[int], images: dict) -> torch.Tensor:
        return self.cams.get_by_name(self.data, names, class_ids, images.__getitem__).to(self.device)

    def _inputs(self, names: Sequence[str], images: dict) -> torch.Tensor:
        return torch.stack([network_input(images[n]) for n in names]).to(self.device)

    def _network(self, episodes, images, query_cams, support_cams, sizes) -> list[torch.Tensor]:
        """Each query refined against its own k-th support for every k (or against
        itself, zero-shot), the K masks voted (`IMRHSNet.segment`)."""
        model = self.model
        query = model.encode(self._inputs([e.query for e in episodes], images))
        shots = [(model.encode(self._inputs([e.supports[k] for e in episodes], images)), cams)
                 for k, cams in enumerate(support_cams)] or None
        return [r.mask for r in model.segment(query, query_cams, shots, self.settings.steps, sizes)]
