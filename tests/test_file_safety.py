"""The files of an output folder past the guard: a name becomes imrseg's only just
before its file is written (a failed command claims nothing), a file shared with
another folder through a hard link is copied before it is appended to, whatever
imrseg reads back must be a regular file (a FIFO is refused, never waited on), the
output folder inside an input folder leaves out only what imrseg wrote there, names
that are not UTF-8 or differ only by Unicode normalisation are handled, and a name
too long for the filesystem with imrseg's suffixes is refused before anything runs.
The network is test_run_safety's stand-in; a FIFO opened by mistake would block,
so every case runs under an alarm."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import test_run_safety as safety
from conftest import write_image
from imrseg.cli import app, main
from imrseg.guard import MANIFEST, OwnedFolder
from imrseg.hub.card import trained_card
from imrseg.outputs.naming import plan_outputs
from training_fixtures import make_shapes

loads = safety.loads
WEIGHTS = safety.WEIGHTS
segment = safety.segment


@pytest.fixture(autouse=True)
def alarm():
    """A case that blocks (on a FIFO) fails after 30 s instead of hanging the suite."""
    def expired(*_):
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def command(*args):
    return CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args],
                              catch_exceptions=False)


def one_line_error(result, *names) -> str:
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for name in names:
        assert name in result.output, result.output
    return result.output


def manifest(folder: Path) -> set[str]:
    path = folder / MANIFEST
    return {json.loads(line)["file"] for line in path.read_text().splitlines()} if path.exists() else set()


# ------------------------------------------------------------------ hard links
def test_a_hard_linked_copy_never_writes_into_the_original(loads):
    write_image(Path("s.png"), seed=3)
    write_image(Path("q/a.jpg"), seed=1)
    assert segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0].exit_code == 0
    subprocess.run(["cp", "-al", "out", "copy"], check=True)
    before = {name: (Path("out") / name).read_bytes() for name in ("results.jsonl", MANIFEST)}
    write_image(Path("q/b.jpg"), seed=2)
    result, summary = segment("-s", "s.png", "-q", "q", "-o", "copy", "--coco", *WEIGHTS)
    assert result.exit_code == 0 and safety.counts(summary) == (1, 1), result.output
    assert command("export", "copy", "--coco").exit_code == 0
    assert {name: (Path("out") / name).read_bytes() for name in before} == before
    assert all(os.stat(Path("copy") / name).st_nlink == 1 for name in before)
    assert "annotations.json" in manifest(Path("copy")) and "annotations.json" not in manifest(Path("out"))
    Path("out/annotations.json").write_text("the user's\n")
    one_line_error(command("export", "out", "--coco"), "out/annotations.json: exists and was not written")
    assert Path("out/annotations.json").read_text() == "the user's\n"


# ------------------------------------------------- claims only at write time
def test_a_failed_eval_claims_no_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
    reports = tmp_path / "reports"
    monkeypatch.setattr(sys, "argv", ["imrseg", "eval", "--benchmark", "pascal", "--fold", "0", "--method", "cam",
                                      "--data-root", str(tmp_path / "nowhere"), "--report",
                                      str(reports / "r.json")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "nowhere" in capsys.readouterr().err
    assert manifest(reports) == set()
    (reports / "r.json").parent.mkdir(exist_ok=True)
    (reports / "r.json").write_text("the user's\n")
    with OwnedFolder(reports, parameter="report", lock=False) as folder:
        assert not folder.owns("r.json")


def test_a_failed_training_claims_none_of_its_files(tmp_path, monkeypatch, capsys):
    data = make_shapes(tmp_path / "data", per_class=2, classes=["red_disc", "green_square"])
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["imrseg", "train", "--benchmark", "folder", "--data-root", str(data),
                                      "--out", str(tmp_path / "run"), "--init", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "missing.pt" in capsys.readouterr().err
    assert manifest(tmp_path / "run") == set()


# -------------------------------------------------- out inside an input folder
def test_out_inside_the_query_folder_leaves_out_only_imrseg_s_files(loads):
    write_image(Path("s.png"), seed=3)
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("q/out/b.jpg"), seed=2)  # the user's, in the folder chosen as --out
    for expected in [(2, 0), (0, 2)]:
        result, summary = segment("-s", "s.png", "-q", "q", "-o", "q/out", *WEIGHTS)
        assert result.exit_code == 0 and safety.counts(summary) == expected, result.output
    assert sorted(row["query"] for row in safety.last_run(Path("q/out"))[1]) == ["q/a.jpg", "q/out/b.jpg"]


def test_out_inside_the_support_folder_keeps_every_support(loads):
    write_image(Path("s/one.png"), seed=3)
    write_image(Path("s/out/two.png"), seed=4)
    write_image(Path("q/a.jpg"), seed=1)
    for expected in [(1, 0), (0, 1)]:
        result, summary = segment("-s", "s", "-q", "q", "-o", "s/out", *WEIGHTS)
        assert result.exit_code == 0 and safety.counts(summary) == expected, result.output
    assert safety.last_run(Path("s/out"))[0]["supports"] == ["s/one.png", "s/out/two.png"]


# ------------------------------------------------------------------- FIFOs
@pytest.mark.parametrize("name", ["results.jsonl", MANIFEST])
def test_a_fifo_in_imrseg_s_place_is_refused_not_waited_on(loads, name):
    write_image(Path("s.png"), seed=3)
    write_image(Path("q/a.jpg"), seed=1)
    Path("out").mkdir()
    os.mkfifo(Path("out") / name)
    one_line_error(segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0], f"out/{name}: ", "regular file")
    for args in (["export", "out", "--coco"], ["gallery", "out"]):
        one_line_error(command(*args), f"out/{name}: ", "regular file")
    assert not loads


def test_a_fifo_at_a_finished_mask_is_refused_not_waited_on(loads):
    write_image(Path("s.png"), seed=3)
    write_image(Path("q/a.jpg"), seed=1)
    assert segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0].exit_code == 0
    os.unlink("out/a.png")
    os.mkfifo("out/a.png")
    one_line_error(command("export", "out", "--coco"), "out/a.png: ", "regular file")
    assert command("gallery", "out").exit_code == 0  # the page shows overlays: done, not waiting
    result, summary = segment("-s", "s.png", "-q", "q", "-o", "out", "--gallery", *WEIGHTS)
    assert result.exit_code == 0 and safety.counts(summary) == (1, 0), result.output  # made again
    assert Path("out/a.png").is_file() and Path("out/gallery.html").is_file()


# ----------------------------------------------------------- non-UTF-8 names
def test_names_that_are_not_utf8_are_shown_not_an_internal_error(loads):
    write_image(Path("s.png"), seed=3)
    write_image(Path(os.fsdecode(b"q/sub\xff/caf\xe9.jpg")), seed=1)
    result, summary = segment("-s", "s.png", "-q", "q", "-o", "out", "--gallery", *WEIGHTS)
    assert result.exit_code == 0 and safety.counts(summary) == (1, 0), result.output
    assert Path("out/gallery.html").is_file()
    result = command("gallery", "out")
    assert result.exit_code == 0, result.output
    assert os.path.exists(os.fsdecode(b"out/sub\xff/caf\xe9.png"))


def test_a_training_folder_with_names_that_are_not_utf8(tmp_path, monkeypatch, capsys):
    data = make_shapes(tmp_path / "data", per_class=2, classes=["red_disc", "green_square"])
    os.rename(data / "red_disc", os.fsdecode(bytes(data / "red_disc") + b"\xff"))
    os.rename(data / "green_square" / "1.jpg", os.fsdecode(bytes(data / "green_square") + b"/\xe9.jpg"))
    os.rename(data / "green_square" / "1.png", os.fsdecode(bytes(data / "green_square") + b"/\xe9.png"))
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["imrseg", "train", "--benchmark", "folder", "--data-root", str(data),
                                      "--out", str(tmp_path / "run"), "--epochs", "1",
                                      "--backbone-weights", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    # Past the data, up to the first thing that is missing.
    assert exit_.value.code == 2 and "missing.pt" in err and "internal error" not in err, err
    model = SimpleNamespace(benchmark="folder", backbone_name="resnet50", steps=2, fold=None,
                            class_names=[os.fsdecode(b"red_disc\xff")])
    recipe = SimpleNamespace(lr=1e-3, batch_size=2, precision="fp32", seed=0)
    best = {"episodes": 4, "val_miou": 50.0, "val_fb_iou": 60.0, "epoch": 1}
    assert "red_disc\\udcff" in trained_card(model, recipe, best, "fresh", "0" * 64).encode("utf-8").decode()


# ------------------------------------------------------------ misleading messages
def test_a_folder_at_the_lock_is_named(loads):
    write_image(Path("s.png"), seed=3)
    write_image(Path("q/a.jpg"), seed=1)
    Path("out/.imrseg.lock").mkdir(parents=True)
    message = one_line_error(segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0], "out/.imrseg.lock: ")
    assert "is a folder" in message and not loads


def test_a_query_subfolder_in_the_way_of_the_log_is_named(loads):
    write_image(Path("s.png"), seed=3)
    write_image(Path("q/a.jpg"), seed=1)
    write_image(Path("q/results.jsonl/b.jpg"), seed=2)
    message = one_line_error(segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0], "out/results.jsonl: ")
    assert "in the way of" in message and not loads


# ------------------------------------------------------ names and their lengths
def test_names_differing_only_by_normalisation_are_one_name(tmp_path):
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    q = tmp_path / "q"
    images = [(q / f"{composed}.jpg", q), (q / f"{decomposed}.jpg", q)]
    stems = plan_outputs(images, tmp_path / "out")
    keys = {unicodedata.normalize("NFC", stem.name).casefold() for stem in stems.values()}
    assert len(keys) == 2, stems


def test_a_name_too_long_with_imrseg_s_suffixes_is_refused_before_anything_runs(loads):
    write_image(Path("s.png"), seed=3)
    name = "n" * (os.pathconf(".", "PC_NAME_MAX") - 20)  # its outputs fit; their temporary names do not
    write_image(Path("q") / f"{name}.jpg", seed=1)
    one_line_error(segment("-s", "s.png", "-q", "q", "-o", "out", *WEIGHTS)[0], "too long",
                   f"out/{name}_overlay.jpg: ")
    assert not loads
