"""imrseg.images: odd and bad image files, and finding images in folders.

Fast and torch-free: every image is made here, a few dozen pixels on a side.
"""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from imrseg import images
from imrseg.errors import InputError

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

    loaded = images.load_image(path, draft_size=0)

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
    loaded = images.load_image(path, draft_size=0)
    assert loaded.size == upright.size
    assert np.array_equal(np.asarray(loaded.image), np.asarray(upright))


def test_orientation_also_applies_to_reduced_image(tmp_path):
    path = tmp_path / "big.jpg"
    stored(quadrants(3000, 2000), 6).save(path, exif=exif(6), quality=90)
    loaded = images.load_image(path)
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
    loaded = images.load_image(path)
    assert loaded.size == (48, 32) and loaded.image.mode == "RGB"


# --------------------------------------------------------------------------- colour modes


def load_array(path: Path) -> np.ndarray:
    loaded = images.load_image(path, draft_size=0)
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
    assert tuple(a[0, 1]) == images.ALPHA_BACKGROUND
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
    loaded = images.load_image(path, draft_size=500)
    assert loaded.size == (4000, 3000)
    assert loaded.image.size == (500, 375)
    assert decoded and max(decoded) == (500, 375)  # 1/8 scale: the full image never existed


def test_small_image_is_not_enlarged(tmp_path):
    quadrants(48, 32).save(tmp_path / "s.png")
    assert images.load_image(tmp_path / "s.png", draft_size=1000).image.size == (48, 32)
    assert images.load_image(tmp_path / "s.png", draft_size=24).image.size == (24, 16)


def test_bomb_guard_default_refuses_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 10000))
    with pytest.raises(InputError) as exc:
        images.load_image(path)
    assert str(exc.value) == (
        f"{path}: image has 200000000 pixels, over the limit of {images.DEFAULT_MAX_PIXELS} "
        "(decompression-bomb guard); pass `max_pixels` to raise it"
    )
    with pytest.raises(InputError):
        images.load_image(path, max_pixels=0)  # 0 means the default


