"""The guard over what `imrseg eval` and the caches write and read back (issue 18):
the evaluation state (one run per setting at a time, rows checked, the setting
covering what changes the numbers), the CLIP-CAM and split-list caches (shared by
concurrent runs, never through a link, damaged files computed again), the eval
report's name, and the config.json of a Hub-layout folder."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from imrseg.clip.cache import CamSource, map_bytes, read_map
from imrseg.data import lists
from imrseg.data.lists import fetch_list
from imrseg.errors import CheckpointError, ImrsegError, InputError
from imrseg.evaluation import BenchmarkSettings
from imrseg.evaluation.loop import EvalSettings
from imrseg.evaluation.settings import report_folder
from imrseg.evaluation.state import MAX_PIXELS, RunState
from imrseg.guard import MANIFEST
from imrseg.hub.weights import read_config

SETTING = {"fold": 0}
# Any JSON value, as a crafted file might hold it.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                 max_size=3),
                    max_leaves=6)


# ------------------------------------------------------------------- state
OPEN_TWO = """
import json, sys
from imrseg.errors import ImrsegError
from imrseg.evaluation.state import RunState
out = {}
for name, fold in (("same", 0), ("other", 1)):
    try:
        RunState(sys.argv[1], {"fold": fold}).close()
        out[name] = "opened"
    except ImrsegError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_one_run_per_setting_at_a_time_across_processes(tmp_path):
    """Issue 18, defect 7: a second process opening the same setting's state while
    the first holds it is refused in one line; another setting opens beside it."""

    def other_process() -> dict:
        proc = subprocess.run([sys.executable, "-c", OPEN_TWO, str(tmp_path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    with RunState(tmp_path, SETTING):
        seen = other_process()
    assert seen["other"] == "opened"
    assert "another imrseg run is writing" in seen["same"] and "\n" not in seen["same"]
    assert other_process() == {"same": "opened", "other": "opened"}  # released on close


def test_one_run_per_setting_at_a_time_in_one_process(tmp_path):
    with RunState(tmp_path, SETTING) as first:
        with pytest.raises(ImrsegError, match="another imrseg run is writing"):
            RunState(tmp_path, SETTING)
        with RunState(tmp_path, {"fold": 1}):
            pass
    assert first.path.parent.parent == tmp_path / "eval"


def test_a_link_on_the_way_to_the_state_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "eval").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ImrsegError, match="symbolic link"):
        RunState(tmp_path / "cache", SETTING)
    assert os.listdir(outside) == []


counts = st.lists(st.integers(-2, MAX_PIXELS + 2), min_size=2, max_size=2)
row_values = {"class": st.integers(0, 30) | JSON, "query": st.text(max_size=4) | JSON,
              "supports": st.lists(st.text(max_size=3), max_size=2) | JSON, "inter": counts | JSON,
              "union": counts | JSON}


@st.composite
def state_rows(draw) -> list:
    """Rows of a state file as a crafted or damaged one might hold them: mostly in
    order and plausible, each field at times anything at all."""
    rows = []
    for index in range(draw(st.integers(0, 4))):
        row = {key: draw(value) for key, value in row_values.items() if draw(st.integers(0, 9))}
        if draw(st.integers(0, 9)):
            row["episode"] = index if draw(st.integers(0, 5)) else draw(JSON)
        rows.append(row if draw(st.integers(0, 20)) else draw(JSON))
    return rows


@settings(max_examples=200, deadline=None)
@given(rows=state_rows())
def test_state_rows_read_back_are_checked(rows):
    """Whatever a state file holds, opening it gives checked rows or a one-line error
    naming the file (and the line), never an internal error."""
    with tempfile.TemporaryDirectory() as cache:
        with RunState(cache, SETTING) as state:
            path = state.path
        lines = [json.dumps({"setting": SETTING})] + [json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        try:
            with RunState(cache, SETTING) as state:
                read = state.rows
        except InputError as exc:
            message = str(exc)
            assert message.startswith(f"{path}:") and "\n" not in message
            return
    assert len(read) == len(rows)
    for number, row in enumerate(read):
        assert row.index == number and isinstance(row.class_id, int) and row.class_id >= 0
        assert isinstance(row.query, str) and all(isinstance(s, str) for s in row.supports)
        for i, u in zip(row.inter, row.union):
            assert type(i) is int and type(u) is int and 0 <= i <= u <= MAX_PIXELS


def _split(sha256: str = "a" * 64):
    return SimpleNamespace(sha256=sha256)


def test_the_state_setting_names_everything_that_changes_the_numbers(tmp_path):
    """Each of these makes other numbers, so another state; what does not (batch
    size, episode count: the first N episodes do not depend on how many follow) shares it."""
    (tmp_path / "data").mkdir()
    base = dict(benchmark="pascal", fold=0, shots=1, episodes=4, seed=0, steps=2, method="imr", batch_size=2)

    def key(split=_split(), data_root=tmp_path / "data", weights="w" * 64, clip="RN50:c", mode="official",
            **changes):
        settings = EvalSettings(**{**base, **changes})
        return RunState.key(settings.state_setting(split, data_root, weights, clip, mode))

    variants = [key(), key(fold=1), key(shots=5), key(seed=1), key(steps=3), key(method="cam"),
                key(zero_shot=True), key(original_size=True), key(benchmark="coco"), key(split=_split("b" * 64)),
                key(data_root=tmp_path), key(weights="v" * 64), key(clip="RN50:d"), key(mode="other")]
    assert len(set(variants)) == len(variants)
    assert key(batch_size=7) == key(episodes=1000) == key(data_root=tmp_path / "x" / ".." / "data") == key()
    # The cam method runs no network: its steps and weights are not the numbers'.
    assert key(method="cam", steps=3, weights=None) == key(method="cam")


# -------------------------------------------------------------------- CAMs
class FakeCAM:
    """What CamSource needs of a ClipCAM: a map from the image's mean and the class."""

    template, mode = "a photo of a {c}", "official"

    def __call__(self, images, classnames, targets, size=50):
        return torch.stack([torch.full((size, size), float(np.asarray(im).mean()) / 255 + t / 100)
                            for im, t in zip(images, targets)])


def _image(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_map_reads_back_as_written():
    cam = np.random.default_rng(0).random((50, 50), dtype=np.float32)
    assert np.array_equal(read_map(map_bytes(cam), 50), cam) and read_map(map_bytes(cam), 40) is None


def test_the_cam_cache_never_reads_or_writes_through_a_link(tmp_path):
    image, cache = _image(tmp_path / "a.png"), tmp_path / "cache"
    expected = CamSource(FakeCAM(), ["cat"], "c", cache).get([image], [0], Image.open)
    [file] = cache.rglob("*.npy")
    outside = tmp_path / "outside.npy"
    outside.write_bytes(_npy(np.full((50, 50), 7, np.float32)))
    file.unlink()
    file.symlink_to(outside)
    with pytest.raises(ImrsegError, match="symbolic link inside `cache_dir`") as caught:
        CamSource(FakeCAM(), ["cat"], "c", cache).get([image], [0], Image.open)
    assert "\n" not in str(caught.value)
    assert np.load(outside).max() == 7  # neither read as a map nor written over

    file.unlink()  # a linked folder on the way: the map is not written into it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    file.parent.rmdir()
    file.parent.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ImrsegError, match="symbolic link"):
        CamSource(FakeCAM(), ["cat"], "c", cache).get([image], [0], Image.open)
    assert os.listdir(elsewhere) == []
    file.parent.unlink()
    assert torch.equal(CamSource(FakeCAM(), ["cat"], "c", cache).get([image], [0], Image.open), expected)


@pytest.mark.parametrize("damage", ["npz", "huge", "nan", "float64", "short", "pickle"])
def test_a_damaged_cam_file_is_computed_again(tmp_path, damage):
    image, cache = _image(tmp_path / "a.png"), tmp_path / "cache"
    expected = CamSource(FakeCAM(), ["cat"], "c", cache).get([image], [0], Image.open)
    [file] = cache.rglob("*.npy")
    good = file.read_bytes()
    if damage == "npz":  # a zip where the map was: numpy would open it as an archive
        buffer = io.BytesIO()
        np.savez(buffer, cam=np.zeros((50, 50), np.float32))
        data = buffer.getvalue()
    elif damage == "huge":  # a header asking for far more memory than the file holds
        data = good.replace(b"(50, 50)", b"(99999999999, 50)")
    elif damage == "nan":
        data = _npy(np.full((50, 50), np.nan, np.float32))
    elif damage == "float64":
        data = _npy(np.zeros((50, 50)))
    elif damage == "short":
        data = good[:-4]
    else:
        data = _npy(np.zeros((50, 50), np.float32)).replace(b"'<f4'", b"'|O'")
    file.write_bytes(data)
    again = CamSource(FakeCAM(), ["cat"], "c", cache)
    assert torch.equal(again.get([image], [0], Image.open), expected) and again.computed == 1
    assert file.read_bytes() == good


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cut=st.integers(0, 300), header=st.text(max_size=40))
def test_any_bytes_read_as_a_cam_give_a_map_or_none(data, cut, header):
    """Random bytes, a valid file cut short, and valid magic with any header."""
    good = map_bytes(np.zeros((4, 4), np.float32))
    for candidate in (data, good[:cut] + data, b"\x93NUMPY\x01\x00" + bytes([len(header.encode()) % 256, 0])
                      + header.encode() + data):
        cam = read_map(candidate, 4)
        assert cam is None or (cam.shape == (4, 4) and cam.dtype == np.float32 and np.isfinite(cam).all())


# -------------------------------------------------------------- split lists
def test_the_split_cache_never_reads_through_a_link(tmp_path, monkeypatch):
    content = b"2007_000033__01\n"
    monkeypatch.setitem(lists.OFFICIAL_SHA256, "pascal/val/fold0.txt", hashlib.sha256(content).hexdigest())
    outside = tmp_path / "outside"
    (outside / "val").mkdir(parents=True)
    (outside / "val" / "fold0.txt").write_bytes(content)
    (tmp_path / "cache" / "splits").mkdir(parents=True)
    (tmp_path / "cache" / "splits" / "pascal").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ImrsegError, match="symbolic link inside `cache_dir`"):
        fetch_list("pascal/val/fold0.txt", tmp_path / "cache", "http://127.0.0.1:9")
    assert os.listdir(outside / "val") == ["fold0.txt"]


