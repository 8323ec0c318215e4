"""Inputs that look usable but are not: transparent drawn masks, a vocabulary that
leaves the label alone, prompt templates that do not format, and Ctrl-C while a
model loads. Each is refused or explained in one line; none needs trained weights."""
from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from imrseg.clip.cam import check_label
from imrseg.errors import InputError, Note
from imrseg.images import load_mask
from imrseg.clip.vocabulary import class_vocabulary
from imrseg.runner.folder import load_supports
from imrseg.runner.settings import ClassSpec
from imrseg.clip.vocabulary import background_vocabulary, check_template

SIZE = (40, 30)


def _supports(tmp_path: Path, mask: Image.Image) -> np.ndarray:
    """The drawn mask as a folder run reads it with its support."""
    support = write_image(tmp_path / "support.jpg", SIZE)
    mask.save(tmp_path / "mask.png")
    _, drawn = load_supports(ClassSpec("cat", (support,), (tmp_path / "mask.png",)), [support], None)
    return drawn[0]


def _square() -> np.ndarray:
    inside = np.zeros(SIZE[::-1], bool)
    inside[5:20, 10:30] = True
    return inside


# ------------------------------------------------------------------ drawn masks
def test_transparent_pixels_of_a_drawn_mask_are_background(tmp_path):
    # White everywhere, opaque only on the object: shown on white it is all white.
    rgba = np.full((*SIZE[::-1], 4), 255, np.uint8)
    rgba[..., 3] = np.where(_square(), 255, 0)
    assert np.array_equal(_supports(tmp_path, Image.fromarray(rgba, "RGBA")), _square())

    # A palette whose entry 0 is transparent white, entry 1 opaque white.
    palette = Image.fromarray(_square().astype(np.uint8), "P")
    palette.putpalette([255, 255, 255] * 2)
    palette.info["transparency"] = 0
    assert np.array_equal(_supports(tmp_path, palette), _square())

    # Grey with alpha, read on its own.
    la = np.stack([np.full(SIZE[::-1], 200, np.uint8), np.where(_square(), 255, 0).astype(np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(load_mask(tmp_path / "la.png"), _square())


@pytest.mark.parametrize("value, what", [(0, "no pixel as object"), (255, "every pixel as object")])
def test_a_blank_or_full_drawn_mask_gets_a_note(tmp_path, value, what):
    with pytest.warns(Note, match=f"mask.png: the drawn mask marks {what}"):
        mask = _supports(tmp_path, Image.new("L", SIZE, value))
    assert mask.all() == bool(value) and mask.any() == bool(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mask with both object and background is not noted
        _supports(tmp_path, Image.fromarray(_square().astype(np.uint8) * 255))


# ------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize("vocab", [["cat"], ["cats"], ["Cat", " "], [""]])
def test_a_vocabulary_that_leaves_no_competitor_is_refused(vocab):
    with pytest.raises(InputError, match="`background` leaves the label 'cat' nothing to compete with"):
        background_vocabulary("cat", vocab)


def test_the_other_classes_of_a_run_are_competitors_even_when_vocab_names_only_the_label():
    assert class_vocabulary("cat", ["cat", "dog"], ["cat"]) == ["cat", "dog"]
    assert class_vocabulary("dog", ["cat", "dog"], ["cat", "bus"]) == ["dog", "cat", "bus"]
    with pytest.raises(InputError, match="nothing to compete with"):
        class_vocabulary("cat", ["cat"], ["cat"])


def test_the_label_and_blank_names_leave_the_vocabulary():
    assert background_vocabulary("cat", ["cats", "", "dog", "Dog"]) == ["cat", "dog"]
    assert background_vocabulary("person", None)[:2] == ["person", "aeroplane"]


# --------------------------------------------------------------------- templates
@pytest.mark.parametrize("template, message", [
    ("a {c} {}", "has {}, which nothing fills in"),
    ("{c} {x}", "has {x}, which nothing fills in"),
    ("{c} }", "is not a template \\(Single '}'"),
    ("{{c}}", "has no {c}"),
    ("{c:d}", "has {c:d}: the class name goes in as it is, with no format spec or conversion"),
    ("a {c:>50000000}", "has {c:>50000000}: the class name goes in as it is"),
    ("{c!r} {c}", "has {c!r}: the class name goes in as it is"),
])
def test_templates_that_do_not_format_a_class_name_are_refused(template, message):
    import open_clip

    with pytest.raises(InputError, match=message):
        check_template(template)
    # check_label is what a folder run calls before any model loads.
    with pytest.raises(InputError, match=message):
        check_label(open_clip.get_tokenizer("RN50-quickgelu"), template, "cat")


def test_good_templates_pass():
    for template in ("a photo of a {c}", "{c}", "{{literal}} {c} {c}"):
        check_template(template)


def test_clip_cam_checks_its_template(recipe_clip):
    from imrseg.clip.cam import ClipCAM

    with pytest.raises(InputError, match="has {x}"):
        ClipCAM(recipe_clip, template="{c} {x}")


# ---------------------------------------------------------------------- Ctrl-C
SLOW_LOAD = """
import sys, time
import imrseg.hub

def slow(*args, **kwargs):
    try:
        print("loading", flush=True)
        time.sleep(60)
    finally:
        print("cleaning up", flush=True)
        time.sleep({cleanup})

imrseg.hub.resolve_weights = slow
from imrseg.cli import main
sys.argv = ["imrseg", "weights", "info", "best_model.pt"]
main()
"""


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_while_a_model_loads_says_so_once(presses):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_LOAD.format(cleanup=60 if presses == 2 else 0)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "loading\n"
        proc.send_signal(signal.SIGINT)
        if presses == 2:  # the second lands while the first is being cleaned up
            assert proc.stdout.readline() == "cleaning up\n"
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr == "imrseg: interrupted\n"


def test_library_errors_name_parameters_and_the_cli_names_flags():
    from imrseg.cli import app, parameter_flags
    from imrseg.cli import commands  # noqa: F401  (registers the commands)
    from imrseg.errors import in_terms_of, param
    import typer

    with pytest.raises(InputError, match="^`template` 'a photo' has no"):
        check_template("a photo")
    flags = parameter_flags(typer.main.get_command(app), "segment")
    assert flags["template"] == "--prompt-template" and flags["max_pixels"] == "--max-pixels"
    assert in_terms_of(f"{param('max_pixels')} must be 1 or more; see `imrseg segment`", flags) == \
        "--max-pixels must be 1 or more; see `imrseg segment`"
    assert parameter_flags(typer.main.get_command(app), "export")["out"] == "OUT"


@pytest.mark.parametrize("max_pixels, message", [
    ("-1", "--max-pixels must be 0 or more, not -1"),
    ("100", "a.png: image has 1200 pixels, over the limit of 100 (decompression-bomb guard); "
            "pass --max-pixels to raise it"),
])
def test_the_command_names_the_max_pixels_flag(tmp_path, monkeypatch, max_pixels, message):
    from typer.testing import CliRunner

    from imrseg.cli import _register, app

    _register()
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["segment", "-l", "cat", "-s", "a.png", "-q", "a.png", "-o", "out",
                                      "--max-pixels", max_pixels])
    assert result.exit_code == 2 and result.output == f"imrseg: error: {message}\n", result.output