def test_bomb_guard_override(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    quadrants(100, 50).save(path)
    with pytest.raises(InputError, match="image has 5000 pixels, over the limit of 4999"):
        images.load_image(path, max_pixels=4999)
    assert images.load_image(path, max_pixels=5000).size == (100, 50)

    monkeypatch.setattr(images, "DEFAULT_MAX_PIXELS", 1000)
    with pytest.raises(InputError, match="over the limit of 1000"):
        images.load_image(path)

    # Our limit replaces Pillow's global one while loading, and Pillow's is restored after.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert images.load_image(path, max_pixels=10**6).size == (100, 50)
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
        images.load_image(path)
    assert_one_line_naming(exc, path, *words)


def test_error_after_decoding_is_input_error(tmp_path, monkeypatch):
    quadrants().save(tmp_path / "a.tif")

    def inconsistent(img):  # what Pillow raises when a file changes while it is read
        raise SystemError("tile cannot extend outside image")

    monkeypatch.setattr(images, "_to_rgb", inconsistent)
    with pytest.raises(InputError) as exc:
        images.load_image(tmp_path / "a.tif")
    assert_one_line_naming(exc, tmp_path / "a.tif", "truncated or corrupt", "tile cannot extend")


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    quadrants().save(path)
    path.chmod(0)
    try:
        if not os.access(path, os.R_OK):  # a real refusal, when not running as root
            with pytest.raises(InputError) as exc:
                images.load_image(path)
            assert_one_line_naming(exc, path, "permission denied")
    finally:
        path.chmod(0o644)

    # Root reads anything, so also refuse the open itself.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", refuse, raising=False)
    with pytest.raises(InputError) as exc:
        images.load_image(path)
    assert_one_line_naming(exc, path, "permission denied")


def test_odd_file_names_stay_on_one_line(tmp_path):
    path = tmp_path / "new\nline\udcff.jpg"
    try:
        path.write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses such names")
    with pytest.raises(InputError) as exc:
        images.load_image(path)
    message = str(exc.value)
    assert "\n" not in message and "new\\nline\\udcff.jpg" in message
    message.encode("utf-8")  # printable on any terminal


def test_bad_arguments(tmp_path):
    quadrants().save(tmp_path / "a.png")
    with pytest.raises(InputError, match="`max_pixels` must be 0 or more"):
        images.load_image(tmp_path / "a.png", max_pixels=-1)
    with pytest.raises(InputError, match="`draft_size` must be 0 or more"):
        images.load_image(tmp_path / "a.png", draft_size=-5)


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
    loaded = images.load_image(path, draft_size=draft_size)
    assert loaded.image.mode == "RGB"
    assert loaded.size == displayed
    assert loaded.image.size == images._fit(displayed, draft_size)


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
        loaded = images.load_image(path, max_pixels=10**6, draft_size=32)
    except InputError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == images._fit(loaded.size, 32)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_bytes_never_crash(tmp_path, data):
    path = tmp_path / "noise.jpg"
    path.write_bytes(data)
    try:
        loaded = images.load_image(path, max_pixels=10**6)
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
    for rel in ["b.jpg", "a.PNG", "sub/c.JpEg", "sub/deeper/d.webp", "e.tif", "f.TIFF", "g.bmp", "h.gif",
                "i.PPM", "j.pgm", "k.pbm", "l.avif"]:
        touch_image(q / rel)
    for rel in ["notes.txt", ".hidden.jpg", "._a.jpg", ".cache/x.jpg", "m.heic"]:
        touch_image(q / rel)
    odd = touch_image(tmp_path / "explicit.xyz")

    found = images.find_images([q, odd])

    assert [str(p.relative_to(tmp_path)) for p, _ in found] == [
        "q/a.PNG", "q/b.jpg", "q/e.tif", "q/f.TIFF", "q/g.bmp", "q/h.gif", "q/i.PPM", "q/j.pgm", "q/k.pbm",
        "q/l.avif", "q/sub/c.JpEg", "q/sub/deeper/d.webp", "explicit.xyz",
    ]
    assert all(root == q for _, root in found[:-1])
    assert found[-1] == (odd, tmp_path)
    assert images.find_images([q, odd]) == found  # stable


def test_the_search_takes_the_formats_that_are_decoded():
    registered = Image.registered_extensions()  # AVIF only where Pillow has it
    assert all(registered[ext] in images._DECODERS for ext in images.IMAGE_EXTENSIONS if ext in registered)
    assert {".gif", ".ppm", ".pgm", ".pbm", ".avif"} <= images.IMAGE_EXTENSIONS


def test_find_images_skips_excluded_files_even_when_named(tmp_path):
    q = tmp_path / "q"
    a, written = touch_image(q / "a.jpg"), touch_image(q / "a.png")

    assert images.find_images([q], exclude=[written]) == [(a, q)]
    assert images.find_images([a, written], exclude=[written]) == [(a, q)]
    with pytest.raises(InputError, match="q/a.png: no images left"):
        images.find_images([written], exclude=[written])
    with pytest.raises(InputError, match="no images found .* other than imrseg's own outputs"):
        images.find_images([q], exclude=[a, written])


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "no images found"),
])
def test_find_images_errors(tmp_path, make, words):
    path = tmp_path / "queries"
    make(path)
    with pytest.raises(InputError) as exc:
        images.find_images([path])
    assert_one_line_naming(exc, path, words)


def test_find_images_unlistable_subfolder(tmp_path, monkeypatch):
    touch_image(tmp_path / "q" / "a.jpg")

    def walk(top, onerror=None, followlinks=False):
        onerror(PermissionError(13, "Permission denied", str(top)))
        yield from ()

    monkeypatch.setattr(images.os, "walk", walk)
    with pytest.raises(InputError, match="cannot list folder .Permission denied."):
        images.find_images([tmp_path / "q"])
