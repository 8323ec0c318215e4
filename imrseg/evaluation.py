"""The paper's benchmark evaluation, as the authors' `test.py` runs it.

Metrics
    `intersection_union` is the authors' `Evaluator.classify_prediction` for one
    episode: background and foreground pixel counts of intersection and union,
    with PASCAL's boundary pixels left out of both. `IoUMeter` accumulates them
    per class as their `AverageMeter`: mIoU is the mean over the fold's classes
    of the foreground IoU (union clamped to at least 1), FB-IoU the mean over
    background and foreground of summed intersection / summed union. Counts are
    kept as exact integers (the authors' float32 buffers round sums past 2**24
    pixels, a difference far below the printed precision).

Runner
    `evaluate` draws the episodes (`imrseg.data.sample_episodes`), runs queries
    in batches, and feeds the meter. CLIP-CAMs come from a `CamSource`, which
    keeps them on disk per (image content, class, vocabulary, prompt, CLIP
    weights, CAM mode) so other folds and later runs reuse them. A `RunState`
    file records each finished episode, so an interrupted run resumes.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cam import ClipCAM
from .classes import BENCHMARK_CLASSES, fold_classes
from .data import BenchmarkData, Episode, Split, ground_truth, sample_episodes
from .distributed import Shard, all_sum
from .errors import InputError
from .io import ResultsLog, atomic_write_bytes, read_results
from .models import IMRHSNet, upsample_logits, vote
from .models.imr_hsnet import INPUT_SIZE
from .predictor import CAM_SIZE, network_input

METHODS = ("imr", "cam")
CAM_THRESHOLD = 0.5
STATE_VERSION = 1


# ------------------------------------------------------------------- metrics
def intersection_union(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) 0/1 prediction and ground truth, (H, W) ignore mask -> (intersection,
    union), each [background, foreground] pixel counts over the pixels not ignored."""
    if not pred.shape == gt.shape == ignore.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}, ignore {ignore.shape}")
    valid = ~np.asarray(ignore, dtype=bool)
    p, g = np.asarray(pred, dtype=bool)[valid], np.asarray(gt, dtype=bool)[valid]
    fg_inter, fg_pred, fg_gt = np.count_nonzero(p & g), np.count_nonzero(p), np.count_nonzero(g)
    bg_inter = p.size - fg_pred - fg_gt + fg_inter  # pixels that are 0 in both
    inter = np.array([bg_inter, fg_inter], dtype=np.int64)
    area_pred = np.array([p.size - fg_pred, fg_pred], dtype=np.int64)
    area_gt = np.array([g.size - fg_gt, fg_gt], dtype=np.int64)
    return inter, area_pred + area_gt - inter


class IoUMeter:
    """Per-class sums of intersection and union, read out as the authors do."""

    def __init__(self, benchmark: str, class_ids: Sequence[int]):
        n = len(BENCHMARK_CLASSES[benchmark])
        self.benchmark = benchmark
        self.class_ids = list(class_ids)
        self.intersection = np.zeros((2, n), dtype=np.int64)
        self.union = np.zeros((2, n), dtype=np.int64)
        self.count = 0

    def update(self, class_id: int, inter, union) -> None:
        self.intersection[:, class_id] += np.asarray(inter, dtype=np.int64)
        self.union[:, class_id] += np.asarray(union, dtype=np.int64)
        self.count += 1

    def merge(self, shard: Shard) -> None:
        """Sum every rank's counts (torch.distributed), so each rank holds the totals."""
        parts = [self.intersection.ravel(), self.union.ravel(), np.array([self.count], dtype=np.int64)]
        total = all_sum(shard, torch.from_numpy(np.concatenate(parts))).numpy()
        n = self.intersection.size
        self.intersection = total[:n].reshape(self.intersection.shape)
        self.union = total[n:2 * n].reshape(self.union.shape)
        self.count = int(total[-1])

    def class_iou(self) -> np.ndarray:
        """(2, C) background and foreground IoU of every class, union clamped to >= 1."""
        return self.intersection / np.maximum(self.union, 1)

    @property
    def miou(self) -> float:
        return float(self.class_iou()[1, self.class_ids].mean() * 100)

    @property
    def fb_iou(self) -> float:
        inter = self.intersection[:, self.class_ids].sum(axis=1)
        union = self.union[:, self.class_ids].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float((inter / union).mean() * 100)

    def per_class(self) -> dict[str, float]:
        """Foreground IoU (%) of each of the fold's classes, by name."""
        names = BENCHMARK_CLASSES[self.benchmark]
        iou = self.class_iou()[1]
        return {names[c]: float(iou[c] * 100) for c in self.class_ids}


