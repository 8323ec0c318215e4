"""mIoU and FB-IoU exactly as the authors' evaluation computes them.

`intersection_union` is the authors' `Evaluator.classify_prediction` for one
episode: background and foreground pixel counts of intersection and union, with
PASCAL's boundary pixels left out of both. `IoUMeter` accumulates them per class
as their `AverageMeter`: mIoU is the mean over the fold's classes of the
foreground IoU (union clamped to at least 1), FB-IoU the mean over background and
foreground of summed intersection / summed union. Counts are kept as exact
integers (the authors' float32 buffers round sums past 2**24 pixels, a difference
far below the printed precision)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..distributed import Shard, all_sum
from ..data.classes import BENCHMARK_CLASSES


def intersection_union(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) 0/1 prediction and ground truth, (H, W) ignore mask -> (intersection,
    union), each [background, foreground] pixel counts over the pixels not ignored."""
    if not pred.shape == gt.shape == ignore.shape:
        raise ValueError(f"shapes differ: `pred` {pred.shape}, `gt` {gt.shape}, `ignore` {ignore.shape}")
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

    def __init__(self, benchmark: str, class_ids: Sequence[int], names: Sequence[str] | None = None):
        # `names`: every class index's name, for benchmarks outside BENCHMARK_CLASSES
        # (FSS-1000, a folder of one's own).
        self.names = tuple(names) if names is not None else BENCHMARK_CLASSES[benchmark]
        n = len(self.names)
        self.benchmark = benchmark
        self.class_ids = list(class_ids)
        self.intersection = np.zeros((2, n), dtype=np.int64)
        self.union = np.zeros((2, n), dtype=np.int64)
        self.episodes = np.zeros(n, dtype=np.int64)  # per class
        self.count = 0

    def update(self, class_id: int, inter, union) -> None:
        self.intersection[:, class_id] += np.asarray(inter, dtype=np.int64)
        self.union[:, class_id] += np.asarray(union, dtype=np.int64)
        self.episodes[class_id] += 1
        self.count += 1

    def merge(self, shard: Shard) -> None:
        """Sum every rank's counts (torch.distributed), so each rank holds the totals."""
        parts = [self.intersection.ravel(), self.union.ravel(), self.episodes,
                 np.array([self.count], dtype=np.int64)]
        import torch

        total = all_sum(shard, torch.from_numpy(np.concatenate(parts))).numpy()
        n = self.intersection.size
        self.intersection = total[:n].reshape(self.intersection.shape)
        self.union = total[n:2 * n].reshape(self.union.shape)
        self.episodes = total[2 * n:-1]
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

    def unevaluated(self) -> list[str]:
        """The fold's classes no episode drew (fewer episodes than classes, or an unlucky
        draw). Their IoU is 0 and counts in mIoU, as in the authors' evaluation."""
        return [self.names[c] for c in self.class_ids if self.episodes[c] == 0]

    def per_class(self) -> dict[str, float]:
        """Foreground IoU (%) of each of the fold's classes, by name."""
        iou = self.class_iou()[1]
        return {self.names[c]: float(iou[c] * 100) for c in self.class_ids}
