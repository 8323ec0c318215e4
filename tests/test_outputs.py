"""imrseg.outputs: naming outputs (never outside --out, never shared, never over an input) and
encoding them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import write_image
from imrseg.outputs import masks, naming as outputs
from imrseg.outputs.overlay import save_overlay
from imrseg.errors import InputError


# --------------------------------------------------------------------------- output naming


def test_output_stem_mirrors_the_tree(tmp_path):
    out = tmp_path / "out"
    assert outputs.output_stem(tmp_path / "q/sub/a.b.jpg", tmp_path / "q", out) == out / "sub/a.b"
    stem = out / "x"
    assert outputs.output_path(stem, outputs.MASK_SUFFIX) == out / "x.png"
    assert outputs.output_path(stem, outputs.OVERLAY_SUFFIX) == out / "x_overlay.jpg"
    assert outputs.output_path(stem, outputs.CAM_SUFFIX) == out / "x_cam.png"
    assert outputs.output_path(stem, outputs.PROB_SUFFIX) == out / "x_prob.png"
    assert outputs.output_path(stem, outputs.step_suffix(3)) == out / "x_step3.png"


def test_output_stem_never_escapes(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "link").symlink_to(tmp_path, target_is_directory=True)
    q = tmp_path / "q"
    with pytest.raises(InputError, match="cannot name an output"):
        outputs.output_stem(q / ".." / "etc" / "x.jpg", q, out)
    with pytest.raises(InputError, match="not inside its root"):
        outputs.output_stem(Path("/etc/passwd.jpg"), q, out)
    with pytest.raises(InputError, match="outside the output folder"):
        outputs.output_stem(q / "link" / "x.jpg", q, out)
    assert outputs.output_stem(q / "sub" / "x.jpg", q, out) == out / "sub" / "x"


def all_outputs(stem: Path) -> set[str]:
    suffixes = [*outputs.OUTPUT_SUFFIXES, *(outputs.step_suffix(t) for t in range(12))]
    return {str(outputs.output_path(stem, s)).casefold() for s in suffixes}


def assert_no_overwrites(plan: dict[Path, Path], inputs) -> None:
    claimed = {str(p).casefold() for p, _ in inputs}
    for stem in plan.values():
        files = all_outputs(stem)
        assert not files & claimed, stem
        claimed |= files


def test_plan_disambiguates_collisions(tmp_path):
    q, out = tmp_path / "q", tmp_path / "out"
    names = ["a.jpg", "a.png", "a_png.jpg", "A.JPG", "b.jpg", "b_cam.jpg", "c_step2.jpg", "c.jpg"]
    images = [(q / n, q) for n in names]

    plan = outputs.plan_outputs(images, out)

    assert {p.name: s.name for p, s in plan.items()} == {
        "a.jpg": "a",
        "a.png": "a_png_2",  # a_png is a_png.jpg's own name
        "a_png.jpg": "a_png",
        "A.JPG": "A_jpg",  # caseless clash with a.jpg
        "b.jpg": "b",
        "b_cam.jpg": "b_cam_jpg",  # b_cam.png is b.jpg's CAM
        "c_step2.jpg": "c_step2",
        "c.jpg": "c_jpg",  # c_step2.png is taken, so c cannot write its steps
    }
    assert_no_overwrites(plan, images)
    assert outputs.plan_outputs(images, out) == plan


def test_plan_files_from_different_folders_and_output_inside_input(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    images = [(x / "a.jpg", x), (y / "a.jpg", y), (x / "b.png", x)]
    for image, _ in images:
        write_image(image, (8, 8))

    plan = outputs.plan_outputs(images, out_dir=x)  # output folder is an input folder

    assert plan == {x / "a.jpg": x / "a", y / "a.jpg": x / "a_jpg", x / "b.png": x / "b_png"}
    assert_no_overwrites(plan, images)


def test_plan_never_names_an_output_over_a_protected_input(tmp_path):
    s, q = tmp_path / "s", tmp_path / "q"
    images = [(q / "a.jpg", q), (q / "b.jpg", q), (q / "c.jpg", q)]

    plan = outputs.plan_outputs(images, s, protect=[s / "a.png", s / "B_overlay.jpg"])  # a support, a mask

    assert {p.name: stem.name for p, stem in plan.items()} == {"a.jpg": "a_jpg", "b.jpg": "b_jpg", "c.jpg": "c"}


@settings(max_examples=200, deadline=None)
@given(st.lists(
    st.tuples(
        st.sampled_from(["", "sub/"]),
        st.sampled_from(["a", "A", "a_png", "a_cam", "a_prob", "a_step1", "a_overlay", "a_jpg", "a_2"]),
        st.sampled_from([".jpg", ".png", ".JPG", ".tif", ""]),
    ),
    max_size=12,
))
def test_plan_never_overwrites(names):
    root = Path("/data/q")
    images = [(root / f"{d}{n}{e}", root) for d, n, e in dict.fromkeys(names)]
    for out in (Path("/data/out"), root):
        plan = outputs.plan_outputs(images, out)
        assert list(plan) == [p for p, _ in images]
        assert_no_overwrites(plan, images)
        assert all(s.is_relative_to(out) for s in plan.values())


def test_save_mask_png(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    masks.save_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "L" and im.size == (7, 5)
        a = np.asarray(im)
    assert set(np.unique(a)) == {0, 255}
    assert np.array_equal(a == 255, mask)
    with pytest.raises(ValueError, match="2-D"):
        masks.save_mask_png(tmp_path / "bad.png", np.zeros((2, 2, 3)))


def test_save_gray_png(tmp_path):
    masks.save_gray_png(tmp_path / "p.png", np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]]))
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "L"
        assert list(np.asarray(im)[0]) == [0, 128, 255, 255, 0, 0]


def test_save_heatmap_png(tmp_path):
    cam = np.array([[0.0, 1.0]], np.float32)
    masks.save_heatmap_png(tmp_path / "c.png", cam, (40, 10))
    with Image.open(tmp_path / "c.png") as im:
        assert im.mode == "RGB" and im.size == (40, 10)
        a = np.asarray(im).astype(int)
    assert a[5, 0, 2] > 100 and a[5, 0, 0] < 50  # low: blue
    assert a[5, 39, 0] > 100 and a[5, 39, 2] < 50  # high: red


def test_save_overlay(tmp_path):
    image = Image.new("RGB", (60, 40), (0, 0, 255))
    mask = np.zeros((80, 120), bool)  # full-size mask, twice the picture
    mask[20:60, 30:90] = True
    save_overlay(tmp_path / "o.jpg", image, mask)
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG" and im.size == (60, 40)
        a = np.asarray(im).astype(int)
    assert a[20, 30, 0] > 80  # tinted inside
    assert np.abs(a[2, 2] - (0, 0, 255)).max() < 20  # untouched outside
    assert a[10, 30, 0] > 150 and a[10, 30, 1] > 150  # yellow contour on the top edge
    save_overlay(tmp_path / "o2.jpg", np.asarray(image), mask[::2, ::2])
    assert (tmp_path / "o2.jpg").stat().st_size > 0


def test_completed_outputs(tmp_path):
    stem = tmp_path / "out" / "a"
    required = (outputs.MASK_SUFFIX, outputs.OVERLAY_SUFFIX)
    assert not outputs.completed_outputs(stem, required)
    masks.save_mask_png(outputs.output_path(stem, outputs.MASK_SUFFIX), np.ones((2, 2), bool))
    assert not outputs.completed_outputs(stem, required)
    outputs.output_path(stem, outputs.OVERLAY_SUFFIX).write_bytes(b"")
    assert not outputs.completed_outputs(stem, required)
    overlay = outputs.output_path(stem, outputs.OVERLAY_SUFFIX)
    save_overlay(overlay, Image.new("RGB", (2, 2)), np.ones((2, 2)))
    assert outputs.completed_outputs(stem, required)
    overlay.rename(tmp_path / "elsewhere.jpg")
    overlay.symlink_to(tmp_path / "elsewhere.jpg")  # a link is not an output imrseg wrote
    assert not outputs.completed_outputs(stem, required)
