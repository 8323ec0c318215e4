"""`imrseg eval` end to end on a tiny synthetic VOC-layout data set, with recipe
weights from local files: report, determinism, CAM cache, resuming, errors; and
`run_benchmark`, the library call it makes, giving the same numbers.
No network: the split list, the IMR-HSNet and the CLIP weights are all local."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imrseg.cli import main
from imrseg.errors import ImrsegError
from imrseg.evaluation import BenchmarkProgress, BenchmarkSettings, run_benchmark

pytestmark = pytest.mark.slow

SIZE = (64, 48)


def _make_voc(root: Path, classes: dict[int, int]) -> list[str]:
    """`classes`: 1-based class -> number of images; each image has one square
    object of its class with a 255 boundary ring, on a noisy background."""
    (root / "VOC2012" / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "VOC2012" / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    lines = []
    for cls, count in classes.items():
        for i in range(count):
            name = f"2008_{cls:02d}{i:04d}"
            rng = np.random.default_rng(100 * cls + i)
            image = rng.integers(0, 100, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
            mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
            top, left = int(rng.integers(2, 20)), int(rng.integers(2, 36))
            mask[top - 1:top + 23, left - 1:left + 23] = 255
            mask[top:top + 22, left:left + 22] = cls
            image[mask == cls] = rng.integers(120, 255, 3, dtype=np.uint8)
            Image.fromarray(image).save(root / "VOC2012" / "JPEGImages" / f"{name}.jpg")
            Image.fromarray(mask).save(root / "VOC2012" / "SegmentationClassAug" / f"{name}.png")
            lines.append(f"{name}__{cls:02d}")
    return lines


@pytest.fixture(scope="module")
def voc(tmp_path_factory, recipe_net, recipe_clip):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    # Fold 0's two classes get three images each; the other folds one class, two images.
    per_fold = {f: _make_voc(data, {1: 3, 2: 3} if f == 0 else {5 * f + 1: 2}) for f in range(4)}
    splits = root / "splits" / "pascal" / "val"
    splits.mkdir(parents=True)
    for fold, lines in per_fold.items():
        (splits / f"fold{fold}.txt").write_text("\n".join(lines) + "\n")
    weights, clip = root / "best_model.pt", root / "clip_rn50.pt"
    torch.save(recipe_net.state_dict(), weights)
    torch.save(recipe_clip.state_dict(), clip)
    return SimpleNamespace(data=data, splits=root / "splits", weights=weights, clip=clip)


@pytest.fixture
def cli(monkeypatch, capsys, voc):
    """`imrseg eval ...` as the console script runs it, with the cache in `cache`."""

    def run(*args, cache: Path, episodes: int = 2):
        monkeypatch.setenv("IMRSEG_CACHE", str(cache))
        argv = ["imrseg", "eval", "--benchmark", "pascal", "--episodes", str(episodes), "--data-root", voc.data,
                "--splits", voc.splits, "--clip-weights", voc.clip, "--device", "cpu", *args]
        monkeypatch.setattr(sys, "argv", [str(a) for a in argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        out, err = capsys.readouterr()
        return SimpleNamespace(code=exit_.value.code, out=out, err=err)

    return run


def _imr(voc, tmp_path, name, cache, cli, episodes=2):
    report = tmp_path / f"{name}.json"
    result = cli("--fold", "0", "--weights", voc.weights, "--steps", "1", "--batch-size", "2",
                 "--report", report, cache=cache, episodes=episodes)
    assert result.code == 0, result.err
    return json.loads(report.read_text()), result


def test_eval_writes_report_is_deterministic_and_resumes(cli, voc, tmp_path):
    first, result = _imr(voc, tmp_path, "first", tmp_path / "cache-a", cli)
    assert "mIoU" in result.out and "aeroplane" in result.out and "FB-IoU" in result.out
    assert first["benchmark"] == "pascal" and first["fold"] == 0 and first["shots"] == 1
    assert first["steps"] == 1 and first["episodes"] == 2 and first["seed"] == 0
    assert first["weights"]["name"] == str(voc.weights)
    assert first["weights"]["sha256"] == hashlib.sha256(voc.weights.read_bytes()).hexdigest()
    assert set(first["per_class"]) == {"aeroplane", "bicycle", "bird", "boat", "bottle"}
    # Two episodes, both drawing aeroplane: the others are 0 in the mIoU, and said to be unevaluated.
    assert first["unevaluated_classes"] == ["bicycle", "bird", "boat", "bottle"]
    assert "not evaluated: bicycle, bird, boat, bottle" in " ".join(result.out.split())
    assert 0 <= first["miou"] <= 100 and 0 <= first["fb_iou"] <= 100 and first["seconds"] > 0
    assert first["paper_miou"] is None  # the paper's figure is for 2 steps
    [state] = (tmp_path / "cache-a" / "eval").glob("*/state.jsonl")
    rows = [json.loads(line) for line in state.read_text().splitlines()[1:]]
    assert [r["episode"] for r in rows] == [0, 1]
    assert first["cams_computed"] == len({n for r in rows for n in [r["query"], *r["supports"]]})

    # A second run from scratch (another cache) gives the same numbers.
    second, _ = _imr(voc, tmp_path, "second", tmp_path / "cache-b", cli)
    numbers = ("miou", "fb_iou", "per_class")
    assert {k: second[k] for k in numbers} == {k: first[k] for k in numbers}

    # Interrupted after episode 0: the state keeps the header and one row, and a
    # rerun continues from there, with the CAMs from the disk cache.
    [state] = (tmp_path / "cache-b" / "eval").glob("*/state.jsonl")
    lines = state.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    state.write_text("".join(lines[:2]) + lines[2][:10])  # a torn last line too
    resumed, result = _imr(voc, tmp_path, "resumed", tmp_path / "cache-b", cli)
    assert "1 of 2 episodes taken from the saved state" in result.err
    assert {k: resumed[k] for k in numbers} == {k: first[k] for k in numbers}
    assert resumed["resumed_episodes"] == 1 and resumed["cams_computed"] == 0
    assert state.read_text().splitlines()[1:] == [line.rstrip("\n") for line in lines[1:]]


class Recorded(BenchmarkProgress):
    """What run_benchmark tells; `stop_after` episodes counted, a Ctrl-C."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after, self.episodes, self.interruptions, self.results = stop_after, [], [], []

    @contextlib.contextmanager
    def fold(self, settings):
        def on_episode(done, total, meter):
            self.episodes.append((settings.fold, done, total))
            if done == self.stop_after:
                raise KeyboardInterrupt

        yield on_episode

    def interrupted(self, fold, saved):
        self.interruptions.append((fold, saved))

    def finished(self, result):
        self.results.append(result)


