"""imrseg.io: odd and bad image files, output naming, atomic writes, the results log.

Fast and torch-free: every image is made here, a few dozen pixels on a side.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from imrseg import io as iio
from imrseg.errors import ImrsegError, InputError

# Damaged files make Pillow warn about their metadata; the tests look at what load_image does.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

REPO = Path(__file__).resolve().parents[1]
TRANSPOSED = (5, 6, 7, 8)
# Inverse of the transpose a viewer applies for each EXIF orientation: stores an upright picture.
STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
QUADRANTS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]


def quadrants(width: int = 48, height: int = 32) -> Image.Image:
    """Four flat colours, so any flip or rotation is visible after JPEG compression."""
    a = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    a[:h2, :w2], a[:h2, w2:], a[h2:, :w2], a[h2:, w2:] = QUADRANTS
    return Image.fromarray(a)


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def stored(upright: Image.Image, orientation: int) -> Image.Image:
    return upright if STORE[orientation] is None else upright.transpose(STORE[orientation])


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds almost no pixel data (no memory to build)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_what_a_viewer_shows(tmp_path, orientation):
    upright = quadrants()
    path = tmp_path / f"o{orientation}.jpg"
    stored(upright, orientation).save(path, exif=exif(orientation), quality=95)

    loaded = iio.load_image(path, draft_size=0)

    assert loaded.size == upright.size == loaded.image.size
    assert loaded.image.mode == "RGB"
    with Image.open(path) as reference:
        expected = ImageOps.exif_transpose(reference).convert("RGB")
    assert np.array_equal(np.asarray(loaded.image), np.asarray(expected))
    a = np.asarray(loaded.image).astype(int)
    for (y, x), colour in zip([(8, 12), (8, 36), (24, 12), (24, 36)], QUADRANTS):
        assert np.abs(a[y, x] - colour).max() < 30


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
def test_exif_orientation_other_formats(tmp_path, fmt, orientation):
    upright = quadrants()
    path = tmp_path / f"o.{fmt.lower()}"
    stored(upright, orientation).save(path, format=fmt, exif=exif(orientation), lossless=True)
    loaded = iio.load_image(path, draft_size=0)
    assert loaded.size == upright.size
    assert np.array_equal(np.asarray(loaded.image), np.asarray(upright))


def test_orientation_also_applies_to_reduced_image(tmp_path):
    path = tmp_path / "big.jpg"
    stored(quadrants(3000, 2000), 6).save(path, exif=exif(6), quality=90)
    loaded = iio.load_image(path)
    assert loaded.size == (3000, 2000)
    assert loaded.image.size == (1024, 683)
    a = np.asarray(loaded.image).astype(int)
    assert np.abs(a[100, 100] - QUADRANTS[0]).max() < 30
    assert np.abs(a[600, 1000] - QUADRANTS[3]).max() < 30


@pytest.mark.parametrize(
    "exif_bytes",
    [
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12",  # IFD cut short
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00"
        b"\x00\x00\x00\x00\x00\x00",  # orientation 9 does not exist
        b"Exif\x00\x00garbage",
    ],
)
def test_broken_exif_is_ignored(tmp_path, exif_bytes):
    path = tmp_path / "broken_exif.jpg"
    quadrants().save(path, exif=exif_bytes)
    loaded = iio.load_image(path)
    assert loaded.size == (48, 32) and loaded.image.mode == "RGB"


# --------------------------------------------------------------------------- colour modes


def load_array(path: Path) -> np.ndarray:
    loaded = iio.load_image(path, draft_size=0)
    assert loaded.image.mode == "RGB"
    assert loaded.size == loaded.image.size
    return np.asarray(loaded.image)


def test_grey_and_bilevel(tmp_path):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (4, 1))
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert np.array_equal(load_array(tmp_path / "l.png"), np.repeat(grey[..., None], 3, axis=2))

    Image.fromarray(grey >= 128).save(tmp_path / "one.png")  # mode "1"
    with Image.open(tmp_path / "one.png") as im:
        assert im.mode == "1"
    a = load_array(tmp_path / "one.png")
    assert set(np.unique(a)) == {0, 255}
    assert np.array_equal(a[..., 0] == 255, grey >= 128)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque
    rgba[0, 1] = (200, 10, 10, 0)  # transparent
    rgba[0, 2] = (0, 0, 0, 128)  # half: mid grey on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = load_array(tmp_path / "rgba.png").astype(int)
    assert tuple(a[0, 0]) == (200, 10, 10)
    assert tuple(a[0, 1]) == iio.ALPHA_BACKGROUND
    assert np.abs(a[0, 2] - 127).max() <= 1

    la = np.array([[[50, 255], [50, 0]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    a = load_array(tmp_path / "la.png")
    assert tuple(a[0, 0]) == (50, 50, 50) and tuple(a[0, 1]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (4, 2))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putdata([0, 1, 1, 1, 0, 0, 1, 1])
    p.save(tmp_path / "p.png", transparency=0)
    p.save(tmp_path / "p.gif", transparency=0)
    for name in ("p.png", "p.gif"):
        a = load_array(tmp_path / name)
        assert tuple(a[0, 0]) == (255, 255, 255)
        assert tuple(a[0, 1]) == (10, 200, 30)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(tmp_path, fmt):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.img", format=fmt)
    a = load_array(tmp_path / "c.img").astype(int)
    assert np.abs(a[4, 4] - (255, 0, 0)).max() < 10


@pytest.mark.parametrize("fmt, mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_16_bit_is_scaled_not_clipped(tmp_path, fmt, mode):
    values = np.array([[0, 1000, 32896, 65535]], np.uint16)
    Image.fromarray(values.astype(">u2" if mode == "I;16B" else "<u2")).save(tmp_path / "g", format=fmt)
    with Image.open(tmp_path / "g") as im:
        assert im.mode == mode
    assert list(load_array(tmp_path / "g")[0, :, 0]) == [0, 4, 128, 255]


@pytest.mark.parametrize("array", [
    np.array([[-70000, 0, 70000]], np.int32),
    np.array([[np.nan, 0.25, 0.5, 0.75, np.inf]], np.float32),
])
def test_32_bit_and_float_are_stretched(tmp_path, array):
    Image.fromarray(array).save(tmp_path / "i.tif")
    grey = load_array(tmp_path / "i.tif")[0, :, 0]
    finite = np.isfinite(array[0])
    assert grey[finite].min() == 0 and grey[finite].max() == 255
    assert np.all(grey[~finite] == 0)
    assert np.all(np.diff(grey[finite].astype(int)) > 0)


@pytest.mark.parametrize("ext", ["gif", "png", "webp"])
def test_animation_uses_first_frame(tmp_path, ext):
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / f"anim.{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    with Image.open(path) as im:
        assert im.n_frames == 2
    a = load_array(path).astype(int)
    assert np.abs(a[5, 5] - (255, 0, 0)).max() <= 2


# --------------------------------------------------------------------------- size and memory


def test_huge_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    path = tmp_path / "big.jpg"
    quadrants(4000, 3000).save(path, quality=80)
    decoded = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self):
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    loaded = iio.load_image(path, draft_size=500)
    assert loaded.size == (4000, 3000)
    assert loaded.image.size == (500, 375)
    assert decoded and max(decoded) == (500, 375)  # 1/8 scale: the full image never existed


def test_small_image_is_not_enlarged(tmp_path):
    quadrants(48, 32).save(tmp_path / "s.png")
    assert iio.load_image(tmp_path / "s.png", draft_size=1000).image.size == (48, 32)
    assert iio.load_image(tmp_path / "s.png", draft_size=24).image.size == (24, 16)


def test_bomb_guard_default_refuses_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 10000))
    with pytest.raises(InputError) as exc:
        iio.load_image(path)
    assert str(exc.value) == (
        f"{path}: image has 200000000 pixels, over the limit of {iio.DEFAULT_MAX_PIXELS} "
        "(decompression-bomb guard); pass --max-pixels to raise it"
    )
    with pytest.raises(InputError):
        iio.load_image(path, max_pixels=0)  # 0 means the default


def test_bomb_guard_override(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    quadrants(100, 50).save(path)
    with pytest.raises(InputError, match="image has 5000 pixels, over the limit of 4999"):
        iio.load_image(path, max_pixels=4999)
    assert iio.load_image(path, max_pixels=5000).size == (100, 50)

    monkeypatch.setattr(iio, "DEFAULT_MAX_PIXELS", 1000)
    with pytest.raises(InputError, match="over the limit of 1000"):
        iio.load_image(path)

    # Our limit replaces Pillow's global one while loading, and Pillow's is restored after.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert iio.load_image(path, max_pixels=10**6).size == (100, 50)
    assert Image.MAX_IMAGE_PIXELS == 10


# --------------------------------------------------------------------------- unreadable files


def truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    quadrants(200, 200).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def truncated_png(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[:300])


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("trunc.jpg", truncated_jpeg, ["truncated"]),
        ("trunc.png", truncated_png, ["truncated"]),
        ("empty.jpg", lambda p: p.write_bytes(b""), ["empty file (0 bytes)"]),
        ("text.jpg", lambda p: p.write_text("not a picture\n"), ["not an image"]),
        ("dir.jpg", lambda p: p.mkdir(), ["is a directory"]),
        ("missing.jpg", lambda p: None, ["no such file"]),
        ("dangling.jpg", lambda p: p.symlink_to(p.with_name("gone.jpg")), ["broken symbolic link"]),
        pytest.param("pipe.jpg", lambda p: os.mkfifo(p), ["not a regular file"],
                     marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")),
        ("eps.jpg", lambda p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"),
         ["not an image"]),
    ],
)
def test_unreadable_files_raise_input_error_naming_the_file(tmp_path, name, make, words):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError) as exc:
        iio.load_image(path)
    assert_one_line_naming(exc, path, *words)


def test_error_after_decoding_is_input_error(tmp_path, monkeypatch):
    quadrants().save(tmp_path / "a.tif")

    def inconsistent(img):  # what Pillow raises when a file changes while it is read
        raise SystemError("tile cannot extend outside image")

    monkeypatch.setattr(iio, "_to_rgb", inconsistent)
    with pytest.raises(InputError) as exc:
        iio.load_image(tmp_path / "a.tif")
    assert_one_line_naming(exc, tmp_path / "a.tif", "truncated or corrupt", "tile cannot extend")


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    quadrants().save(path)
    path.chmod(0)
    try:
        if not os.access(path, os.R_OK):  # a real refusal, when not running as root
            with pytest.raises(InputError) as exc:
                iio.load_image(path)
            assert_one_line_naming(exc, path, "permission denied")
    finally:
        path.chmod(0o644)

    # Root reads anything, so also refuse the open itself.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(iio, "open", refuse, raising=False)
    with pytest.raises(InputError) as exc:
        iio.load_image(path)
    assert_one_line_naming(exc, path, "permission denied")


def test_odd_file_names_stay_on_one_line(tmp_path):
    path = tmp_path / "new\nline\udcff.jpg"
    try:
        path.write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses such names")
    with pytest.raises(InputError) as exc:
        iio.load_image(path)
    message = str(exc.value)
    assert "\n" not in message and "new\\nline\\udcff.jpg" in message
    message.encode("utf-8")  # printable on any terminal


def test_bad_arguments(tmp_path):
    quadrants().save(tmp_path / "a.png")
    with pytest.raises(InputError, match="--max-pixels"):
        iio.load_image(tmp_path / "a.png", max_pixels=-1)
    with pytest.raises(InputError, match="draft size"):
        iio.load_image(tmp_path / "a.png", draft_size=-5)


# --------------------------------------------------------------------------- property-based

MODE_FORMATS = {
    "1": ["PNG", "BMP", "TIFF"],
    "L": ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"],
    "LA": ["PNG", "TIFF", "WEBP"],
    "P": ["PNG", "BMP", "GIF", "TIFF"],
    "RGB": ["PNG", "JPEG", "BMP", "TIFF", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I;16B": ["TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}
EXIF_FORMATS = {"PNG", "JPEG", "TIFF", "WEBP"}


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I;16B"):
        a = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        return Image.fromarray(a.astype(">u2" if mode == "I;16B" else "<u2"))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (height, width), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(size=(height, width)).astype(np.float32))
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    return rgba.convert(mode)


@st.composite
def image_files(draw):
    mode = draw(st.sampled_from(sorted(MODE_FORMATS)))
    fmt = draw(st.sampled_from(MODE_FORMATS[mode]))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    orientation = draw(st.integers(1, 8)) if fmt in EXIF_FORMATS else 1
    image = random_image(mode, width, height, draw(st.integers(0, 2**16)))
    buf = io.BytesIO()
    options = {"exif": exif(orientation)} if fmt in EXIF_FORMATS else {}
    if mode == "P" and draw(st.booleans()):
        options["transparency"] = 0
    image.save(buf, format=fmt, **options)
    displayed = (height, width) if orientation in TRANSPOSED else (width, height)
    return buf.getvalue(), displayed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image_files(), st.integers(0, 50))
def test_any_mode_size_orientation_loads_as_rgb_of_displayed_size(tmp_path, made, draft_size):
    data, displayed = made
    path = tmp_path / "random.img"
    path.write_bytes(data)
    loaded = iio.load_image(path, draft_size=draft_size)
    assert loaded.image.mode == "RGB"
    assert loaded.size == displayed
    assert loaded.image.size == iio._fit(displayed, draft_size)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image_files(), st.data())
def test_damaged_files_load_or_raise_input_error(tmp_path, made, data):
    original, _ = made
    damaged = bytearray(original)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(1, max(1, len(damaged) - 1)), label="keep")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    assume(bytes(damaged) != original)
    path = tmp_path / "damaged.img"
    path.write_bytes(bytes(damaged))
    try:
        loaded = iio.load_image(path, max_pixels=10**6, draft_size=32)
    except InputError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == iio._fit(loaded.size, 32)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_never_crash(tmp_path, data):
    path = tmp_path / "noise.jpg"
    path.write_bytes(data)
    try:
        loaded = iio.load_image(path, max_pixels=10**6)
    except InputError:
        return
    assert loaded.image.mode == "RGB"


# --------------------------------------------------------------------------- finding images


def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    quadrants(8, 8).save(path, format="PNG")
    return path


def test_find_images_in_folders_and_files(tmp_path):
    q = tmp_path / "q"
    for rel in ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "e.tif", "f.TIFF", "g.bmp"]:
        touch_image(q / rel)
    for rel in ["notes.txt", ".hidden.jpg", "._a.jpg", ".cache/x.jpg", "anim.gif"]:
        touch_image(q / rel)
    odd = touch_image(tmp_path / "explicit.gif")

    found = iio.find_images([q, odd])

    assert [str(p.relative_to(tmp_path)) for p, _ in found] == [
        "q/a.PNG", "q/b.jpg", "q/e.tif", "q/f.TIFF", "q/g.bmp",
        "q/sub/c.JpEg", "q/sub/deeper/d.webp", "explicit.gif",
    ]
    assert all(root == q for _, root in found[:-1])
    assert found[-1] == (odd, tmp_path)
    assert iio.find_images([q, odd]) == found  # stable


def test_find_images_dedupes_excludes_and_skips_symlinked_folders(tmp_path):
    q = tmp_path / "q"
    touch_image(q / "a.jpg")
    touch_image(q / "out" / "a.png")
    (q / "loop").symlink_to(q, target_is_directory=True)

    found = iio.find_images([q, q / "a.jpg"], exclude=[q / "out"])

    assert found == [(q / "a.jpg", q)]


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "no images found"),
])
def test_find_images_errors(tmp_path, make, words):
    path = tmp_path / "queries"
    make(path)
    with pytest.raises(InputError) as exc:
        iio.find_images([path])
    assert_one_line_naming(exc, path, words)


def test_find_images_unlistable_subfolder(tmp_path, monkeypatch):
    touch_image(tmp_path / "q" / "a.jpg")

    def walk(top, onerror=None, followlinks=False):
        onerror(PermissionError(13, "Permission denied", str(top)))
        yield from ()

    monkeypatch.setattr(iio.os, "walk", walk)
    with pytest.raises(InputError, match="cannot list folder .Permission denied."):
        iio.find_images([tmp_path / "q"])


# --------------------------------------------------------------------------- output naming


def test_output_stem_mirrors_the_tree(tmp_path):
    out = tmp_path / "out"
    assert iio.output_stem(tmp_path / "q/sub/a.b.jpg", tmp_path / "q", out) == out / "sub/a.b"
    stem = out / "x"
    assert iio.output_path(stem, iio.MASK_SUFFIX) == out / "x.png"
    assert iio.output_path(stem, iio.OVERLAY_SUFFIX) == out / "x_overlay.jpg"
    assert iio.output_path(stem, iio.CAM_SUFFIX) == out / "x_cam.png"
    assert iio.output_path(stem, iio.PROB_SUFFIX) == out / "x_prob.png"
    assert iio.output_path(stem, iio.step_suffix(3)) == out / "x_step3.png"


def test_output_stem_never_escapes(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "link").symlink_to(tmp_path, target_is_directory=True)
    q = tmp_path / "q"
    with pytest.raises(InputError, match="cannot name an output"):
        iio.output_stem(q / ".." / "etc" / "x.jpg", q, out)
    with pytest.raises(InputError, match="not inside its root"):
        iio.output_stem(Path("/etc/passwd.jpg"), q, out)
    with pytest.raises(InputError, match="outside the output folder"):
        iio.output_stem(q / "link" / "x.jpg", q, out)
    assert iio.output_stem(q / "sub" / "x.jpg", q, out) == out / "sub" / "x"


def all_outputs(stem: Path) -> set[str]:
    suffixes = [*iio.OUTPUT_SUFFIXES, *(iio.step_suffix(t) for t in range(12))]
    return {str(iio.output_path(stem, s)).casefold() for s in suffixes}


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

    plan = iio.plan_outputs(images, out)

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
    assert iio.plan_outputs(images, out) == plan


def test_plan_files_from_different_folders_and_output_inside_input(tmp_path):
    x, y = tmp_path / "x", tmp_path / "y"
    images = [(x / "a.jpg", x), (y / "a.jpg", y), (x / "b.png", x)]
    for image, _ in images:
        touch_image(image)

    plan = iio.plan_outputs(images, out_dir=x)  # output folder is an input folder

    assert plan == {x / "a.jpg": x / "a", y / "a.jpg": x / "a_jpg", x / "b.png": x / "b_png"}
    assert_no_overwrites(plan, images)


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
        plan = iio.plan_outputs(images, out)
        assert list(plan) == [p for p, _ in images]
        assert_no_overwrites(plan, images)
        assert all(s.is_relative_to(out) for s in plan.values())


# --------------------------------------------------------------------------- atomic writes


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "new" / "deep" / "f.bin"
    iio.atomic_write_bytes(path, b"one")
    iio.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert leftovers(path.parent) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        iio.atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "mask.png"
    path.write_bytes(b"old complete file")
    seen = []

    def fail_after_writing(fd):
        seen.append(os.fstat(fd).st_size)  # the data is already half on disk
        raise failure

    monkeypatch.setattr(iio.os, "fsync", fail_after_writing)
    with pytest.raises(ImrsegError if isinstance(failure, OSError) else KeyboardInterrupt) as exc:
        iio.atomic_write_bytes(path, b"new data " * 1000)
    assert seen == [9000]
    assert path.read_bytes() == b"old complete file"
    assert leftovers(tmp_path) == []
    if isinstance(failure, OSError):
        assert str(exc.value) == f"{path}: cannot write (No space left on device)"


def test_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(iio.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        iio.save_mask_png(tmp_path / "m.png", np.ones((4, 4), bool))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImrsegError, match="cannot write"):
        iio.atomic_write_bytes(tmp_path / "file" / "m.png", b"x")


def test_save_mask_png(tmp_path):
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    iio.save_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "L" and im.size == (7, 5)
        a = np.asarray(im)
    assert set(np.unique(a)) == {0, 255}
    assert np.array_equal(a == 255, mask)
    with pytest.raises(ValueError, match="2-D"):
        iio.save_mask_png(tmp_path / "bad.png", np.zeros((2, 2, 3)))


def test_save_gray_png(tmp_path):
    iio.save_gray_png(tmp_path / "p.png", np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]]))
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "L"
        assert list(np.asarray(im)[0]) == [0, 128, 255, 255, 0, 0]


def test_save_heatmap_png(tmp_path):
    cam = np.array([[0.0, 1.0]], np.float32)
    iio.save_heatmap_png(tmp_path / "c.png", cam, (40, 10))
    with Image.open(tmp_path / "c.png") as im:
        assert im.mode == "RGB" and im.size == (40, 10)
        a = np.asarray(im).astype(int)
    assert a[5, 0, 2] > 100 and a[5, 0, 0] < 50  # low: blue
    assert a[5, 39, 0] > 100 and a[5, 39, 2] < 50  # high: red


def test_save_overlay_jpg(tmp_path):
    image = Image.new("RGB", (60, 40), (0, 0, 255))
    mask = np.zeros((80, 120), bool)  # full-size mask, twice the picture
    mask[20:60, 30:90] = True
    iio.save_overlay_jpg(tmp_path / "o.jpg", image, mask)
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG" and im.size == (60, 40)
        a = np.asarray(im).astype(int)
    assert a[20, 30, 0] > 80  # tinted inside
    assert np.abs(a[2, 2] - (0, 0, 255)).max() < 20  # untouched outside
    assert a[10, 30, 0] > 150 and a[10, 30, 1] > 150  # yellow contour on the top edge
    iio.save_overlay_jpg(tmp_path / "o2.jpg", np.asarray(image), mask[::2, ::2])
    assert (tmp_path / "o2.jpg").stat().st_size > 0


def test_completed_outputs(tmp_path):
    stem = tmp_path / "out" / "a"
    required = (iio.MASK_SUFFIX, iio.OVERLAY_SUFFIX)
    assert not iio.completed_outputs(stem, required)
    iio.save_mask_png(iio.output_path(stem, iio.MASK_SUFFIX), np.ones((2, 2), bool))
    assert not iio.completed_outputs(stem, required)
    iio.output_path(stem, iio.OVERLAY_SUFFIX).write_bytes(b"")
    assert not iio.completed_outputs(stem, required)
    iio.save_overlay_jpg(iio.output_path(stem, iio.OVERLAY_SUFFIX), Image.new("RGB", (2, 2)), np.ones((2, 2)))
    assert iio.completed_outputs(stem, required)


# --------------------------------------------------------------------------- results log


def test_results_log_round_trip(tmp_path):
    path = tmp_path / "runs" / "results.jsonl"
    with iio.ResultsLog(path) as log:
        log.write({"image": Path("q/a.jpg"), "iou": np.float32(0.5), "size": np.array([3, 4]), "ok": np.bool_(True)})
        log.write({"image": "q/é.jpg", "iou": None})
        log.write({"image": "q/undecodable\udcff.jpg"})
    assert iio.read_results(path) == [
        {"image": "q/a.jpg", "iou": 0.5, "size": [3, 4], "ok": True},
        {"image": "q/é.jpg", "iou": None},
        {"image": "q/undecodable\udcff.jpg"},
    ]
    assert iio.read_results(tmp_path / "absent.jsonl") == []


def test_torn_last_line_is_ignored_then_dropped(tmp_path):
    path = tmp_path / "results.jsonl"
    with iio.ResultsLog(path) as log:
        log.write({"n": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"n": 2, "ima')  # a write cut short by a kill
    assert iio.read_results(path) == [{"n": 1}]

    with iio.ResultsLog(path) as log:
        log.write({"n": 3})
    assert path.read_bytes() == b'{"n": 1}\n{"n": 3}\n'


def test_torn_only_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"n": 1}')  # even valid JSON counts only with its newline
    assert iio.read_results(path) == []
    with iio.ResultsLog(path) as log:
        log.write({"n": 2})
    assert iio.read_results(path) == [{"n": 2}]


def test_corrupt_middle_line_is_reported(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"n": 1}\n\n{oops\n{"n": 3}\n')
    with pytest.raises(InputError, match=r"results.jsonl:3: not a JSON row"):
        iio.read_results(path)
    path.write_bytes(b"[1, 2]\n")
    with pytest.raises(InputError, match=r"results.jsonl:1: not a JSON object"):
        iio.read_results(path)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_leaves_readable_log(tmp_path):
    path = tmp_path / "results.jsonl"
    script = (
        "import sys, itertools\n"
        "from imrseg.io import ResultsLog\n"
        "log = ResultsLog(sys.argv[1])\n"
        "for n in itertools.count():\n"
        "    log.write({'n': n, 'pad': 'x' * 5000})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env)
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 50_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = iio.read_results(path)
    assert len(rows) >= 5
    assert [r["n"] for r in rows] == list(range(len(rows)))
