"""The benchmarks' validation split lists, in HSNet's format.

`pascal/val/fold{i}.txt` has one episode query per line, `IMAGE__CLS` with CLS the
1-based PASCAL class; `coco/val/fold{i}.pkl` is a pickled dict, 0-based COCO
class -> image paths relative to the COCO root. IMR-HSNet reuses HSNet's files
unchanged. They come from a user's folder (`--splits`), or are downloaded once
from HSNet's repository at a pinned commit, checked against pinned sha256
values, and kept in the cache.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..paths import cache_root
from .classes import BENCHMARK_CLASSES, NUM_FOLDS, fold_classes
from ..errors import InputError, NetworkError
from .safe_pickle import safe_loads

SPLITS_COMMIT = "6b1bc12b3ff9f3950f49c55ab6f089e8d9e0d191"
SPLITS_BASE_URL = f"https://raw.githubusercontent.com/juhongm999/hsnet/{SPLITS_COMMIT}/data/splits"
SPLIT_SHA256 = {
    "pascal/val/fold0.txt": "748e2f4732ac502cb3aa1f3768936b394bd7ba4e611ac5bf959291a268e249df",
    "pascal/val/fold1.txt": "afce1929e4dacbc13c07f9a26d4ce7738d415e1b18443fe173e58303836f5c14",
    "pascal/val/fold2.txt": "50b1f5218e8f882ca65d85da5be230b978a70067e9b3e0e9fca1528f546bd7fb",
    "pascal/val/fold3.txt": "c3825d7c52d1608d4c62c5b85d6ef3f74cf5898032bc068a94c971df17bdf71a",
    "coco/val/fold0.pkl": "96002389be83b4730d13b814398f54eb2baf5c3283598ec2288d60624d6ef9c3",
    "coco/val/fold1.pkl": "a34deecdf2858fc436f5ea4d5a2d46b6674ce09f7ebce41c34b694116381fa56",
    "coco/val/fold2.pkl": "0f275c5e9bf538f6ef8a95054f6daf2519b53785c4ab7fd07e633dda57dac1e5",
    "coco/val/fold3.pkl": "927597bd78036a460abdab243330667af6ceffdb483bc3331ae55d148f00c449",
}
# The largest official file is 1.3 MB; the cap only stops a runaway response.
MAX_SPLIT_BYTES = 64 << 20
DOWNLOAD_TIMEOUT_S = 60


def split_name(benchmark: str, fold: int) -> str:
    """The split's path inside HSNet's `data/splits` folder, e.g. `pascal/val/fold0.txt`."""
    if benchmark not in BENCHMARK_CLASSES:
        raise InputError(f"unknown benchmark {benchmark!r}; expected pascal or coco")
    return f"{benchmark}/val/fold{fold}.{'txt' if benchmark == 'pascal' else 'pkl'}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Split:
    """One fold's validation list.

    entries:   PASCAL's (image, 0-based class) lines in file order (the episode queries);
               empty for COCO, whose episodes draw their class and query at random.
    classwise: 0-based class -> images, in file order (the pools supports are drawn from).
    """

    benchmark: str
    fold: int
    path: Path
    sha256: str
    entries: tuple = ()
    classwise: dict = field(default_factory=dict)

    @property
    def class_ids(self) -> list[int]:
        return fold_classes(self.benchmark, self.fold)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The name of every class index of the benchmark, as the meter reports them."""
        return BENCHMARK_CLASSES[self.benchmark]

    @property
    def official(self) -> bool:
        """Whether the file is byte for byte HSNet's, so episodes are the authors'."""
        return SPLIT_SHA256.get(split_name(self.benchmark, self.fold)) == self.sha256


def _check_name(name: str, origin: str) -> str:
    # String tests rather than PurePosixPath: a COCO list has tens of thousands of names.
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or ".." in name.split("/"):
        raise InputError(f"{origin}: image name {name!r} is not a plain relative name")
    return name


def parse_pascal(text: str, fold: int, origin: str) -> list[tuple[str, int]]:
    """`IMAGE__CLS` lines -> [(image, 0-based class)]; blank lines are skipped."""
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