# ------------------------------------------------------------------- report
@pytest.mark.parametrize("name", [MANIFEST, ".imrseg.lock"])
def test_the_report_never_takes_the_name_of_imrseg_s_own_files(tmp_path, name):
    settings = BenchmarkSettings("pascal", tmp_path, fold=0, report=tmp_path / name)
    with pytest.raises(InputError, match="names a file imrseg keeps for itself"):
        settings.check()
    assert os.listdir(tmp_path) == []


def test_a_report_imrseg_wrote_is_replaced_a_user_s_is_not(tmp_path):
    report = tmp_path / "r.json"
    BenchmarkSettings("pascal", tmp_path, fold=0, report=report).check()
    with report_folder(report) as folder:  # as the evaluation writes its report
        folder.write(report.name, b"{}")
    BenchmarkSettings("pascal", tmp_path, fold=0, report=report).check()
    # Checked, never written: the name is not imrseg's, so a file put there is the user's.
    BenchmarkSettings("pascal", tmp_path, fold=0, report=tmp_path / "mine.json").check()
    (tmp_path / "mine.json").write_text("{}")
    with pytest.raises(ImrsegError, match="mine.json: exists and was not written by imrseg; move it"):
        BenchmarkSettings("pascal", tmp_path, fold=0, report=tmp_path / "mine.json").check()


