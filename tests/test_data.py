"""Split lists, the safe unpickler, the pinned download, the benchmark layouts and
the episode draw (checked against the authors' rule, written out here)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from imrseg.data import lists, splits
from imrseg.data.datasets import BenchmarkData, ground_truth, nearest_resize
from imrseg.data.episodes import sample_episodes
from imrseg.data.lists import fetch_list, list_name, locate_list
from imrseg.data.safe_pickle import safe_loads
from imrseg.data.splits import Split, load_split
from imrseg.errors import ImrsegError, InputError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "splits"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="no ../shared/reference/splits here")


# ----------------------------------------------------------------- episodes
def _pascal_split(lines: list[str], fold: int = 0) -> Split:
    data = ("\n".join(lines) + "\n").encode()
    return splits.parse_split("pascal", fold, Path(f"fold{fold}.txt"), data)


def _authors_pascal(lines: list[str], shots: int, count: int) -> list[tuple]:
    """The rule of the authors' DatasetPASCAL.sample_episode under test.py's
    fix_randseed(0), written out with numpy's global generator."""
    metadata = [(line.split("__")[0], int(line.split("__")[1]) - 1) for line in lines]
    classwise = {c: [n for n, k in metadata if k == c] for c in range(20)}
    np.random.seed(0)
    out = []
    for idx in range(count):
        query, cls = metadata[idx % len(metadata)]
        supports = []
        while True:
            name = np.random.choice(classwise[cls], 1, replace=False)[0]
            if query != name:
                supports.append(name)
            if len(supports) == shots:
                break
        out.append((cls, query, tuple(supports)))
    return out


PASCAL_LINES = ["a__01", "b__01", "c__02", "d__01", "e__02", "f__03", "g__03", "b__02"]


@pytest.mark.parametrize("shots", [1, 5])
def test_pascal_episodes_follow_the_authors_rule(shots):
    split = _pascal_split(PASCAL_LINES)
    got = [(e.class_id, e.query, e.supports) for e in sample_episodes(split, shots, 20, seed=0)]
    assert got == _authors_pascal(PASCAL_LINES, shots, 20)


def test_pascal_episode_queries_cycle_through_the_list():
    split = _pascal_split(PASCAL_LINES)
    episodes = list(sample_episodes(split, 1, 17))
    assert [e.query for e in episodes] == [PASCAL_LINES[i % 8].split("__")[0] for i in range(17)]
    assert all(e.query not in e.supports for e in episodes)


def test_sampling_leaves_numpy_global_generator_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    list(sample_episodes(_pascal_split(PASCAL_LINES), 5, 10))
    assert np.random.rand() == expected


def test_coco_episodes_follow_the_authors_rule():
    fold = 1
    class_ids = [fold + 4 * k for k in range(20)]
    classwise = {c: [] for c in range(80)}
    for c in class_ids:
        classwise[c] = [f"val2014/COCO_val2014_{c:03d}{i:03d}.jpg" for i in range(2 + c % 5)]
    split = splits.parse_split("coco", fold, Path("fold1.pkl"), pickle.dumps(classwise))

    # The authors' DatasetCOCO.load_frame: class, then query, then supports.
    np.random.seed(0)
    expected = []
    for _ in range(30):
        cls = np.random.choice(class_ids, 1, replace=False)[0]
        query = np.random.choice(classwise[cls], 1, replace=False)[0]
        supports = []
        while True:
            name = np.random.choice(classwise[cls], 1, replace=False)[0]
            if query != name:
                supports.append(name)
            if len(supports) == 2:
                break
        expected.append((cls, query, tuple(supports)))
    got = [(e.class_id, e.query, e.supports) for e in sample_episodes(split, 2, 30)]
    assert got == expected


def test_a_class_with_one_image_is_refused():
    with pytest.raises(InputError, match="fewer than two images"):
        _pascal_split(["a__01", "b__02", "c__02"])


