"""`imrseg train` as a user runs it: bad arguments stop with one line and exit 2
before any model loads; Ctrl-C saves RUN/last and exits 130, and the same command
continues the run without redoing finished epochs; RUN/best is usable as --weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from imrseg.cli import main
from training_fixtures import make_shapes


@pytest.fixture
def train(monkeypatch, capsys, tmp_path):
    def run(*args):
        monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(sys, "argv", ["imrseg", "train", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            main()
        out, err = capsys.readouterr()
        return SimpleNamespace(code=exit_.value.code, out=out, err=err)

    return run


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "pascal"], "--fold is needed for pascal"),
    (["--benchmark", "folder", "--fold", "0"], "--fold is for pascal and coco"),
    (["--benchmark", "folder", "--val-classes", "purple"], "--val-classes purple: no such class folder"),
    (["--benchmark", "coco", "--fold", "1", "--val-share", "0.5"], "--val-classes and --val-share are for"),
    (["--benchmark", "folder", "--batch-size", "0"], "--batch-size must be 1 or more"),
    (["--benchmark", "folder", "--val-share", "1.5"], "--val-share 1.5: expected a fraction"),
])
def test_bad_arguments_are_one_line(train, tmp_path, args, message):
    data = make_shapes(tmp_path / "data", per_class=2, classes=["red_disc", "green_square"])
    result = train("--data-root", data, "--out", tmp_path / "run", *args)
    assert result.code == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, message", [
    ({"benchmark": "pascal"}, "`fold` is needed for pascal"),
    ({"benchmark": "folder", "fold": 0}, "`fold` is for pascal and coco"),
    ({"benchmark": "coco", "fold": 1, "val_share": 0.5}, "`val_classes` and `val_share` are for `benchmark` folder"),
    ({"benchmark": "folder", "batch_size": 0}, "`batch_size` must be 1 or more, not 0"),
    ({"benchmark": "folder", "lr": 0.0}, "`lr` must be positive"),
    ({"benchmark": "folder", "backbone": "vit"}, "`backbone` must be one of resnet50, vgg16"),
])
def test_the_library_names_parameters(tmp_path, settings, message):
    from imrseg.errors import InputError
    from imrseg.training import TrainSettings

    with pytest.raises(InputError, match=message):
        TrainSettings(data_root=tmp_path, out=tmp_path / "run", **settings).check()


def test_missing_data_and_file_as_out(train, tmp_path):
    result = train("--benchmark", "folder", "--data-root", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert result.code == 2 and "nowhere: no such folder" in result.err
    (tmp_path / "file").write_text("x")
    data = make_shapes(tmp_path / "data", per_class=2, classes=["red_disc", "green_square"])
    result = train("--benchmark", "folder", "--data-root", data, "--out", tmp_path / "file")
    assert result.code == 2 and "exists and is not a folder" in result.err


@pytest.mark.slow
def test_ctrl_c_saves_and_the_same_command_continues(tmp_path, recipe_weight_files):
    data = make_shapes(tmp_path / "data", per_class=2, classes=["red_disc", "green_square", "yellow_disc"])
    run = tmp_path / "run"
    command = [sys.executable, "-m", "imrseg", "train", "--benchmark", "folder", "--data-root", str(data),
               "--val-classes", "yellow_disc", "--init", recipe_weight_files["weights"], "--clip-weights",
               recipe_weight_files["clip"], "--steps", "1", "--batch-size", "2", "--epochs", "2",
               "--val-episodes", "1", "--device", "cpu", "--out", str(run)]
    env = {**os.environ, "IMRSEG_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (run / "last" / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 130, err
    assert "run the same command again to continue" in err
    before = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").exists() else []
    assert len(before) < 2

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[:len(before)] == before
    assert rows[-1]["optimizer_steps"] == 4  # 2 steps an epoch, none done twice
    assert "best: epoch" in finished.stderr

    # best/ is a checkpoint like any other: segment with it.
    out = tmp_path / "masks"
    segment = subprocess.run([sys.executable, "-m", "imrseg", "segment", "-l", "yellow disc", "-s",
                              str(data / "yellow_disc" / "1.jpg"), "-q", str(data / "yellow_disc" / "2.jpg"),
                              "-o", str(out), "--weights", str(run / "best"), "--clip-weights",
                              recipe_weight_files["clip"], "--device", "cpu", "--quiet"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert segment.returncode == 0, segment.stderr
    assert (out / "2.png").is_file()
    config = json.loads((run / "best" / "config.json").read_text())
    assert config == {"backbone": "resnet50", "benchmark": "folder", "fold": None, "steps": 1,
                      "class_names": ["yellow_disc"]}
    assert Path(run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_library_call_trains_as_the_command(train, tmp_path, monkeypatch, recipe_weight_files):
    """`imrseg.training.train` with the command's settings writes the run folder the
    command writes: the same metrics (but the seconds), best/ byte for byte."""
    from imrseg.training import TrainSettings
    from imrseg.training import train as train_run

    data = make_shapes(tmp_path / "data", per_class=2, classes=["red_disc", "green_square", "yellow_disc"])
    common = {"init": recipe_weight_files["weights"], "clip_weights": recipe_weight_files["clip"], "steps": 1,
              "batch_size": 2, "epochs": 1, "val_episodes": 1, "device": "cpu"}
    result = train("--benchmark", "folder", "--data-root", data, "--val-classes", "yellow_disc", "--out",
                   tmp_path / "command", "--quiet", *[f"--{k.replace('_', '-')}={v}" for k, v in common.items()])
    assert result.code == 0, result.err
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
    state = train_run(TrainSettings("folder", data_root=data, val_classes=("yellow_disc",), out=tmp_path / "library",
                                    **common))

    def metrics(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert metrics(tmp_path / "library") == metrics(tmp_path / "command") == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in state.history]
    assert [row["epoch"] for row in state.history] == [1] and state.best == state.history[0]
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "library" / "best" / name).read_bytes() == \
            (tmp_path / "command" / "best" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "library").iterdir()) == \
        sorted(p.name for p in (tmp_path / "command").iterdir())