def test_the_library_call_gives_the_commands_numbers(cli, voc, tmp_path, monkeypatch):
    command, _ = _imr(voc, tmp_path, "command", tmp_path / "cache-a", cli)
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache-b"))
    settings = BenchmarkSettings("pascal", voc.data, fold=0, splits=voc.splits, episodes=2, steps=1,
                                 weights=str(voc.weights), clip_weights=str(voc.clip), device="cpu", batch_size=2,
                                 report=tmp_path / "library.json")
    progress = Recorded()
    [result] = run_benchmark(settings, progress)
    library = json.loads((tmp_path / "library.json").read_text())
    assert {k: v for k, v in library.items() if k != "seconds"} == {k: v for k, v in command.items() if k != "seconds"}
    assert (result.miou, result.fb_iou, result.per_class) == (command["miou"], command["fb_iou"], command["per_class"])
    assert progress.results == [result] and progress.episodes == [(0, 1, 2), (0, 2, 2)]
    assert progress.interruptions == []

    # Ctrl-C after the first episode: it is saved, said, and the same settings continue from it.
    [state] = (tmp_path / "cache-b" / "eval").glob("*/state.jsonl")
    state.unlink()
    progress = Recorded(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(replace(settings, report=None), progress)
    assert progress.interruptions == [(0, 1)] and progress.results == []
    [resumed] = run_benchmark(replace(settings, report=None))
    assert resumed.resumed == 1 and resumed.state_path == state and resumed.cams_computed == 0
    assert (resumed.miou, resumed.fb_iou, resumed.per_class) == (result.miou, result.fb_iou, result.per_class)


def test_cam_method_and_all_folds(cli, voc, tmp_path):
    report = tmp_path / "all.json"
    result = cli("--fold", "all", "--method", "cam", "--report", report, cache=tmp_path / "cache", episodes=3)
    assert result.code == 0, result.err
    assert "fold 3" in result.out and "mean" in result.out
    doc = json.loads(report.read_text())
    assert doc["fold"] == "all" and doc["folds"] == [0, 1, 2, 3] and doc["method"] == "cam"
    assert doc["weights"] == [None] * 4 and doc["steps"] is None
    assert len(doc["per_class"]) == 20 and len(doc["per_fold"]) == 4
    assert doc["miou"] == pytest.approx(sum(f["miou"] for f in doc["per_fold"]) / 4)

    # Run again: every episode comes from the saved state.
    again = cli("--fold", "0", "--method", "cam", "--report", report, cache=tmp_path / "cache", episodes=3)
    assert again.code == 0 and "3 of 3 episodes taken from the saved state" in again.err
    rerun = json.loads(report.read_text())
    assert rerun["miou"] == doc["per_fold"][0]["miou"] and rerun["cams_computed"] == 0


def test_zero_shot_runs_without_supports(cli, voc, tmp_path):
    report = tmp_path / "zero.json"
    result = cli("--fold", "0", "--zero-shot", "--weights", voc.weights, "--steps", "1", "--report", report,
                 cache=tmp_path / "cache", episodes=1)
    assert result.code == 0, result.err
    doc = json.loads(report.read_text())
    assert doc["zero_shot"] is True and doc["cams_computed"] == 1 and "zero-shot" in result.out


@pytest.mark.filterwarnings("ignore::imrseg.errors.Note")
def test_two_identical_evals_never_write_one_state(voc, tmp_path, monkeypatch):
    """Issue 18, defect 7: a second run of the same settings while the first runs is
    refused in one line (their rows used to interleave, and the next run failed with
    "episode rows out of order"); a run of other settings goes on beside it, and the
    first run's state then resumes whole."""
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
    settings = BenchmarkSettings("pascal", voc.data, fold=0, splits=voc.splits, episodes=3, method="cam",
                                 clip_weights=str(voc.clip), device="cpu", batch_size=1)
    refused, beside = [], []

    class SecondRuns(BenchmarkProgress):
        @contextlib.contextmanager
        def fold(self, fold_settings):
            def on_episode(done, total, meter):
                if done == 1 and not refused:
                    with pytest.raises(ImrsegError) as caught:
                        run_benchmark(settings)
                    refused.append(str(caught.value))
                    beside.extend(run_benchmark(replace(settings, seed=1)))

            yield on_episode

    [first] = run_benchmark(settings, SecondRuns())
    [message] = refused
    assert "another imrseg run is writing" in message and "\n" not in message
    assert beside[0].episodes == 3 and beside[0].resumed == 0
    [again] = run_benchmark(settings)
    assert again.resumed == 3 and (again.miou, again.fb_iou) == (first.miou, first.fb_iou)
    rows = [json.loads(line) for line in first.state_path.read_text().splitlines()[1:]]
    assert [r["episode"] for r in rows] == [0, 1, 2]


def test_a_damaged_state_row_is_a_one_line_error(cli, tmp_path):
    """A row read back is checked field by field: negative pixel counts (or any
    value of the wrong kind) are refused, naming the file and line, never counted."""
    first = cli("--fold", "0", "--method", "cam", cache=tmp_path / "cache")
    assert first.code == 0, first.err
    [state] = (tmp_path / "cache" / "eval").rglob("*.jsonl")
    lines = state.read_text().splitlines(keepends=True)
    row = json.loads(lines[2])
    state.write_text("".join(lines[:2]) + json.dumps({**row, "inter": [-5, row["inter"][1]]}) + "\n")
    again = cli("--fold", "0", "--method", "cam", cache=tmp_path / "cache")
    assert again.code == 2
    [error] = [line for line in again.err.splitlines() if not line.startswith("imrseg: note:")]
    assert error.startswith("imrseg: error: ")
    assert f"{state}:3: field \"inter\" must be two pixel counts" in again.err
    assert error.endswith(f"delete {state.parent} to start over")


def test_the_report_is_never_written_over_a_user_file_or_through_a_link(cli, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("mine\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "link.json").symlink_to(outside)
    (tmp_path / "reports" / "notes.json").write_text("the user's\n")
    for name, message in [("link.json", "is a symbolic link inside --report"),
                          ("notes.json", "exists and was not written by imrseg")]:
        result = cli("--fold", "0", "--method", "cam", "--report", tmp_path / "reports" / name,
                     cache=tmp_path / "cache")
        assert result.code == 2 and result.err.count("\n") == 1 and message in result.err
    assert outside.read_text() == "mine\n" and (tmp_path / "reports" / "notes.json").read_text() == "the user's\n"
    assert not list((tmp_path / "cache").glob("eval/*/state.jsonl"))  # refused before any episode ran


@pytest.mark.parametrize("args, message", [
    (["--fold", "7"], "--fold must be one of 0, 1, 2, 3, all"),
    (["--fold", "0", "--data-root", "/nonexistent/data"], "/nonexistent/data/VOC2012/JPEGImages: no such folder"),
    (["--fold", "0", "--method", "cam", "--splits", "/nonexistent/splits"],
     "/nonexistent/splits: --splits is not a folder"),
    # Found before anything is evaluated, not after.
    (["--fold", "0", "--report", "VOC2012"], "VOC2012: --report is a folder; give a file name"),
    (["--fold", "0", "--report", "taken/report.json"], "taken/report.json: --report cannot be written there"),
    # Weights out of reach (offline, not cached): said before any model loads or any split is fetched.
    (["--fold", "1"], "imr-hsnet-resnet50-pascal-fold1: offline (HF_HUB_OFFLINE is set) and the authors' ResNet-50 "
                      "PASCAL-5i fold 1 checkpoint is not in imrseg's cache"),
])
def test_errors_are_one_line(args, message, tmp_path):
    for kind in ("JPEGImages", "SegmentationClassAug"):
        (tmp_path / "VOC2012" / kind).mkdir(parents=True)
    (tmp_path / "taken").write_text("a file, not a folder\n")
    env = {**os.environ, "IMRSEG_CACHE": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "imrseg", "eval", "--benchmark", "pascal", "--data-root", ".",
                           *args], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == (4 if "offline" in message else 2)
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_module_does_not_import_torch():
    code = "import sys; import imrseg.cli.eval; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