# -------------------------------------------------------------- split files
@needs_reference
@pytest.mark.parametrize("fold", range(4))
def test_real_pascal_splits_parse(fold):
    split = load_split("pascal", fold, REFERENCE)
    assert split.official
    assert tuple(sorted(split.classwise)) == split.class_ids == tuple(5 * fold + i for i in range(5))
    lines = [line for line in (REFERENCE / f"pascal/val/fold{fold}.txt").read_text().splitlines() if line]
    assert len(split.entries) == len(lines)
    name, cls = lines[0].split("__")
    assert split.entries[0] == (name, int(cls) - 1)


@needs_reference
@pytest.mark.parametrize("fold", range(4))
def test_real_coco_splits_parse(fold):
    split = load_split("coco", fold, REFERENCE / "coco" / "val")
    assert split.official
    assert sorted(split.classwise) == list(range(80))
    for c in split.class_ids:
        assert split.classwise[c] and all(n.startswith("val2014/") for n in split.classwise[c])


def test_split_layouts_are_found(tmp_path):
    for folder in (tmp_path / "a" / "pascal" / "val", tmp_path / "b" / "val", tmp_path / "c"):
        folder.mkdir(parents=True)
        (folder / "fold2.txt").write_text("x__11\ny__11\n")
    assert locate_list("pascal/val/fold2.txt", tmp_path / "a") == tmp_path / "a/pascal/val/fold2.txt"
    assert locate_list("pascal/val/fold2.txt", tmp_path / "b") == tmp_path / "b/val/fold2.txt"
    assert load_split("pascal", 2, tmp_path / "c").entries == (("x", 10), ("y", 10))
    with pytest.raises(InputError, match="no pascal/val/fold1.txt"):
        locate_list("pascal/val/fold1.txt", tmp_path / "c")
    # A flat folder holds validation lists only: a training list's fold2.txt is not this one.
    with pytest.raises(InputError, match="no pascal/trn/fold2.txt"):
        locate_list("pascal/trn/fold2.txt", tmp_path / "c")
    with pytest.raises(InputError, match="`splits_dir` is not a folder"):
        load_split("pascal", 2, tmp_path / "nowhere")


def test_lists_are_named_as_hsnets():
    assert list_name("pascal", "val", 0) == "pascal/val/fold0.txt"
    assert list_name("coco", "trn", 3) == "coco/trn/fold3.pkl"
    assert list_name("fss", "test") == "fss/test.txt"


@pytest.mark.parametrize("name, fold, message", [
    ("voc", 0, "unknown `benchmark` 'voc'"),
    ("pascal", 4, "`fold` must be 0-3, got 4"),
])
def test_bad_benchmark_or_fold_names_the_parameter(name, fold, message):
    with pytest.raises(InputError, match=message):
        load_split(name, fold)


@pytest.mark.parametrize("text, message", [
    ("2007_000033 01\n", "expected IMAGE__CLS"),
    ("2007_000033__07\n", "not one of fold 0's classes"),
    ("../../etc/passwd__01\nx__01\n", "not a plain relative name"),
    ("\n\n", "no IMAGE__CLS lines"),
])
def test_bad_pascal_lines_are_named(tmp_path, text, message):
    (tmp_path / "fold0.txt").write_text(text)
    with pytest.raises(InputError, match=message):
        load_split("pascal", 0, tmp_path)


def test_a_list_that_is_not_text_is_named(tmp_path):
    (tmp_path / "fold0.txt").write_bytes(b"\xff\xfe__01\n")
    with pytest.raises(InputError, match="fold0.txt: not a text file"):
        load_split("pascal", 0, tmp_path)


class _Boom:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps({0: ["x.jpg"], 1: _Boom(marker)}, protocol=protocol)
    assert pickle.loads(data) is not None and marker.exists()  # really harmful...
    marker.unlink()
    (tmp_path / "fold0.pkl").write_bytes(data)
    with pytest.raises(InputError, match="refused"):
        load_split("coco", 0, tmp_path)  # ...and refused here
    assert not marker.exists()


def test_pickled_objects_of_any_class_are_refused():
    with pytest.raises(InputError, match="refused global"):
        safe_loads(pickle.dumps({0: [Path("a.jpg")]}), "x.pkl")
    with pytest.raises(InputError, match="not a readable pickle"):
        safe_loads(b"\x80\x04garbage", "x.pkl")
    assert safe_loads(pickle.dumps({3: ["a", "b"], 7: []}), "x.pkl") == {3: ["a", "b"], 7: []}


