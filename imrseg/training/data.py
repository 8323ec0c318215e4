"""Training batches: episodes become the tensors the authors' training loader
gives their network, decoded on threads while the network works.

Images get the test transform (400x400 bilinear, ImageNet statistics; they use
no augmentation). Masks are resized to 400x400 nearest and made 0/1 for the
episode's class, as their loss sees them: PASCAL's 255 boundary label is not the
class, so it counts as background (their training loss has no ignore index; only
their metric leaves it out). A mask of another size than its image is refused, as
`imrseg eval` refuses it (`data.datasets.read_matching_mask`). CLIP-CAMs come from
the on-disk cache `imrseg eval` uses, filled beforehand by `precompute_cams` (once
per (image, class), resumable).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import torch

from ..distributed import Shard, barrier
from ..prefetch import ahead
from ..models.voting import INPUT_SIZE
from ..transforms import network_input
from ..clip.cache import CamSource
from ..data.datasets import ground_truth, read_matching_mask
from ..data.episodes import Episode

PREFETCH = 2  # batches decoded ahead of the one the network is on
CAM_CHUNK = 64  # (image, class) pairs per CLIP call when filling the cache


@dataclass
class Batch:
    """One batch of 1-shot episodes, in `IMRHSNet.loss`'s argument order."""

    query_img: torch.Tensor  # (B, 3, 400, 400)
    support_img: torch.Tensor
    query_cam: torch.Tensor  # (B, 50, 50)
    support_cam: torch.Tensor
    query_mask: torch.Tensor  # (B, 400, 400) 0/1 long
    support_mask: torch.Tensor

    def __len__(self) -> int:
        return self.query_img.shape[0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in self.tensors()))

    def split(self, size: int) -> list["Batch"]:
        """Consecutive parts of at most `size` episodes (micro-batches)."""
        return [Batch(*(t[i:i + size] for t in self.tensors())) for i in range(0, len(self), size)]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class EpisodeLoader:
    """Batches of episodes of one benchmark's data (`data.datasets.BenchmarkData`
    or `data.folder.FolderData`), with CAMs from `cams`."""

    def __init__(self, data, benchmark: str, cams: CamSource, workers: int | None = None):
        self.data, self.benchmark, self.cams = data, benchmark, cams
        self.workers = workers or default_workers()

    def _image_and_mask(self, name: str, class_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.data.read_image(name)
        mask = read_matching_mask(self.data, name, image)  # refused as `imrseg eval` refuses it
        foreground, _ = ground_truth(mask, self.benchmark, class_id, INPUT_SIZE)
        return network_input(image), torch.from_numpy(foreground).long()

    def _decoded(self, pool: ThreadPoolExecutor, episodes: Sequence[Episode]) -> list:
        return [pool.submit(self._image_and_mask, name, e.class_id)
                for e in episodes for name in (e.query, e.supports[0])]

    def _assemble(self, episodes: Sequence[Episode], decoded: list) -> Batch:
        pairs = [f.result() for f in decoded]
        queries, supports = pairs[0::2], pairs[1::2]
        names = [e.query for e in episodes] + [e.supports[0] for e in episodes]
        cams = self.cam_maps(names, [e.class_id for e in episodes] * 2).split(len(episodes))
        return Batch(torch.stack([p[0] for p in queries]), torch.stack([p[0] for p in supports]), cams[0], cams[1],
                     torch.stack([p[1] for p in queries]), torch.stack([p[1] for p in supports]))

    def cam_maps(self, names: Sequence[str], class_ids: Sequence[int]) -> torch.Tensor:
        return self.cams.get_by_name(self.data, names, class_ids)

    def load(self, episodes: Sequence[Episode]) -> Batch:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imrseg-train-io") as pool:
            return self._assemble(episodes, self._decoded(pool, episodes))

    def stream(self, groups: Sequence[Sequence[Episode]]) -> Iterator[Batch]:
        """A Batch per group of episodes, in order, the next ones decoded meanwhile.
        CAMs are looked up here, on the caller's thread (the CAM source is not shared
        across threads)."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imrseg-train-io") as pool:
            for group, decoded in ahead(groups, lambda g: self._decoded(pool, g), PREFETCH):
                yield self._assemble(group, decoded)


def precompute_cams(loader: EpisodeLoader, pairs: Sequence[tuple[str, int]], shard: Shard = Shard(),
                    on_progress: Callable[[int, int], None] | None = None,
                    stop: Callable[[], bool] = lambda: False) -> bool:
    """Put the CLIP-CAM of every (image, class) pair in the cache, CAM_CHUNK pairs a
    CLIP call; pairs already there are read, not computed, so an interrupted fill
    resumes. Ranks fill disjoint chunks. False if `stop()` said to stop."""
    chunks = [pairs[i:i + CAM_CHUNK] for i in range(0, len(pairs), CAM_CHUNK)]
    done = 0
    for index, chunk in enumerate(chunks):
        if stop():
            return False
        if index % shard.world == shard.rank:
            loader.cam_maps([n for n, _ in chunk], [c for _, c in chunk])
        done += len(chunk)
        if on_progress:
            on_progress(done, len(pairs))
    barrier(shard)
    return True
