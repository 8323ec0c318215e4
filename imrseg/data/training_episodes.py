"""Training episodes drawn as the authors' training loaders draw them.

PASCAL-5i, and a folder of one's own (folder.py): an epoch visits every entry
of the training split (splits.py) once, in a shuffled order, as the query of an
episode whose support is drawn from the images listed for its class
(drawn again while it equals the query). COCO-20i: an epoch has as many episodes
as there are distinct images, and each draws its class from the training
classes, then its query, then its support, ignoring the episode index as the
authors' loader does.

The authors' loaders draw from unseeded generators. Here epoch e draws from
`RandomState([seed, e])`, uniformly as theirs, so a resumed run sees the very
episodes an uninterrupted one would, and every rank of a distributed run the
same list to take its share of.
"""
from __future__ import annotations

import numpy as np

from .episodes import Episode
from .splits import Split


def _support(rng: np.random.RandomState, pool: tuple, query: str) -> str:
    while True:  # the authors redraw a support equal to the query
        name = pool[rng.randint(len(pool))]
        if name != query:
            return name


def training_episodes(split: Split, epoch: int, seed: int = 0) -> list[Episode]:
    """Epoch `epoch`'s 1-shot episodes, in the order they are trained on."""
    rng = np.random.RandomState([seed, epoch])
    episodes = []
    if split.entries:
        for index, i in enumerate(rng.permutation(len(split.entries))):
            query, class_id = split.entries[i]
            episodes.append(Episode(index, class_id, query, (_support(rng, split.classwise[class_id], query),)))
        return episodes
    for index in range(split.size):
        class_id = split.class_ids[rng.randint(len(split.class_ids))]
        pool = split.classwise[class_id]
        query = pool[rng.randint(len(pool))]
        episodes.append(Episode(index, class_id, query, (_support(rng, pool, query),)))
    return episodes