def test_shared_references_are_refused_at_once(tmp_path):
    """Every class referencing one list is a small file but a huge walk; refused, and fast."""
    import time

    two = ["val2014/a.jpg", "val2014/b.jpg"]
    (tmp_path / "fold0.pkl").write_bytes(pickle.dumps(dict.fromkeys(range(80), two)))
    shared = [f"val2014/{i}.jpg" for i in range(100_000)]
    (tmp_path / "fold1.pkl").write_bytes(pickle.dumps(dict.fromkeys(range(80), shared)))
    nested = ["val2014/a.jpg"]
    for _ in range(60):  # 2**60 names behind 60 lists
        nested = [nested, nested]
    (tmp_path / "fold2.pkl").write_bytes(pickle.dumps({0: nested}))
    for fold in (0, 1, 2):
        started = time.perf_counter()
        with pytest.raises(InputError, match="a list referenced twice; shared references are refused"):
            load_split("coco", fold, tmp_path)
        assert time.perf_counter() - started < 1.0


def test_a_pickle_of_too_many_operations_is_refused_quickly():
    import time

    data = pickle.dumps({0: [f"{i}.jpg" for i in range(600_000)]})
    started = time.perf_counter()
    with pytest.raises(InputError, match="more than 500000 pickle operations"):
        safe_loads(data, "x.pkl")
    assert time.perf_counter() - started < 2.0
    # Names repeated as one string object are fine: the official lists share their strings.
    assert safe_loads(pickle.dumps({0: ["a.jpg"] * 1000}), "x.pkl") == {0: ["a.jpg"] * 1000}


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "expected a dict"),
    ({"person": ["a.jpg"]}, "not a COCO class index"),
    ({0: "a.jpg"}, "list of image names"),
])
def test_coco_pickle_structure_is_checked(tmp_path, obj, message):
    (tmp_path / "fold0.pkl").write_bytes(pickle.dumps(obj))
    with pytest.raises(InputError, match=message):
        load_split("coco", 0, tmp_path)


# ------------------------------------------------------------------ download
@pytest.fixture
def split_server(tmp_path, monkeypatch):
    """A local HTTP server holding pascal/val/fold0.txt: the real file when the
    reference copy is here, else a synthetic one whose checksum is pinned instead."""
    root = tmp_path / "served"
    target = root / "pascal" / "val" / "fold0.txt"
    target.parent.mkdir(parents=True)
    real = REFERENCE / "pascal" / "val" / "fold0.txt"
    if real.is_file():
        target.write_bytes(real.read_bytes())
    else:
        target.write_bytes(b"2007_000033__01\n2007_000042__01\n")
        monkeypatch.setitem(lists.OFFICIAL_SHA256, "pascal/val/fold0.txt",
                            hashlib.sha256(target.read_bytes()).hexdigest())
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", target
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def do_GET(self):
        type(self).requests += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def test_download_is_checked_and_cached(split_server, tmp_path):
    url, served = split_server
    cache = tmp_path / "cache"
    before = _QuietHandler.requests
    path = fetch_list("pascal/val/fold0.txt", cache, url)
    assert path == cache / "splits" / "pascal" / "val" / "fold0.txt"
    assert path.read_bytes() == served.read_bytes()
    assert fetch_list("pascal/val/fold0.txt", cache, url) == path  # from the cache
    assert _QuietHandler.requests == before + 1
    split = load_split("pascal", 0, cache_dir=cache, base_url=url)
    assert split.official and split.path == path

    path.write_bytes(b"tampered__01\n")  # a damaged cache copy is fetched again
    assert fetch_list("pascal/val/fold0.txt", cache, url).read_bytes() == served.read_bytes()


def test_download_with_wrong_checksum_is_refused(split_server, tmp_path):
    url, served = split_server
    served.write_bytes(served.read_bytes() + b"2099_000000__01\n")
    with pytest.raises(ImrsegError, match="refusing it"):
        fetch_list("pascal/val/fold0.txt", tmp_path / "cache", url)
    assert not (tmp_path / "cache" / "splits" / "pascal" / "val" / "fold0.txt").exists()