# ---------------------------------------------------------------------- CAMs
def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return digest.hexdigest()


class CamSource:
    """CLIP-CAMs (50x50) of benchmark images for a class, computed in batches.

    `cache_dir` None keeps them in memory for this run only; otherwise each map
    is also a .npy file under `cache_dir/cams/<setting key>/`, where the key
    covers the class vocabulary, prompt, CAM mode and size and `clip_id` (the
    CLIP weights' identity), and the file name the image's content hash and
    the class: a moved data root or another fold finds them again.
    """

    def __init__(self, cam: ClipCAM, classnames: Sequence[str], clip_id: str,
                 cache_dir: Path | None = None, size: int = CAM_SIZE):
        self.cam, self.classnames, self.size = cam, list(classnames), size
        setting = {"vocabulary": self.classnames, "template": cam.template, "mode": cam.mode,
                   "size": size, "clip": clip_id}
        key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = Path(cache_dir) / "cams" / key if cache_dir is not None else None
        self._memory: dict[tuple[str, int], np.ndarray] = {}
        self._digests: dict[Path, str] = {}
        self.computed = 0  # maps computed by CLIP in this run (not found in any cache)

    def _file(self, digest: str, class_id: int) -> Path:
        return self.folder / digest[:2] / f"{digest}_{class_id}.npy"

    def _from_disk(self, digest: str, class_id: int) -> np.ndarray | None:
        if self.folder is None:
            return None
        try:
            cam = np.load(self._file(digest, class_id), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or damaged: computed again and rewritten
        return cam if cam.shape == (self.size, self.size) and cam.dtype == np.float32 else None

    def _to_disk(self, digest: str, class_id: int, cam: np.ndarray) -> None:
        if self.folder is not None:
            buffer = io.BytesIO()
            np.save(buffer, cam, allow_pickle=False)
            atomic_write_bytes(self._file(digest, class_id), buffer.getvalue())

    def get(self, paths: Sequence[Path], class_ids: Sequence[int], load: Callable[[Path], object]) -> torch.Tensor:
        """(N, size, size) CAMs of the images at `paths` for `class_ids`; `load(path)`
        gives the PIL image of those that must be computed."""
        keys = []
        for path, class_id in zip(paths, class_ids):
            if path not in self._digests:
                self._digests[path] = file_digest(path)
            keys.append((self._digests[path], int(class_id)))
        missing = []
        for key, path in zip(keys, paths):
            if key not in self._memory:
                cam = self._from_disk(*key)
                if cam is None:
                    missing.append((key, path))
                else:
                    self._memory[key] = cam
        missing = list(dict(missing).items())  # one computation per distinct (image, class)
        if missing:
            maps = self.cam([load(path) for _, path in missing], self.classnames,
                            [class_id for (_, class_id), _ in missing], size=self.size).numpy()
            for ((digest, class_id), _), cam in zip(missing, maps):
                cam = np.ascontiguousarray(cam, dtype=np.float32)
                self._memory[(digest, class_id)] = cam
                self._to_disk(digest, class_id, cam)
            self.computed += len(missing)
        return torch.from_numpy(np.stack([self._memory[key] for key in keys]))


# -------------------------------------------------------------------- state
class RunState:
    """Finished episodes of one evaluation setting, one JSON row each (append + fsync).

    The first row names the setting; rows hold the episode's class, query,
    supports and counts. Resuming checks that the episodes drawn again are the
    recorded ones, so a changed split or data set never mixes into old rows.
    """

    def __init__(self, path: Path, setting: dict):
        self.path = Path(path)
        rows = read_results(self.path)
        if rows and rows[0].get("setting") != setting:
            raise InputError(f"{self.path}: state of another evaluation setting; delete it to start over")
        self.rows = rows[1:]
        for number, row in enumerate(self.rows):
            if row.get("episode") != number:
                raise InputError(f"{self.path}: episode rows out of order at row {number + 2}; "
                                 "delete it to start over")
        self._log = ResultsLog(self.path)
        if not rows:
            self._log.write({"setting": setting})

    @staticmethod
    def key(setting: dict) -> str:
        return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:24]

    def check(self, row: dict, episode: Episode) -> None:
        recorded = (row.get("class"), row.get("query"), row.get("supports"))
        if recorded != (episode.class_id, episode.query, list(episode.supports)):
            raise InputError(f"{self.path}: episode {episode.index} was {recorded[1]} (class {recorded[0]}) "
                             f"but is now {episode.query} (class {episode.class_id}); the split or seed "
                             "changed: delete the file to start over")

    def append(self, episode: Episode, inter: np.ndarray, union: np.ndarray) -> None:
        row = {"episode": episode.index, "class": episode.class_id, "query": episode.query,
               "supports": list(episode.supports), "inter": inter.tolist(), "union": union.tolist()}
        self._log.write(row)
        self.rows.append(row)

    def close(self) -> None:
        self._log.close()


