"""HSNet's list files, found and read one way for every use.

The benchmarks' episodes come from the lists in HSNet's `data/splits` folder:
`<benchmark>/val/fold{i}` (test episodes), `<benchmark>/trn/fold{i}` (training
episodes) and `fss/<part>.txt` (FSS-1000's classes). IMR-HSNet reuses them
unchanged. A list comes from a user's folder (`splits_dir`), or is downloaded
once from HSNet's repository at a pinned commit, checked against its pinned
sha256, and kept in the cache. `splits.py` parses what is read here.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from ..errors import InputError, NetworkError
from ..paths import cache_root

SPLITS_COMMIT = "6b1bc12b3ff9f3950f49c55ab6f089e8d9e0d191"
SPLITS_BASE_URL = f"https://raw.githubusercontent.com/juhongm999/hsnet/{SPLITS_COMMIT}/data/splits"
# Every official list, by its path under HSNet's data/splits at SPLITS_COMMIT.
OFFICIAL_SHA256 = {
    "pascal/val/fold0.txt": "748e2f4732ac502cb3aa1f3768936b394bd7ba4e611ac5bf959291a268e249df",
    "pascal/val/fold1.txt": "afce1929e4dacbc13c07f9a26d4ce7738d415e1b18443fe173e58303836f5c14",
    "pascal/val/fold2.txt": "50b1f5218e8f882ca65d85da5be230b978a70067e9b3e0e9fca1528f546bd7fb",
    "pascal/val/fold3.txt": "c3825d7c52d1608d4c62c5b85d6ef3f74cf5898032bc068a94c971df17bdf71a",
    "coco/val/fold0.pkl": "96002389be83b4730d13b814398f54eb2baf5c3283598ec2288d60624d6ef9c3",
    "coco/val/fold1.pkl": "a34deecdf2858fc436f5ea4d5a2d46b6674ce09f7ebce41c34b694116381fa56",
    "coco/val/fold2.pkl": "0f275c5e9bf538f6ef8a95054f6daf2519b53785c4ab7fd07e633dda57dac1e5",
    "coco/val/fold3.pkl": "927597bd78036a460abdab243330667af6ceffdb483bc3331ae55d148f00c449",
    "pascal/trn/fold0.txt": "40fded8be6afbc4b70953277f2a178af8055cddd4e73fb4646b7bf19704b9da2",
    "pascal/trn/fold1.txt": "558167c3c6fea0cda1bb7c7a275e66d5de7bc13cbc97e00c5872ac84d5f0954e",
    "pascal/trn/fold2.txt": "d07e35f4a4ae95774c619bafb57d65d682dbd5b9f33c7f71a4f5cef8e3f99609",
    "pascal/trn/fold3.txt": "ffe09100c0c4d9c19d074a33b0f29fe5a89a730579ba39a9f9e908186298ac17",
    "coco/trn/fold0.pkl": "5a94e113d8c150a7e20723360dd9779eaa1305ccddc28dff4501e29ed3df5c45",
    "coco/trn/fold1.pkl": "69629cdd84fd57b3bb4e281b5bf65440f7ecf9b62eb119f1d8d7fe78b0fb02a8",
    "coco/trn/fold2.pkl": "594adc4b8ebecf9b8b559284f334ff3dd3fa3c150317cbc6ce7917ce81a08c03",
    "coco/trn/fold3.pkl": "07b38ccc9e15ebfd1ab6288eeaad3a5f289bbba3419807212169fd44b89cc5c5",
    "fss/trn.txt": "815bce03f2502719ba3bd9c1f79111b74ec8ab63e6111830ff7312de49b1cf17",
    "fss/val.txt": "9cac02c58602f2789b4e6393200e450e3ba1edae6673d6a87ae2063d0c547aee",
    "fss/test.txt": "26f1b9e9dd0c4a58c01db306aeb5bccb5de361d544ec1b15f219efc4b74c0bf1",
}
# The largest official file is 1.3 MB; the cap only stops a runaway response.
MAX_LIST_BYTES = 64 << 20
DOWNLOAD_TIMEOUT_S = 60


def list_name(benchmark: str, part: str, fold: int | None = None) -> str:
    """A list's path under HSNet's `data/splits`: fold `fold`'s `val` (test episodes)
    or `trn` (training episodes) list, e.g. `pascal/val/fold0.txt`, `coco/trn/fold1.pkl`;
    without a fold, a benchmark's class list of `part`, e.g. `fss/test.txt`."""
    if fold is None:
        return f"{benchmark}/{part}.txt"
    return f"{benchmark}/{part}/fold{fold}.{'txt' if benchmark == 'pascal' else 'pkl'}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_official(name: str, data: bytes) -> bool:
    """Whether `data` is byte for byte HSNet's list `name`, so its episodes are the authors'."""
    return OFFICIAL_SHA256.get(name) == sha256_bytes(data)


