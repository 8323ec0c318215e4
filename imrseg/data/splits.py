"""The episodes' lists parsed into one `Split`, for testing and for training.

`pascal/<part>/fold{i}.txt` has one episode query per line, `IMAGE__CLS` with CLS
the 1-based PASCAL class; `coco/<part>/fold{i}.pkl` is a pickled dict, 0-based
COCO class -> image paths relative to the COCO root (lists.py finds and reads
the files). Testing on fold i reads the `val` list of fold i. Training for test
fold i reads, as the authors' training loaders: for PASCAL-5i the `trn` lists of
the other three folds, in fold order; for COCO-20i `coco/trn/fold{i}.pkl`, whose
test-fold classes are empty. FSS-1000 and a folder of one's own give a `Split`
too (folder.py), so the episode draws read every source alike.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .classes import BENCHMARK_CLASSES, NUM_FOLDS, fold_classes
from .lists import find_list, is_official, list_name, list_text, read_list, sha256_bytes
from .safe_pickle import safe_loads


@dataclass(frozen=True)
class Split:
    """The episodes a test or a training run draws from.

    benchmark:   `pascal`, `coco`, `fss` or `folder`.
    fold:        the test fold; None for FSS-1000 and folders.
    path:        the list file read; the folder, for several lists or a folder's classes.
    sha256:      identifies the lists (a resumed run must read the same ones).
    official:    whether the lists are byte for byte HSNet's, so the episodes are the authors'.
    class_ids:   the classes episodes are drawn for (a test fold's, or the training classes).
    class_names: the name of every class index of the benchmark, as the meter reports them.
    entries:     (image, class) queries in list order (PASCAL, FSS-1000, folders);
                 empty for COCO, whose episodes draw their class and query at random.
    classwise:   class -> images in list order, the pools supports (and COCO's queries) are drawn from.
    """

    benchmark: str
    fold: int | None
    path: Path
    sha256: str
    official: bool
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    entries: tuple = ()
    classwise: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Episodes per training epoch: every entry once; without entries (COCO), as the
        authors, one per distinct image of the classes."""
        if self.entries:
            return len(self.entries)
        return len({name for c in self.class_ids for name in self.classwise.get(c, ())})

    def cam_pairs(self) -> list[tuple[str, int]]:
        """Every (image, class) an episode of this split can use, each once."""
        return list(dict.fromkeys((name, c) for c in self.class_ids for name in self.classwise[c]))


def _check_name(name: str, origin: str) -> str:
    # String tests rather than PurePosixPath: a COCO list has tens of thousands of names.
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or ".." in name.split("/"):
        raise InputError(f"{origin}: image name {name!r} is not a plain relative name")
    return name


def parse_pascal(text: str, fold: int, origin: str) -> list[tuple[str, int]]:
    """`IMAGE__CLS` lines of fold `fold`'s classes -> [(image, 0-based class)]; blank lines are skipped."""
    classes = set(fold_classes("pascal", fold))
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        name, sep, cls = line.rpartition("__")
        if not sep or not cls.isdigit():
            raise InputError(f"{origin}:{number}: expected IMAGE__CLS (e.g. 2007_000033__01), got {line!r}")
        class_id = int(cls) - 1
        if class_id not in classes:
            raise InputError(f"{origin}:{number}: class {cls} is not one of fold {fold}'s classes "
                             f"{min(classes) + 1}-{max(classes) + 1} (is this another fold's file?)")
        entries.append((_check_name(name, f"{origin}:{number}"), class_id))
    if not entries:
        raise InputError(f"{origin}: no IMAGE__CLS lines")
    return entries


def parse_coco(data: bytes, origin: str) -> dict[int, list[str]]:
    """A pickled {class: [image, ...]} of plain data -> the same dict, checked."""
    obj = safe_loads(data, origin)
    if not isinstance(obj, dict):
        raise InputError(f"{origin}: holds a {type(obj).__name__}, expected a dict class -> image list")
    out = {}
    for key, names in obj.items():
        if type(key) is not int or not 0 <= key < len(BENCHMARK_CLASSES["coco"]):
            raise InputError(f"{origin}: key {key!r} is not a COCO class index 0-79")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{origin}: class {key} does not map to a list of image names")
        out[key] = [_check_name(n, f"{origin}: class {key}") for n in names]
    return out


def _group(entries: list[tuple[str, int]]) -> dict[int, tuple[str, ...]]:
    classwise: dict[int, list[str]] = {}
    for name, class_id in entries:
        classwise.setdefault(class_id, []).append(name)
    return {c: tuple(v) for c, v in classwise.items()}


def _check_pools(classwise: dict, needed, origin: str) -> None:
    # The authors redraw a support until it differs from the query, which never
    # ends for a class with a single image.
    for class_id in needed:
        if len(set(classwise.get(class_id, ()))) < 2:
            raise InputError(f"{origin}: class {class_id + 1} has fewer than two images, "
                             "so no support different from the query can be drawn")


def _check_fold(benchmark: str, fold: int) -> None:
    if benchmark not in BENCHMARK_CLASSES:
        raise InputError(f"unknown `benchmark` {benchmark!r}; expected pascal or coco")
    if fold not in range(NUM_FOLDS):
        raise InputError(f"`fold` must be 0-{NUM_FOLDS - 1}, got {fold}")


def parse_split(benchmark: str, fold: int, path: Path, data: bytes) -> Split:
    """Test fold `fold`'s episodes from its `val` list: `data`, the bytes of the file `path`."""
    origin = str(path)
    if benchmark == "pascal":
        entries = parse_pascal(list_text(data, origin), fold, origin)
        classwise = _group(entries)
        _check_pools(classwise, sorted(classwise), origin)
    else:
        entries = []
        classwise = {c: tuple(v) for c, v in parse_coco(data, origin).items()}
        _check_pools(classwise, fold_classes("coco", fold), origin)
    return Split(benchmark, fold, path, sha256_bytes(data), is_official(list_name(benchmark, "val", fold), data),
                 tuple(fold_classes(benchmark, fold)), BENCHMARK_CLASSES[benchmark], tuple(entries), classwise)


def load_split(benchmark: str, fold: int, splits_dir: os.PathLike | str | None = None,
               cache_dir: os.PathLike | str | None = None, base_url: str | None = None) -> Split:
    """Test fold `fold`'s episodes, from `splits_dir` (HSNet's data/splits layout, or a
    flat folder of `fold{i}` files) or HSNet's list downloaded once (pinned by sha256)."""
    _check_fold(benchmark, fold)
    path = find_list(list_name(benchmark, "val", fold), splits_dir, cache_dir, base_url)
    return parse_split(benchmark, fold, path, read_list(path))


def load_training_split(benchmark: str, fold: int, splits_dir: os.PathLike | str | None = None,
                        cache_dir: os.PathLike | str | None = None, base_url: str | None = None) -> Split:
    """The training episodes for test fold `fold`, from `splits_dir` (HSNet's
    data/splits layout) or HSNet's lists downloaded once (pinned by sha256)."""
    _check_fold(benchmark, fold)
    names = BENCHMARK_CLASSES[benchmark]
    test_classes = set(fold_classes(benchmark, fold))
    if benchmark == "pascal":
        entries, digest, official = [], hashlib.sha256(), True
        for other in (f for f in range(NUM_FOLDS) if f != fold):
            name = list_name(benchmark, "trn", other)
            path = find_list(name, splits_dir, cache_dir, base_url)
            data = read_list(path)
            entries += parse_pascal(list_text(data, str(path)), other, str(path))
            digest.update(data)
            official &= is_official(name, data)
        classwise = _group(entries)
        _check_pools(classwise, sorted(classwise), "the training lists")
        return Split(benchmark, fold, path.parent, digest.hexdigest(), official, tuple(sorted(classwise)), names,
                     tuple(entries), classwise)
    name = list_name(benchmark, "trn", fold)
    path = find_list(name, splits_dir, cache_dir, base_url)
    data = read_list(path)
    lists = parse_coco(data, str(path))
    if any(lists.get(c) for c in test_classes):
        raise InputError(f"{path}: lists images of test fold {fold}'s classes; is it another fold's training list?")
    class_ids = tuple(c for c in range(len(names)) if c not in test_classes)
    classwise = {c: tuple(lists.get(c, ())) for c in class_ids}
    _check_pools(classwise, class_ids, str(path))
    return Split(benchmark, fold, path, sha256_bytes(data), is_official(name, data), class_ids, names, (), classwise)
