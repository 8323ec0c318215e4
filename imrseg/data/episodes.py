"""Test episodes drawn exactly as the authors' test script draws them.

The authors seed numpy's legacy global generator once (`np.random.seed(0)`)
and then build episodes 0, 1, 2, ... in order with `np.random.choice`. A
`RandomState(seed)` is the same Mersenne Twister stream without touching the
global generator, so with HSNet's split files these are the authors' episodes.

PASCAL-5i: the query of episode e is line `e mod len(list)` of the split file;
each of the K supports is `choice(images of that class, 1, replace=False)[0]`,
drawn again while it equals the query (supports may repeat each other).
FSS-1000 (HSNet's test) and a folder of one's own (folder.py) list their queries
the same way.

COCO-20i: the authors ignore the episode index: each episode draws its class
from the fold's classes, then its query from that class's images, then the
supports as for PASCAL, all with `choice(..., 1, replace=False)[0]`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .splits import Split


@dataclass(frozen=True)
class Episode:
    index: int
    class_id: int  # 0-based
    query: str
    supports: tuple[str, ...]


def _draw(rng: np.random.RandomState, pool) -> object:
    # replace=False with size 1 draws through a full permutation of the pool, so
    # it consumes the stream differently from replace=True: keep the authors' call.
    return rng.choice(pool, 1, replace=False)[0]


def _supports(rng: np.random.RandomState, pool, query: str, shots: int) -> tuple[str, ...]:
    supports = []
    while len(supports) < shots:
        name = str(_draw(rng, pool))
        if name != query:
            supports.append(name)
    return tuple(supports)


def sample_episodes(split: Split, shots: int, count: int, seed: int = 0) -> Iterator[Episode]:
    """Episodes 0..count-1 in order. Every draw is made whether or not the
    caller uses the episode, so skipping finished episodes keeps the stream."""
    if shots < 1:
        raise ValueError(f"`shots` must be 1 or more, got {shots}")
    rng = np.random.RandomState(seed)
    pools = {c: np.asarray(names) for c, names in split.classwise.items()}
    class_ids = split.class_ids
    for index in range(count):
        if split.entries:  # PASCAL-5i, FSS-1000 and folders
            query, class_id = split.entries[index % len(split.entries)]
        else:
            class_id = int(_draw(rng, class_ids))
            query = str(_draw(rng, pools[class_id]))
        yield Episode(index, class_id, query, _supports(rng, pools[class_id], query, shots))
