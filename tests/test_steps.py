"""How many refinement steps a run uses, decided in one place (`hub.resolve_steps`),
and `Predictor.from_pretrained`, the one line from weight specs to a predictor that
the commands use."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import write_image
from imrseg.errors import Note
from imrseg.hub import resolve_steps, resolve_weights
from imrseg.hub.publish import import_official
from imrseg.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def official_info(recipe_weight_files):
    return resolve_weights(recipe_weight_files["weights"])[1]


def test_explicit_steps_win_without_a_note(official_info):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_steps(official_info, 3) == 3
        assert resolve_steps(official_info, 1, "coco") == 1


def test_a_file_without_its_benchmark_runs_the_papers_steps_and_says_so(official_info):
    assert official_info.benchmark is None
    with pytest.warns(Note, match=r"runs 2 refinement steps.*`steps` 3.*weights import"):
        assert resolve_steps(official_info) == 2
    with pytest.warns(Note, match="runs 3 refinement steps"):
        assert resolve_steps(official_info, None, "coco") == 3


def test_a_converted_checkpoint_keeps_its_own_steps_silently(recipe_weight_files, tmp_path):
    info = import_official(recipe_weight_files["weights"], tmp_path / "coco-f1", "coco", 1)
    assert info.steps == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_steps(info) == 3
        assert resolve_steps(info, None, "pascal") == 3  # the checkpoint knows better than the task


def test_steps_below_one_are_refused(official_info):
    from imrseg.errors import InputError

    with pytest.raises(InputError, match="`steps` must be 1 or more"):
        resolve_steps(official_info, 0)


def test_from_pretrained_builds_a_ready_predictor(recipe_weight_files, tmp_path):
    folder = tmp_path / "coco-f2"
    import_official(recipe_weight_files["weights"], folder, "coco", 2)
    predictor = Predictor.from_pretrained(str(folder), recipe_weight_files["clip"], device="cpu")
    assert predictor.steps == 3 and predictor.precision == "fp32" and predictor.device.type == "cpu"
    assert predictor.weights_info.benchmark == "coco" and predictor.weights_info.fold == 2
    assert predictor.clip_info.path == recipe_weight_files["clip"]
    assert Predictor.from_pretrained(str(folder), recipe_weight_files["clip"], device="cpu", steps=1).steps == 1


def test_the_command_says_once_which_steps_an_authors_file_runs(recipe_weight_files, tmp_path):
    query, support = write_image(tmp_path / "q.jpg", (32, 24)), write_image(tmp_path / "s.jpg", (32, 24), seed=1)
    command = [sys.executable, "-m", "imrseg", "segment", "-l", "cat", "-s", str(support), "-q", str(query),
               "-o", str(tmp_path / "out"), "--weights", recipe_weight_files["weights"],
               "--clip-weights", recipe_weight_files["clip"], "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("imrseg: note:")]
    assert len(notes) == 1 and "runs 2 refinement steps" in notes[0], result.stderr
    assert "pass --steps 3," in notes[0], notes[0]  # the library's `steps`, as the command spells it
    again = subprocess.run(command + ["--steps", "2", "--overwrite"], capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0 and "imrseg: note:" not in again.stderr, again.stderr
