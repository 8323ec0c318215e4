"""`imrseg segment`, `imrseg zero-shot` and `imrseg info`, end to end on CPU with recipe weights."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_image
from imrseg.cli import _register, app

_register()
REPO = Path(__file__).resolve().parents[1]


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


def rows(out):
    """The header, then the query rows (without the rows naming files about to be written)."""
    lines = (out / "results.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["type"] != "writing"]


@pytest.fixture()
def weights(recipe_weight_files):
    return ["--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"]]


def test_segment_nested_folder_two_shot(tmp_path, weights):
    queries = tmp_path / "queries"
    sizes = {"a.jpg": (64, 48), "sub/b.png": (50, 70), "sub/deeper/c.JPG": (33, 20)}
    for i, (name, size) in enumerate(sizes.items()):
        write_image(queries / name, size, seed=i)
    (queries / "sub" / "broken.png").write_bytes(b"\x89PNG not really")
    s1, s2 = write_image(tmp_path / "s1.jpg", seed=10), write_image(tmp_path / "s2.jpg", seed=11)
    out = tmp_path / "out"
    result = run("segment", "--label", "dog", "--support", s1, "--support", s2, "--query", queries,
                 "--out", out, "--steps", 2, "--save-steps", "--save-cam", "--save-prob", "--json", *weights)
    assert result.exit_code == 1, result.output  # one input failed
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["skipped"]) == (3, 1, 0)
    for name, (w, h) in sizes.items():
        stem = out / name.rsplit(".", 1)[0]
        mask = Image.open(f"{stem}.png")
        assert mask.mode == "L" and mask.size == (w, h)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(f"{stem}_overlay.jpg").size[0] > 0
        assert Image.open(f"{stem}_cam.png").size == (w, h)
        assert Image.open(f"{stem}_prob.png").size == (w, h)
        steps = [Image.open(f"{stem}_step{t}.png") for t in (1, 2)]
        assert all(s.size == (w, h) for s in steps)
        # The last step's mask is the mask.
        assert np.array_equal(np.asarray(steps[-1]), np.asarray(mask))
    log = rows(out)
    assert log[0]["type"] == "run" and len(log[0]["supports"]) == 2 and log[0]["steps"] == 2
    by_status = {r["query"].rsplit("/", 1)[-1]: r["status"] for r in log[1:]}
    assert by_status == {"a.jpg": "done", "b.png": "done", "c.JPG": "done", "broken.png": "failed"}
    assert "broken.png" in next(r["error"] for r in log[1:] if r["status"] == "failed")


def test_rerun_skips_finished_queries_and_overwrite_redoes_them(tmp_path, weights):
    query = write_image(tmp_path / "q.jpg", seed=1)
    support = write_image(tmp_path / "s.jpg", seed=2)
    out = tmp_path / "out"
    args = ["segment", "-l", "cat", "-s", support, "-q", query, "-o", out, "--steps", 1, "--json", *weights]
    assert run(*args).exit_code == 0
    first = (out / "q.png").read_bytes()
    again = run(*args)
    assert again.exit_code == 0 and json.loads(again.stdout.splitlines()[-1])["skipped"] == 1
    redo = run(*args, "--overwrite")
    assert json.loads(redo.stdout.splitlines()[-1])["done"] == 1
    assert (out / "q.png").read_bytes() == first  # deterministic


def test_support_mask_replaces_the_cam(tmp_path, weights):
    support = write_image(tmp_path / "s.png", (40, 30), seed=3)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "s_mask.png")
    query = write_image(tmp_path / "q.png", seed=4)
    out = tmp_path / "out"
    result = run("segment", "-l", "boat", "-s", support, "--support-mask", tmp_path / "s_mask.png",
                 "-q", query, "-o", out, "--steps", 1, *weights)
    assert result.exit_code == 0, result.output
    assert rows(out)[0]["support_masks"] == [str(tmp_path / "s_mask.png")]
    assert Image.open(out / "q.png").size == (64, 48)


def test_zero_shot_one_image_json(tmp_path, weights):
    image = write_image(tmp_path / "cat.jpg", (52, 40), seed=5)
    out = tmp_path / "zs"
    result = run("zero-shot", image, "--label", "cat", "--out", out, "--steps", 1, "--json", "--quiet", *weights)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 1 and summary["results"] == str(out / "results.jsonl")
    assert Image.open(out / "cat.png").size == (52, 40)
    assert rows(out)[0]["zero_shot"] is True


def test_a_failed_query_names_the_flag(tmp_path, weights):
    """A query's error on the terminal names the command's flag; results.jsonl keeps the
    library's words (the parameter's name)."""
    support, query = write_image(tmp_path / "s.jpg", (10, 8)), write_image(tmp_path / "q.jpg", (40, 30))
    out = tmp_path / "out"
    result = run("segment", "-l", "cat", "-s", support, "-q", query, "-o", out, "--steps", 1, "--max-pixels", 100,
                 *weights)
    assert result.exit_code == 1, result.output
    assert "q.jpg: image has 1200 pixels, over the limit of 100 (decompression-bomb guard); pass --max-pixels to " \
           "raise it" in result.output
    assert rows(out)[1]["error"].endswith("pass `max_pixels` to raise it")


@pytest.mark.parametrize("args, message", [
    (["-l", " "], "label is empty"),
    (["-l", "dog " * 80], "too long for CLIP"),
    (["-l", "dog", "--steps", "0"], "--steps must be 1 or more"),
    (["-l", "dog", "--device", "tpu"], "unknown device"),
    (["-l", "dog", "--device", "cuda"], "CUDA was requested"),
    (["-l", "dog", "--prompt-template", "a photo"], "--prompt-template 'a photo' has no {c}"),
    (["-l", "cat", "--vocab", "cats"], "--vocab leaves the label 'cat' nothing to compete with"),
])
def test_argument_errors_are_one_line_before_loading(tmp_path, args, message):
    support, query = write_image(tmp_path / "s.jpg"), write_image(tmp_path / "q.jpg")
    # Weights that do not exist prove that no model was loaded before the check.
    result = run("segment", *args, "-s", support, "-q", query, "-o", tmp_path / "o",
                 "--weights", tmp_path / "missing.pt")
    assert result.exit_code != 0
    assert message in result.output
    assert "missing.pt" not in result.output


def test_path_errors(tmp_path):
    support = write_image(tmp_path / "s.jpg", (40, 30))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    Image.new("L", (10, 10)).save(tmp_path / "small_mask.png")
    cases = [
        (["-s", support, "-q", tmp_path / "empty", "-o", tmp_path / "o"], "empty"),
        (["-s", support, "-q", support, "-o", tmp_path / "file"], "--out is a file"),
        (["-s", support, "--support-mask", tmp_path / "small_mask.png", "--support-mask",
          tmp_path / "small_mask.png", "-q", support, "-o", tmp_path / "o"], "1 support images but 2"),
        (["-s", support, "--support-mask", tmp_path / "small_mask.png", "-q", support, "-o", tmp_path / "o"],
         "mask is 10x10 but its support"),
        (["-s", tmp_path / "nope.jpg", "-q", support, "-o", tmp_path / "o"], "nope.jpg"),
    ]
    for args, message in cases:
        result = run("segment", "-l", "dog", *args, "--weights", tmp_path / "missing.pt")
        assert result.exit_code != 0 and message in result.output, (args, result.output)


def test_help_and_completion_do_not_import_torch():
    code = ("import sys\nfrom imrseg.cli import main\nsys.argv = ['imrseg', 'segment', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Examples" in out and out.strip().endswith("NO-TORCH")


def test_info_json():
    result = run("info", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["cuda"] in (True, False) and "cache" in data


def test_odd_and_bad_inputs(tmp_path, weights):
    """Masks for every readable image at its displayed size, error rows for the rest."""
    folder = tmp_path / "odd"
    folder.mkdir()
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed 32 wide, 48 high
    rgb.save(folder / "rotated.jpg", exif=exif)
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("LA").save(folder / "grey_alpha.png")
    rgb.convert("RGBA").save(folder / "alpha.png")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40)).save(folder / "deep.png")
    rgb.convert("1").save(folder / "bilevel.png")
    rgb.save(folder / "anim.png", save_all=True, append_images=[rgb.rotate(90)])  # APNG
    good = {"rotated": (32, 48), "grey": (48, 32), "grey_alpha": (48, 32), "alpha": (48, 32),
            "palette": (48, 32), "cmyk": (48, 32), "deep": (48, 32), "bilevel": (48, 32), "anim": (48, 32)}
    data = (folder / "cmyk.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    # A folder named like an image is a folder: searched, not an error (tests/test_io.py
    # covers loading one by name).
    (folder / "folder.jpg").mkdir()
    support = write_image(tmp_path / "s.jpg", seed=1)
    out = tmp_path / "out"
    result = run("segment", "-l", "cat", "-s", support, "-q", folder, "-o", out, "--steps", 1, "--json", *weights)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (len(good), 3)
    for stem, size in good.items():
        assert Image.open(out / f"{stem}.png").size == size, stem
    failed = {Path(r["query"]).name: r["error"] for r in rows(out)[1:] if r["status"] == "failed"}
    assert set(failed) == {"truncated.jpg", "empty.jpg", "text.jpg"}
    assert all(error.count("\n") == 0 and name in error for name, error in failed.items())
    for name in failed:
        assert f"imrseg: error: {folder / name}: " in result.output


def test_segment_help_names_real_examples_and_flags_take_no_value():
    for command in ("segment", "zero-shot"):
        lines = run(command, "--help").output.splitlines()
        for flag in ("--save-prob", "--save-cam", "--save-steps", "--overwrite", "--quiet", "--json"):
            line = next(line for line in lines if f"{flag} " in line)
            assert "<bool>" not in line, line
        for example in re.findall(r"examples/[\w.]+", "\n".join(lines)):
            assert (REPO / example).is_file(), example


@pytest.mark.parametrize("command", ["segment", "zero-shot", "info", "eval", "weights list", "weights download",
                                     "weights import", "weights push", "weights info"])
def test_every_command_help_has_examples(command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0 and "Examples" in result.output