# -------------------------------------------------------------- config.json
CONFIG_VALUES = {"backbone": st.sampled_from(["resnet50", "vgg16"]) | JSON,
                 "benchmark": st.sampled_from(["pascal", "coco", "folder", None]) | JSON,
                 "fold": st.integers(-1, 4) | JSON, "steps": st.integers(-1, 4) | JSON,
                 "class_names": st.lists(st.text(max_size=4), max_size=3) | JSON}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.fixed_dictionaries({}, optional=CONFIG_VALUES) | JSON)
@example(config={"\n": None}).via("a key that is a line break")
@example(config={"backbone": "vgg16", "x\ry": 1}).via("an unknown key with a carriage return")
@example(config={"backbone": "res\nnet"}).via("a value that is two lines")
@example(config={str(key): key for key in range(500)}).via("hundreds of keys")
def test_a_config_json_gives_checked_values_or_a_one_line_error(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    try:
        read = read_config(path, "w")
    except CheckpointError as exc:
        assert str(exc).startswith("w: ") and "\n" not in str(exc)
        return
    assert read["backbone"] in ("resnet50", "vgg16")
    assert read["benchmark"] is None or isinstance(read["benchmark"], str)
    assert read["fold"] is None or (type(read["fold"]) is int and read["fold"] >= 0)
    assert read["steps"] is None or (type(read["steps"]) is int and read["steps"] >= 1)
    assert read["class_names"] is None or all(isinstance(c, str) for c in read["class_names"])
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in read.values())
