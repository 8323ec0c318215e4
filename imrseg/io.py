"""File input and output for the `segment`, `zero-shot` and `eval` commands.

Reading
    `load_image` turns any readable image file into an RGB picture for the network
    plus the full size a viewer displays (EXIF orientation applied), or raises
    `InputError` with one line naming the file and the reason.
    `find_images` expands files and folders into query images.

Naming
    `output_stem` / `plan_outputs` map each query to a path stem under the output
    folder, never outside it and never shared by two queries. A stem `out/a/b` gets
    `out/a/b.png` (mask), `b_overlay.jpg`, `b_cam.png`, `b_prob.png`, `b_step{t}.png`.

Writing
    Every file is written atomically (temporary file in the same folder, fsync,
    `os.replace`), so a killed run leaves either the old file or the new one.
    `ResultsLog` appends one JSON row per query; `read_results` reads them back.

This module never imports torch, so the CLI can plan and skip work before loading a model.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImrsegError, InputError

__all__ = [
    "ALPHA_BACKGROUND",
    "CAM_SUFFIX",
    "DEFAULT_DRAFT_SIZE",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MASK_SUFFIX",
    "OUTPUT_SUFFIXES",
    "OVERLAY_SUFFIX",
    "PROB_SUFFIX",
    "LoadedImage",
    "ResultsLog",
    "atomic_write_bytes",
    "completed_outputs",
    "find_images",
    "load_image",
    "output_path",
    "output_stem",
    "plan_outputs",
    "read_results",
    "save_gray_png",
    "save_heatmap_png",
    "save_mask_png",
    "save_overlay_jpg",
    "step_suffix",
]

# Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS at its default), so the default
# behaviour matches stock Pillow while the message says how to raise it.
DEFAULT_MAX_PIXELS = 178_956_970
# Long side of the picture handed to the network: it resizes to 400x400 (CLIP to 224),
# so 1024 keeps ample detail while bounding memory for huge photos.
DEFAULT_DRAFT_SIZE = 1024
# Transparent pixels are composited on white, as most viewers and web pages show them.
ALPHA_BACKGROUND = (255, 255, 255)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = "_overlay.jpg"
CAM_SUFFIX = "_cam.png"
PROB_SUFFIX = "_prob.png"
OUTPUT_SUFFIXES = (MASK_SUFFIX, OVERLAY_SUFFIX, CAM_SUFFIX, PROB_SUFFIX)

OVERLAY_TINT = (255, 0, 0)
OVERLAY_ALPHA = 0.45
CONTOUR_COLOR = (255, 255, 0)
JPEG_QUALITY = 90

# Decoders we trust with untrusted files. Pillow would also try e.g. EPS, which runs
# Ghostscript, and many rarely exercised formats; a file in any other format is refused.
_DECODERS = ("JPEG", "PNG", "BMP", "DIB", "TIFF", "WEBP", "GIF", "PPM", "AVIF")

# EXIF orientation -> the transpose that shows the picture upright (ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})


def _show(path: os.PathLike | str) -> str:
    """The path as one printable line: control characters and undecodable bytes escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (Pillow's may span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the network.

    image: RGB, upright, at most `draft_size` on its long side (aspect ratio kept).
    size:  (width, height) of the full-resolution upright image, the size masks are written at.
    path:  the file it came from.
    """

    image: Image.Image
    size: tuple[int, int]
    path: Path


_guard_lock = threading.Lock()
_guard_users = 0
_pillow_limit: int | None = None


@contextlib.contextmanager
def _pillow_bomb_guard_off():
    """Switch off Pillow's process-wide pixel limit while our per-call limit applies.

    Pillow keeps its limit in a module global; the count keeps it off while any
    thread is decoding and restores it when the last one finishes.
    """
    global _guard_users, _pillow_limit
    with _guard_lock:
        if _guard_users == 0:
            _pillow_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_users += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit


def _decoders() -> list[str]:
    Image.init()  # registers every plugin, so the check below sees what this Pillow build has
    return [name for name in _DECODERS if name in Image.OPEN]


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        reason = "broken symbolic link" if path.is_symlink() else "no such file or directory"
    except PermissionError:
        reason = "permission denied"
    except OSError as exc:
        reason = f"cannot access ({exc.strerror or _one_line(exc)})"
    raise InputError(f"{_show(path)}: {reason}")


def _orientation(img: Image.Image) -> int:
    """EXIF (or XMP) orientation 1-8; broken or absent metadata counts as upright (1)."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # Pillow's EXIF parser raises many types on malformed data.
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _fit(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """`size` scaled down so its long side is at most `long_side` (0: unchanged)."""
    w, h = size
    if long_side == 0 or max(w, h) <= long_side:
        return size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8-bit without clipping.

    I;16 has a fixed range, so 0..65535 maps linearly to 0..255 (what a viewer shows).
    I and F carry no range, so their finite values are stretched from min..max to
    0..255; NaN/inf and constant images become black. (Pillow's own convert clips at 255.)
    """
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        return Image.fromarray(((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, np.uint8)
    if finite.any():
        lo, hi = a[finite].min(), a[finite].max()
        if hi > lo:
            out[finite] = np.round((a[finite] - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return Image.fromarray(out)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on ALPHA_BACKGROUND."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_l(img).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")  # also turns a palette/colour-key transparency into alpha
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode_error(path: Path, img: Image.Image, exc: Exception) -> InputError:
    if isinstance(exc, MemoryError):
        width, height = img.size
        return InputError(f"{_show(path)}: not enough memory to decode this {width}x{height} image")
    return InputError(f"{_show(path)}: image data is truncated or corrupt ({_one_line(exc)})")


def load_image(
    path: os.PathLike | str,
    max_pixels: int | None = None,
    draft_size: int | None = None,
) -> LoadedImage:
    """Read an image file for the network; raise InputError naming the file on any failure.

    max_pixels: refuse images with more pixels than this before decoding them
        (decompression-bomb guard); None or 0 means DEFAULT_MAX_PIXELS.
    draft_size: long side of `LoadedImage.image`; None means DEFAULT_DRAFT_SIZE,
        0 means full resolution. JPEGs are decoded directly at a reduced scale
        (draft mode), so a huge photo never exists in memory at full size.

    The first frame of animated files is used; EXIF orientation is applied to both
    the picture and `size`; every colour mode becomes RGB (see `_to_rgb`). Only JPEG,
    PNG, BMP, TIFF, WebP, GIF, PPM/PGM and AVIF (if Pillow has it) are decoded.
    """
    path = Path(path)
    if max_pixels is not None and max_pixels < 0:
        raise InputError(f"--max-pixels must be 0 or more, not {max_pixels}")
    if draft_size is not None and draft_size < 0:
        raise InputError(f"draft size must be 0 or more, not {draft_size}")
    limit = max_pixels or DEFAULT_MAX_PIXELS
    long_side = DEFAULT_DRAFT_SIZE if draft_size is None else draft_size

    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{_show(path)}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{_show(path)}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{_show(path)}: empty file (0 bytes)")
    try:
        fh = open(path, "rb")
    except PermissionError:
        raise InputError(f"{_show(path)}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{_show(path)}: cannot open ({exc.strerror or _one_line(exc)})") from exc

    with fh, _pillow_bomb_guard_off():
        try:
            img = Image.open(fh, formats=_decoders())
        except UnidentifiedImageError:
            raise InputError(
                f"{_show(path)}: not an image, or not in a supported format "
                "(JPEG, PNG, BMP, TIFF, WebP, GIF, PPM, AVIF)"
            ) from None
        except Exception as exc:  # malformed headers raise all sorts of types in Pillow plugins
            raise InputError(f"{_show(path)}: unreadable image header ({_one_line(exc)})") from exc

        width, height = img.size
        if width <= 0 or height <= 0:
            raise InputError(f"{_show(path)}: image has zero width or height")
        if width * height > limit:
            raise InputError(
                f"{_show(path)}: image has {width * height} pixels, over the limit of {limit} "
                "(decompression-bomb guard); pass --max-pixels to raise it"
            )
        # Sizes are in the decoder's frame until the final transpose; _fit is the same
        # in either frame, so the draft needs no orientation.
        target = _fit((width, height), long_side)
        try:
            img.draft("RGB", target)  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, not below target
            img.load()
            # Read after loading: some decoders (TIFF) apply the orientation themselves and drop the tag.
            orientation = _orientation(img)
            rgb = _to_rgb(img)
            if rgb.size != target:
                # reducing_gap box-averages by an integer factor first, then Lanczos: fast and sharp.
                rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        except Exception as exc:
            # Damaged data surfaces as OSError, SyntaxError, ValueError, even SystemError
            # (a file changed while read), during decoding or the conversion after it.
            raise _decode_error(path, img, exc) from exc
    if orientation in _UPRIGHT:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    displayed = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return LoadedImage(image=rgb, size=displayed, path=path)


def _is_hidden(name: str) -> bool:
    # Covers dot-folders, macOS "._x.jpg" resource forks (not images) and our own temp files.
    return name.startswith(".")


def find_images(
    paths: Iterable[os.PathLike | str], *, exclude: Iterable[os.PathLike | str] = ()
) -> list[tuple[Path, Path]]:
    """Expand files and folders into (image, root) pairs, in a stable order.

    A file is taken whatever its extension (load_image judges it), with its folder as
    root. A folder is searched recursively for IMAGE_EXTENSIONS (any case), skipping
    hidden names, symlinked subfolders (no cycles) and subfolders in `exclude` (pass
    the output folder so earlier results are not read back as queries); its images
    are sorted by relative path and it is their root. Arguments keep their order and
    an image reached twice is listed once. InputError for a missing path, an
    unlistable folder, or a folder without images.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    found: list[tuple[Path, Path]] = []

    def add(image: Path, root: Path) -> None:
        key = os.path.realpath(image)
        if key not in seen:
            seen.add(key)
            found.append((image, root))

    def unlistable(exc: OSError) -> None:
        raise InputError(
            f"{_show(exc.filename)}: cannot list folder ({exc.strerror or _one_line(exc)})"
        )

    for arg in paths:
        arg = Path(arg)
        _stat(arg)
        if not arg.is_dir():
            add(arg, arg.parent)
            continue
        images = []
        for dirpath, dirnames, filenames in os.walk(arg, onerror=unlistable):
            dirnames[:] = [
                d
                for d in dirnames
                if not _is_hidden(d) and os.path.realpath(os.path.join(dirpath, d)) not in excluded
            ]
            images += [
                Path(dirpath, f)
                for f in filenames
                if not _is_hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            ]
        if not images:
            raise InputError(
                f"{_show(arg)}: no images found (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} in it and its subfolders)"
            )
        for image in sorted(images, key=lambda p: p.relative_to(arg).parts):
            add(image, arg)
    return found


# --------------------------------------------------------------------------- naming


def step_suffix(t: int) -> str:
    """Suffix of the probability map after refinement step `t`: `_step{t}.png`."""
    return f"_step{t}.png"


def output_path(stem: os.PathLike | str, suffix: str) -> Path:
    """The file for `suffix` (e.g. MASK_SUFFIX, step_suffix(2)) next to `stem`."""
    stem = Path(stem)
    return stem.with_name(stem.name + suffix)


def output_stem(image_path: os.PathLike | str, root: os.PathLike | str, out_dir: os.PathLike | str) -> Path:
    """`out_dir / (image_path relative to root, extension removed)`.

    InputError if the image is not under root, or the stem would land outside out_dir
    (`..`, absolute parts, or a symlinked subfolder of out_dir pointing elsewhere).
    """
    image_path, root, out_dir = Path(image_path), Path(root), Path(out_dir)
    try:
        rel = image_path.relative_to(root)
    except ValueError:
        raise InputError(f"{_show(image_path)}: not inside its root folder {_show(root)}") from None
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{_show(image_path)}: cannot name an output for it under {_show(root)}")
    stem = out_dir / rel.with_suffix("")
    if not stem.parent.resolve().is_relative_to(out_dir.resolve()):
        raise InputError(
            f"{_show(stem)}: output would be written outside the output folder {_show(out_dir)}"
        )
    return stem


def _key(path: Path) -> str:
    """Identity of a file to be written: real folder + name, caseless (macOS/Windows/exFAT)."""
    return os.path.join(os.path.realpath(path.parent), path.name).casefold()


_STEP_FILE = re.compile(r"(.*)_step\d+\.png", re.DOTALL)


def plan_outputs(
    images: Iterable[tuple[os.PathLike | str, os.PathLike | str]], out_dir: os.PathLike | str
) -> dict[Path, Path]:
    """Give every (image, root) from find_images its own output stem under out_dir.

    Stems come from output_stem. When two images would share a stem, or one image's
    outputs would overwrite another's (`a.jpg` -> `a_cam.png` vs `a_cam.jpg` -> `a_cam.png`)
    or overwrite an input image (out_dir inside the input folder), the later image
    gets `<name>_<ext>`, then `<name>_<ext>_2`, `_3`, ... Deterministic for the same
    inputs, compared caselessly.
    """
    files: set[str] = set()  # keys of files that must not be written over
    step_bases: set[str] = set()  # stems X whose X_step<t>.png names are taken

    def claim_file(key: str) -> None:
        files.add(key)
        step = _STEP_FILE.fullmatch(key)
        if step:
            step_bases.add(step[1])

    def is_free(key: str) -> bool:
        step = _STEP_FILE.fullmatch(key + MASK_SUFFIX)
        return (
            key not in step_bases
            and not (step and step[1] in step_bases)
            and not any(key + suffix in files for suffix in OUTPUT_SUFFIXES)
        )

    def claim_stem(key: str) -> None:
        for suffix in OUTPUT_SUFFIXES:
            claim_file(key + suffix)
        step_bases.add(key)

    natural: dict[Path, Path] = {}
    for image, root in images:
        image = Path(image)
        if image not in natural:
            natural[image] = output_stem(image, root, out_dir)
            claim_file(_key(image))

    plan: dict[Path, Path] = {}
    for image, stem in natural.items():
        if is_free(_key(stem)):
            plan[image] = stem
            claim_stem(_key(stem))
    for image, stem in natural.items():
        if image in plan:
            continue
        ext = image.suffix.lstrip(".").lower()
        prefix = f"{stem.name}_{ext}" if ext else stem.name
        for n in itertools.count(1 if ext else 2):
            candidate = stem.with_name(prefix if n == 1 else f"{prefix}_{n}")
            if is_free(_key(candidate)):
                break
        plan[image] = candidate
        claim_stem(_key(candidate))
    return {image: plan[image] for image in natural}


def completed_outputs(stem: os.PathLike | str, required_suffixes: Sequence[str]) -> bool:
    """True when every `stem + suffix` exists as a non-empty file (skip this query on rerun).

    Files are written atomically, so an existing file is a complete one.
    """
    for suffix in required_suffixes:
        try:
            if output_path(stem, suffix).stat().st_size == 0:
                return False
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- writing


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some filesystems (and Windows) cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    Writes `.name.tmp-<random>` in the same folder (created if needed), fsyncs it and
    renames it over `path`. On any failure the temporary file is removed and the old
    file is untouched; OSError becomes ImrsegError naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while tmp is None:
            candidate = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
            try:
                # 0o666 so the umask decides permissions, as for any other file the user creates.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                fd = os.open(candidate, flags, 0o666)
            except FileExistsError:
                continue
            tmp = candidate
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise ImrsegError(f"{_show(path)}: cannot write ({exc.strerror or _one_line(exc)})") from exc
        raise
    _fsync_dir(path.parent)


_TEMPORARY = re.compile(r"\..+\.tmp-[0-9a-f]{12}")


def remove_stale_temporaries(out_dir: os.PathLike | str) -> int:
    """Delete temporary files that a killed run left under `out_dir` (only names
    atomic_write_bytes makes); returns how many."""
    removed = 0
    for folder, _dirs, files in os.walk(out_dir):
        for name in files:
            if _TEMPORARY.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def _write_encoded(
    path: os.PathLike | str, ext: str, array: np.ndarray, params: Sequence[int] = ()
) -> None:
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise ImrsegError(f"{_show(path)}: could not encode a {array.shape} image")
    atomic_write_bytes(path, buf.tobytes())


def _as_2d(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    return array


def _unit_to_u8(values) -> np.ndarray:
    """Floats in [0, 1] to 0..255; out-of-range values clip, NaN becomes 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_mask_png(path: os.PathLike | str, mask) -> None:
    """Binary mask (H, W; nonzero = object) as an 8-bit greyscale PNG of 0 and 255."""
    mask = _as_2d(mask, "mask")
    _write_encoded(path, ".png", np.where(mask != 0, 255, 0).astype(np.uint8))


def save_gray_png(path: os.PathLike | str, values) -> None:
    """Probabilities (H, W; floats in [0, 1]) as an 8-bit greyscale PNG."""
    _write_encoded(path, ".png", _unit_to_u8(_as_2d(values, "values")))


def save_heatmap_png(path: os.PathLike | str, cam, size: tuple[int, int]) -> None:
    """CAM (h, w; floats in [0, 1]) resized bilinearly to size=(W, H), JET colour map, PNG."""
    cam = np.nan_to_num(_as_2d(cam, "cam").astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    width, height = (int(v) for v in size)
    cam = cv2.resize(np.clip(cam, 0.0, 1.0), (width, height), interpolation=cv2.INTER_LINEAR)
    _write_encoded(path, ".png", cv2.applyColorMap(_unit_to_u8(cam), cv2.COLORMAP_JET))


def save_overlay_jpg(path: os.PathLike | str, image, mask) -> None:
    """The picture with the mask tinted OVERLAY_TINT and its outline in CONTOUR_COLOR, JPEG.

    image: PIL image or (H, W, 3) uint8 RGB array. The overlay has the picture's
    resolution; a mask of another size (e.g. full size vs the reduced network input)
    is resized to it.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    mask = _as_2d(mask, "mask") != 0
    if mask.shape != (height, width):
        # Area averaging then a 50% threshold keeps thin parts better than nearest neighbour.
        resized = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_AREA)
        mask = resized >= 128
    out = rgb.copy()
    out[mask] = np.round(
        out[mask] * (1.0 - OVERLAY_ALPHA) + np.array(OVERLAY_TINT) * OVERLAY_ALPHA
    ).astype(np.uint8)
    bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(height, width) / 300))
    cv2.drawContours(bgr, contours, -1, CONTOUR_COLOR[::-1], thickness)
    _write_encoded(path, ".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))


def _json_default(value):
    """Let rows hold numpy numbers/arrays and paths, as the commands produce them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class ResultsLog:
    """Append-only JSON Lines file, one row per query, safe against being killed.

    Each row goes to disk as one complete line in a single write, then fsync; a row
    counts only once its newline is written. Opening drops a torn last line left by an
    earlier killed run, so new rows always start on a line of their own.
    Use as a context manager, or call close().
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_torn_tail()
            self._file = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise ImrsegError(f"{_show(self.path)}: cannot write ({exc.strerror or _one_line(exc)})") from exc

    def _drop_torn_tail(self) -> None:
        try:
            fh = open(self.path, "r+b")
        except FileNotFoundError:
            return
        with fh:
            end = fh.seek(0, os.SEEK_END)
            pos = end
            while pos > 0:
                start = max(0, pos - 65536)
                fh.seek(start)
                newline = fh.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    pos = start + newline + 1
                    break
                pos = start
            if pos != end:
                fh.truncate(pos)
                fh.flush()
                os.fsync(fh.fileno())

    def write(self, row: Mapping) -> None:
        """Append `row` (JSON-serialisable; numpy values and paths allowed) as one line."""
        # ASCII escapes keep any file name valid JSON, even undecodable ones (lone surrogates).
        data = (json.dumps(row, default=_json_default) + "\n").encode("ascii")
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; the loop covers a short write
                view = view[self._file.write(view):]
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise ImrsegError(f"{_show(self.path)}: cannot write ({exc.strerror or _one_line(exc)})") from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_results(path: os.PathLike | str) -> list[dict]:
    """Rows of a ResultsLog file in order; [] if it does not exist.

    A last line without its newline (a write cut short by a kill) is ignored; any
    other line that is not a JSON object raises InputError naming file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(f"{_show(path)}: cannot read ({exc.strerror or _one_line(exc)})") from exc
    rows = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{_show(path)}:{number}: not a JSON row ({_one_line(exc)})") from None
        if not isinstance(row, dict):
            raise InputError(f"{_show(path)}:{number}: not a JSON object")
        rows.append(row)
    return rows