def test_download_failure_is_one_line(tmp_path):
    with pytest.raises(ImrsegError, match="download failed.*`splits_dir`") as exc:
        fetch_list("coco/val/fold3.pkl", tmp_path, "http://127.0.0.1:9")
    assert "\n" not in str(exc.value)


def test_pinned_urls_are_hsnets_commit():
    assert lists.SPLITS_BASE_URL == ("https://raw.githubusercontent.com/juhongm999/hsnet/"
                                      "6b1bc12b3ff9f3950f49c55ab6f089e8d9e0d191/data/splits")
    assert sorted(lists.OFFICIAL_SHA256) == sorted(
        [f"{b}/{p}/fold{f}.{e}" for b, e in (("pascal", "txt"), ("coco", "pkl")) for p in ("val", "trn")
         for f in range(4)] + [f"fss/{p}.txt" for p in ("trn", "val", "test")])


# ---------------------------------------------------------- images and masks
def test_layout_paths(tmp_path):
    voc = BenchmarkData("pascal", tmp_path)
    assert voc.image_path("2007_000033") == tmp_path / "VOC2012/JPEGImages/2007_000033.jpg"
    assert voc.mask_path("2007_000033") == tmp_path / "VOC2012/SegmentationClassAug/2007_000033.png"
    coco = BenchmarkData("coco", tmp_path)
    name = "val2014/COCO_val2014_000000000139.jpg"
    assert coco.image_path(name) == tmp_path / "COCO2014" / name
    assert coco.mask_path(name) == tmp_path / "COCO2014/annotations/val2014/COCO_val2014_000000000139.png"
    with pytest.raises(InputError, match="VOC2012/JPEGImages: no such folder"):
        BenchmarkData.open("pascal", tmp_path)


def test_missing_image_is_one_line(tmp_path):
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(InputError, match="no such file"):
        BenchmarkData("pascal", tmp_path).read_image("nope")


def test_a_decompression_bomb_is_one_line(tmp_path):
    """A 10^9-pixel PNG header (a few bytes): refused as the unreadable files are."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder = tmp_path / "VOC2012" / "JPEGImages"
    folder.mkdir(parents=True)
    (folder / "huge.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40_000, 25_000,
                                                                                      8, 2, 0, 0, 0))
                                      + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="huge.jpg: refused: Image size \\(1000000000 pixels\\) exceeds limit"):
        BenchmarkData("pascal", tmp_path).read_image("huge")


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), oh=st.integers(1, 130), ow=st.integers(1, 130))
def test_nearest_resize_is_torchs(h, w, oh, ow):
    a = np.arange(h * w, dtype=np.int64).reshape(h, w)
    # float32, as the authors resize their masks (`.float()`); for float64 input torch
    # computes the source index in double and can land one pixel off (e.g. 1x30 -> 23x106).
    expected = F.interpolate(torch.from_numpy(a)[None, None].float(), (oh, ow), mode="nearest")[0, 0]
    assert (nearest_resize(a, (oh, ow)) == expected.numpy().astype(np.int64)).all()


def test_nearest_resize_matches_torch_at_voc_sizes():
    rng = np.random.default_rng(0)
    for h, w in ((375, 500), (500, 333), (281, 500), (500, 375), (480, 640)):
        a = rng.integers(0, 256, (h, w)).astype(np.uint8)
        expected = F.interpolate(torch.from_numpy(a)[None, None].float(), (400, 400), mode="nearest")[0, 0]
        assert (nearest_resize(a, (400, 400)) == expected.numpy().astype(np.uint8)).all()


def test_ground_truth_resizes_the_class_map_before_splitting_it():
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 1:4] = 3
    mask[0, :] = 255
    mask[3, 5] = 7
    fg, ignore = ground_truth(mask, "pascal", 2, (8, 12))
    raw = nearest_resize(mask, (8, 12))
    assert (fg == (raw == 3)).all() and (ignore == (raw == 255)).all()
    assert fg.sum() == 6 * 4 and ignore.sum() == 2 * 12
    fg, ignore = ground_truth(mask, "coco", 2, None)  # COCO: no ignore label
    assert fg.sum() == 6 and not ignore.any()