def locate_list(name: str, splits_dir: os.PathLike | str) -> Path:
    """HSNet's list `name` in a user's folder: HSNet's `data/splits` itself, its
    `<benchmark>` subfolder, or, for a `val` list, a flat folder of `fold{i}` files."""
    name, root = PurePosixPath(name), Path(splits_dir)
    candidates = [root / name, root / name.relative_to(name.parts[0])]
    if name.parent.name == "val":
        candidates.append(root / name.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not root.is_dir():
        raise InputError(f"{root}: `splits_dir` is not a folder")
    raise InputError(f"{root}: no {name} (looked for {', '.join(str(c) for c in candidates)})")


def read_list(path: Path) -> bytes:
    """The bytes of a list file, refused past MAX_LIST_BYTES."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_LIST_BYTES:
        raise InputError(f"{path}: larger than {MAX_LIST_BYTES >> 20} MiB, not a split list")
    return data


def list_text(data: bytes, origin: str) -> str:
    """A text list's lines as one string, or an InputError naming `origin`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{origin}: not a text file") from None


def fetch_list(name: str, cache_dir: os.PathLike | str | None = None, base_url: str | None = None) -> Path:
    """The official list `name` in the cache, downloaded on first use and checked
    against its pinned sha256. A cached copy that no longer matches is downloaded
    again. The cache is shared by concurrent runs, so it is not locked: the file is
    written atomically, and no link below `cache_dir` is followed (`guard.OwnedFolder`)."""
    from ..durable import atomic_write_bytes
    from ..guard import OwnedFolder

    expected = OFFICIAL_SHA256[name]
    with OwnedFolder(cache_dir or cache_root(), parameter="cache_dir", lock=False) as cache:
        cached = f"splits/{name}"
        target = cache.path(cached)
        if cache.is_file(cached) and sha256_bytes(read_list(target)) == expected:
            return target
        url = f"{(base_url or SPLITS_BASE_URL).rstrip('/')}/{name}"
        hint = "pass `splits_dir`: a folder holding a copy of HSNet's data/splits"
        request = urllib.request.Request(url, headers={"User-Agent": "imrseg"})
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read(MAX_LIST_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise NetworkError(f"{url}: download failed ({reason}); {hint}") from None
        got = sha256_bytes(data)
        if got != expected:
            raise NetworkError(f"{url}: downloaded file has sha256 {got}, expected {expected}; "
                               f"refusing it; {hint}")
        atomic_write_bytes(cache.path(cached), data)
    return target


def find_list(name: str, splits_dir: os.PathLike | str | None = None, cache_dir: os.PathLike | str | None = None,
              base_url: str | None = None) -> Path:
    """HSNet's list `name`: from `splits_dir` when given, else the pinned download."""
    if splits_dir is not None:
        return locate_list(name, splits_dir)
    return fetch_list(name, cache_dir, base_url)