def parse_split(benchmark: str, fold: int, path: Path, data: bytes) -> Split:
    origin = str(path)
    if benchmark == "pascal":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{origin}: not a text file") from None
        entries = parse_pascal(text, fold, origin)
        classwise = _group(entries)
        _check_pools(classwise, sorted(classwise), origin)
        return Split("pascal", fold, path, sha256_bytes(data), tuple(entries), classwise)
    classwise = {c: tuple(v) for c, v in parse_coco(data, origin).items()}
    _check_pools(classwise, fold_classes("coco", fold), origin)
    return Split("coco", fold, path, sha256_bytes(data), (), classwise)


def locate_split(benchmark: str, fold: int, splits_dir: os.PathLike | str) -> Path:
    """The fold's file in a user's folder: HSNet's `data/splits` itself, its
    `<benchmark>` or `<benchmark>/val` subfolder, or a flat folder of `fold{i}` files."""
    name = PurePosixPath(split_name(benchmark, fold))
    root = Path(splits_dir)
    candidates = [root / name, root / name.relative_to(benchmark), root / name.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not root.is_dir():
        raise InputError(f"{root}: --splits is not a folder")
    raise InputError(f"{root}: no {name.name} for {benchmark} fold {fold} "
                     f"(looked for {', '.join(str(c) for c in candidates)})")


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPLIT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_SPLIT_BYTES:
        raise InputError(f"{path}: larger than {MAX_SPLIT_BYTES >> 20} MiB, not a split list")
    return data


def download_split(benchmark: str, fold: int, cache_dir: os.PathLike | str | None = None,
                   base_url: str | None = None) -> Path:
    """The official file in the cache, downloaded and checked on first use.

    A cached copy whose sha256 no longer matches is downloaded again."""
    name = split_name(benchmark, fold)
    return fetch_official(name, SPLIT_SHA256[name], cache_dir, base_url)


def fetch_official(name: str, expected: str, cache_dir: os.PathLike | str | None = None,
                   base_url: str | None = None) -> Path:
    """HSNet's file `name` (a path under its data/splits, e.g. `pascal/trn/fold1.txt`)
    in the cache, downloaded on first use and checked against the sha256 `expected`."""
    from ..durable import atomic_write_bytes

    target = Path(cache_dir or cache_root()) / "splits" / name
    if target.is_file() and sha256_bytes(_read(target)) == expected:
        return target
    url = f"{(base_url or SPLITS_BASE_URL).rstrip('/')}/{name}"
    hint = "pass --splits DIR with a copy of HSNet's data/splits folder"
    request = urllib.request.Request(url, headers={"User-Agent": "imrseg"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(MAX_SPLIT_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise NetworkError(f"{url}: download failed ({reason}); {hint}") from None
    got = sha256_bytes(data)
    if got != expected:
        raise NetworkError(f"{url}: downloaded file has sha256 {got}, expected {expected}; "
                          f"refusing it; {hint}")
    atomic_write_bytes(target, data)
    return target


def locate_official(name: str, splits_dir: os.PathLike | str) -> Path:
    """HSNet's file `name` in a user's folder: HSNet's `data/splits` itself or its
    `<benchmark>` subfolder (the training and FSS-1000 lists)."""
    name, root = PurePosixPath(name), Path(splits_dir)
    candidates = [root / name, root / name.relative_to(name.parts[0])]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not root.is_dir():
        raise InputError(f"{root}: --splits is not a folder")
    raise InputError(f"{root}: no {name} (looked for {', '.join(str(c) for c in candidates)})")


def load_split(benchmark: str, fold: int, splits_dir: os.PathLike | str | None = None,
               cache_dir: os.PathLike | str | None = None, base_url: str | None = None) -> Split:
    """The fold's split from `splits_dir`, else the pinned download."""
    if fold not in range(NUM_FOLDS):
        raise InputError(f"fold must be 0-{NUM_FOLDS - 1}, got {fold}")
    if splits_dir is not None:
        path = locate_split(benchmark, fold, splits_dir)
    else:
        path = download_split(benchmark, fold, cache_dir, base_url)
    return parse_split(benchmark, fold, path, _read(path))