# ------------------------------------------------------------------- runner
@dataclass(frozen=True)
class EvalSettings:
    benchmark: str
    fold: int
    shots: int = 1
    episodes: int = 1000
    seed: int = 0
    steps: int = 2
    method: str = "imr"  # "imr": the network; "cam": the query's CLIP-CAM >= 0.5 (paper, Table 4)
    zero_shot: bool = False  # the query is its own support (paper, Table 3)
    original_size: bool = False  # evaluate at the query's size instead of 400x400
    batch_size: int = 8

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.shots < 1 or self.episodes < 1 or self.steps < 1 or self.batch_size < 1:
            raise InputError("shots, episodes, steps and batch size must be at least 1")
        if self.seed < 0:
            raise InputError(f"seed must be 0 or more, got {self.seed}")

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
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        s = self.settings
        return {"benchmark": s.benchmark, "fold": s.fold, "shots": s.shots,
                "steps": s.steps if s.method == "imr" else None, "episodes": self.episodes, "seed": s.seed,
                "method": s.method, "zero_shot": s.zero_shot, "original_size": s.original_size,
                "miou": self.miou, "fb_iou": self.fb_iou,
                "per_class": self.per_class, "seconds": self.seconds, "resumed_episodes": self.resumed,
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
        raise InputError("a distributed eval keeps no resumable state; pass state=None")
    if settings.benchmark != split.benchmark or settings.fold != split.fold:
        raise InputError(f"the split is {split.benchmark} fold {split.fold}, the settings say "
                         f"{settings.benchmark} fold {settings.fold}")
    if settings.method == "imr" and model is None:
        raise InputError("method imr needs the network")
    start = time.perf_counter()
    meter = IoUMeter(settings.benchmark, fold_classes(settings.benchmark, settings.fold))
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
            meter.update(episode.class_id, row["inter"], row["union"])
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
                      time.perf_counter() - start, cams.computed)


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
        mask = self.data.read_mask(episode.query)
        if mask.shape != (image.height, image.width):
            raise InputError(f"{self.data.mask_path(episode.query)}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                             f"its image is {image.width}x{image.height}")
        size = None if self.settings.original_size else INPUT_SIZE
        return ground_truth(mask, self.settings.benchmark, episode.class_id, size)

    def _cams(self, names: Sequence[str], class_ids: Sequence[int], images: dict) -> torch.Tensor:
        paths = [self.data.image_path(n) for n in names]
        by_path = dict(zip(paths, names))
        return self.cams.get(paths, class_ids, lambda p: images[by_path[p]]).to(self.device)

    def _inputs(self, names: Sequence[str], images: dict) -> torch.Tensor:
        return torch.stack([network_input(images[n]) for n in names]).to(self.device)

    def _network(self, episodes, images, query_cams, support_cams, sizes) -> list[torch.Tensor]:
        """Each query refined against its own k-th support for every k (or against
        itself, zero-shot); per query, the K upsampled arg-max masks are voted."""
        model, steps = self.model, self.settings.steps
        query = model.encode(self._inputs([e.query for e in episodes], images))
        per_shot = []
        for k, cams in enumerate(support_cams):
            support = model.encode(self._inputs([e.supports[k] for e in episodes], images))
            per_shot.append(model.refine(query, support, query_cams, cams, steps, with_support=False)[0][-1])
        if not support_cams:
            per_shot = [model.refine(query, query, query_cams, query_cams, steps, with_support=False)[0][-1]]
        preds = []
        for b, size in enumerate(sizes):
            votes = torch.stack([upsample_logits(logits[b:b + 1], size).argmax(dim=1) for logits in per_shot], dim=1)
            preds.append(vote(votes)[0] >= 0.5)
        return preds
