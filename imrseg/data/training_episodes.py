"""Training episodes as the authors' training loaders make them.

PASCAL-5i: training for test fold i reads HSNet's `pascal/trn` lists of the
other three folds (`IMAGE__CLS` lines, in fold order). An epoch visits every
line once, in a shuffled order, as the query of an episode whose support is
drawn from the images listed for its class (drawn again while it equals the
query). COCO-20i: `coco/trn/fold{i}.pkl` (class -> images, the test fold's
classes empty); an epoch has as many episodes as there are distinct images, and
each draws its class from the training classes, then its query, then its
support, ignoring the episode index as the authors' loader does. A folder of
one's own (`evaluation.folder`) is drawn as PASCAL.

The authors' loaders draw from unseeded generators. Here epoch e draws from
`RandomState([seed, e])`, uniformly as theirs, so a resumed run sees the very
episodes an uninterrupted one would, and every rank of a distributed run the
same list to take its share of.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .classes import BENCHMARK_CLASSES, NUM_FOLDS, fold_classes
from .episodes import Episode
from .splits import _check_pools, _group, _read, fetch_official, locate_official, parse_coco, parse_pascal

# HSNet's training lists at the commit of the validation lists (see splits.py).
TRAINING_SHA256 = {
    "pascal/trn/fold0.txt": "40fded8be6afbc4b70953277f2a178af8055cddd4e73fb4646b7bf19704b9da2",
    "pascal/trn/fold1.txt": "558167c3c6fea0cda1bb7c7a275e66d5de7bc13cbc97e00c5872ac84d5f0954e",
    "pascal/trn/fold2.txt": "d07e35f4a4ae95774c619bafb57d65d682dbd5b9f33c7f71a4f5cef8e3f99609",
    "pascal/trn/fold3.txt": "ffe09100c0c4d9c19d074a33b0f29fe5a89a730579ba39a9f9e908186298ac17",
    "coco/trn/fold0.pkl": "5a94e113d8c150a7e20723360dd9779eaa1305ccddc28dff4501e29ed3df5c45",
    "coco/trn/fold1.pkl": "69629cdd84fd57b3bb4e281b5bf65440f7ecf9b62eb119f1d8d7fe78b0fb02a8",
    "coco/trn/fold2.pkl": "594adc4b8ebecf9b8b559284f334ff3dd3fa3c150317cbc6ce7917ce81a08c03",
    "coco/trn/fold3.pkl": "07b38ccc9e15ebfd1ab6288eeaad3a5f289bbba3419807212169fd44b89cc5c5",
}


@dataclass(frozen=True)
class TrainingSplit:
    """The episodes one epoch is drawn from.

    entries:   (image, class) queries visited once per epoch (PASCAL, folders);
               empty for COCO, whose episodes draw class and query at random.
    classwise: class -> images, the pools queries (COCO) and supports are drawn from.
    class_ids: the training classes.
    size:      episodes per epoch.
    sha256:    identifies the lists (a resumed run must read the same ones).
    """

    benchmark: str
    fold: int | None
    class_ids: tuple[int, ...]
    classwise: dict = field(default_factory=dict)
    entries: tuple = ()
    size: int = 0
    sha256: str = ""
    official: bool = True

    def cam_pairs(self) -> list[tuple[str, int]]:
        """Every (image, class) an episode of this split can use, each once."""
        return list(dict.fromkeys((name, c) for c in self.class_ids for name in self.classwise[c]))


def training_list_name(benchmark: str, fold: int) -> str:
    return f"{benchmark}/trn/fold{fold}.{'txt' if benchmark == 'pascal' else 'pkl'}"


def _training_file(name: str, splits_dir, cache_dir, base_url) -> Path:
    if splits_dir is not None:
        return locate_official(name, splits_dir)
    return fetch_official(name, TRAINING_SHA256[name], cache_dir, base_url)


def load_training_split(benchmark: str, fold: int, splits_dir: os.PathLike | str | None = None,
                        cache_dir: os.PathLike | str | None = None, base_url: str | None = None) -> TrainingSplit:
    """The training episodes for test fold `fold`, from `splits_dir` (HSNet's
    data/splits layout) or HSNet's lists downloaded once (pinned by sha256)."""
    if benchmark not in BENCHMARK_CLASSES:
        raise InputError(f"unknown benchmark {benchmark!r}; expected pascal or coco")
    if fold not in range(NUM_FOLDS):
        raise InputError(f"fold must be 0-{NUM_FOLDS - 1}, got {fold}")
    test_classes = set(fold_classes(benchmark, fold))
    digest, official = hashlib.sha256(), True
    if benchmark == "pascal":
        entries = []
        for other in (f for f in range(NUM_FOLDS) if f != fold):
            name = training_list_name(benchmark, other)
            path = _training_file(name, splits_dir, cache_dir, base_url)
            data = _read(path)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}: not a text file") from None
            entries += parse_pascal(text, other, str(path))
            digest.update(data)
            official &= hashlib.sha256(data).hexdigest() == TRAINING_SHA256[name]
        classwise = _group(entries)
        _check_pools(classwise, sorted(classwise), "the training lists")
        return TrainingSplit(benchmark, fold, tuple(sorted(classwise)), classwise, tuple(entries), len(entries),
                             digest.hexdigest(), official)
    name = training_list_name(benchmark, fold)
    path = _training_file(name, splits_dir, cache_dir, base_url)
    data = _read(path)
    lists = parse_coco(data, str(path))
    class_ids = tuple(c for c in range(len(BENCHMARK_CLASSES[benchmark])) if c not in test_classes)
    if any(lists.get(c) for c in test_classes):
        raise InputError(f"{path}: lists images of test fold {fold}'s classes; is it another fold's training list?")
    classwise = {c: tuple(lists.get(c, ())) for c in class_ids}
    _check_pools(classwise, class_ids, str(path))
    # As the authors: an epoch has one episode per distinct image.
    size = len({n for names in classwise.values() for n in names})
    return TrainingSplit(benchmark, fold, class_ids, classwise, (), size, hashlib.sha256(data).hexdigest(),
                         hashlib.sha256(data).hexdigest() == TRAINING_SHA256[name])


def _support(rng: np.random.RandomState, pool: tuple, query: str) -> str:
    while True:  # the authors redraw a support equal to the query
        name = pool[rng.randint(len(pool))]
        if name != query:
            return name


def training_episodes(split: TrainingSplit, epoch: int, seed: int = 0) -> list[Episode]:
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
