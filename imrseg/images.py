"""Reading images: any readable file becomes an upright RGB picture for the network
plus the full size a viewer displays, or an `InputError` naming the file and the reason;
`load_mask` reads a drawn mask file the same way.
`find_images` expands files and folders into query images.

Never imports torch, so the CLI can plan and skip work before loading a model."""
from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .arguments import check_sequence, type_error
from .errors import InputError, one_line, param, show_path

# Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS at its default), so the default
# behaviour matches stock Pillow while the message says how to raise it.
DEFAULT_MAX_PIXELS = 178_956_970
# Long side of the picture handed to the network: it resizes to 400x400 (CLIP to 224),
# so 1024 keeps ample detail while bounding memory for huge photos.
DEFAULT_DRAFT_SIZE = 1024
# Transparent pixels are composited on white, as most viewers and web pages show them.
ALPHA_BACKGROUND = (255, 255, 255)

# What a folder search takes: the usual names of the formats _DECODERS reads.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".avif"})

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
        reason = f"cannot access ({exc.strerror or one_line(exc)})"
    raise InputError(f"{show_path(path)}: {reason}")


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
        return InputError(f"{show_path(path)}: not enough memory to decode this {width}x{height} image")
    return InputError(f"{show_path(path)}: image data is truncated or corrupt ({one_line(exc)})")


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
    rgb, size = _decode(path, max_pixels, draft_size, _to_rgb)
    return LoadedImage(image=rgb, size=size, path=path)


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = None,
                     draft_size: int | None = None) -> LoadedImage:
    """`load_image` for an image held in memory (an upload), with the same checks and
    decoding; `name` stands for the file in messages and in `LoadedImage.path`."""
    if not data:
        raise InputError(f"{show_path(name)}: empty file (0 bytes)")
    limit, long_side = _limits(max_pixels, draft_size)
    rgb, size = _decode_file(io.BytesIO(data), name, limit, long_side, _to_rgb)
    return LoadedImage(image=rgb, size=size, path=Path(name))


def check_pixels(what: str, width: int, height: int, max_pixels: int | None = None) -> None:
    """InputError, its message starting with `what`, unless a picture of `width` x `height`
    has pixels and at most `max_pixels` of them (None or 0: DEFAULT_MAX_PIXELS): the bound
    on every picture imrseg reads, makes or is handed."""
    limit = max_pixels or DEFAULT_MAX_PIXELS
    if width <= 0 or height <= 0:
        raise InputError(f"{what}: image has zero width or height")
    if width * height > limit:
        raise InputError(f"{what}: image has {width * height} pixels, over the limit of {limit} "
                         "(decompression-bomb guard); pass `max_pixels` to raise it")


def check_picture(name: str, image, max_pixels: int | None = None) -> Image.Image:
    """A PIL image handed to the library (parameter `name`), within the pixel limit."""
    if not isinstance(image, Image.Image):
        raise type_error(name, image, "a PIL image")
    check_pixels(param(name), *image.size, max_pixels)
    return image


def check_size(name: str, size, max_pixels: int | None = None) -> tuple[int, int]:
    """A (W, H) to make a picture at (parameter `name`), within the pixel limit."""
    values = check_sequence(name, size)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise InputError(f"{param(name)} {size!r}: expected (width, height), two whole numbers")
    width, height = int(values[0]), int(values[1])
    check_pixels(f"{param(name)} {width}x{height}", width, height, max_pixels)
    return width, height


def check_drawn_mask(what: str, mask, size: tuple[int, int], support: str) -> np.ndarray:
    """A support's drawn mask as (H, W) bool: a 2-D array of its support's size (W, H);
    `what` names the mask and `support` its support in the message."""
    if not isinstance(mask, np.ndarray):
        raise type_error("masks", mask, "a numpy array")
    if mask.ndim != 2 or mask.shape[::-1] != tuple(size):
        shape = f"{mask.shape[1]}x{mask.shape[0]}" if mask.ndim == 2 else f"of shape {mask.shape}"
        raise InputError(f"{what}: mask is {shape} but its support {support} is {size[0]}x{size[1]}; "
                         "a mask is (height, width), one value per pixel of its support")
    return mask.astype(bool)


def load_mask(path: os.PathLike | str, max_pixels: int | None = None) -> np.ndarray:
    """Read a drawn mask file: (H, W) bool at full resolution, upright as its image
    (EXIF orientation applied). A pixel is object when it is not transparent (alpha 0,
    or a palette's or colour key's transparent entry) and its value is nonzero, so
    transparency around a drawn object means background, not the white it is shown on.
    InputError naming the file on any failure, as `load_image`."""
    mask, _ = _decode(Path(path), max_pixels, 0, _mask_of)
    return np.asarray(mask) > 0


def load_mask_bytes(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """`load_mask` for a mask held in memory (an upload); `name` stands for the file."""
    if not data:
        raise InputError(f"{show_path(name)}: empty file (0 bytes)")
    limit, _ = _limits(max_pixels, 0)
    mask, _ = _decode_file(io.BytesIO(data), name, limit, 0, _mask_of)
    return np.asarray(mask) > 0


def load_label_mask_bytes(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """A mask held in memory whose values are class indices, (H, W) uint8: an indexed
    PNG's indices, a greyscale picture's values (a person's correction of a mask of
    several classes); `name` stands for the file. InputError as `load_mask`."""
    if not data:
        raise InputError(f"{show_path(name)}: empty file (0 bytes)")
    limit, _ = _limits(max_pixels, 0)
    mask, _ = _decode_file(io.BytesIO(data), name, limit, 0,
                           lambda img: img if img.mode in ("P", "L") else img.convert("L"))
    return np.asarray(mask, dtype=np.uint8)


def _mask_of(img: Image.Image) -> Image.Image:
    """Any Pillow mode to an 'L' mask: 255 where opaque and nonzero, else 0."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img)
        on = np.isfinite(values) & (values != 0)
    elif img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))  # a palette's or colour key's transparency becomes alpha 0
        on = (rgba[..., :3].max(axis=2) > 0) & (rgba[..., 3] > 0)
    else:
        on = np.asarray(img.convert("RGB")).max(axis=2) > 0
    return Image.fromarray(on.astype(np.uint8) * 255)


def _decode(path: Path, max_pixels: int | None, draft_size: int | None,
            convert) -> tuple[Image.Image, tuple[int, int]]:
    """The checks and decoding `load_image` describes, `convert` turning the decoded
    picture into the result's mode; (upright result, displayed full size)."""
    limit, long_side = _limits(max_pixels, draft_size)
    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{show_path(path)}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{show_path(path)}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{show_path(path)}: empty file (0 bytes)")
    try:
        fh = open(path, "rb")
    except PermissionError:
        raise InputError(f"{show_path(path)}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{show_path(path)}: cannot open ({exc.strerror or one_line(exc)})") from exc
    with fh:
        return _decode_file(fh, path, limit, long_side, convert)


def _limits(max_pixels: int | None, draft_size: int | None) -> tuple[int, int]:
    """(pixel limit, long side) that `max_pixels` and `draft_size` stand for."""
    if max_pixels is not None and max_pixels < 0:
        raise InputError(f"`max_pixels` must be 0 or more, not {max_pixels}")
    if draft_size is not None and draft_size < 0:
        raise InputError(f"`draft_size` must be 0 or more, not {draft_size}")
    return max_pixels or DEFAULT_MAX_PIXELS, DEFAULT_DRAFT_SIZE if draft_size is None else draft_size


def _decode_file(fh, path: Path | str, limit: int, long_side: int,
                 convert) -> tuple[Image.Image, tuple[int, int]]:
    """`_decode` of an open binary file; `path` names it in messages."""
    with _pillow_bomb_guard_off():
        try:
            img = Image.open(fh, formats=_decoders())
        except UnidentifiedImageError:
            raise InputError(
                f"{show_path(path)}: not an image, or not in a supported format "
                "(JPEG, PNG, BMP, TIFF, WebP, GIF, PPM, AVIF)"
            ) from None
        except Exception as exc:  # malformed headers raise all sorts of types in Pillow plugins
            raise InputError(f"{show_path(path)}: unreadable image header ({one_line(exc)})") from exc

        width, height = img.size
        check_pixels(show_path(path), width, height, limit)
        # Sizes are in the decoder's frame until the final transpose; _fit is the same
        # in either frame, so the draft needs no orientation.
        target = _fit((width, height), long_side)
        try:
            img.draft("RGB", target)  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, not below target
            img.load()
            # Read after loading: some decoders (TIFF) apply the orientation themselves and drop the tag.
            orientation = _orientation(img)
            picture = convert(img)
            if picture.size != target:
                # reducing_gap box-averages by an integer factor first, then Lanczos: fast and sharp.
                picture = picture.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        except Exception as exc:
            # Damaged data surfaces as OSError, SyntaxError, ValueError, even SystemError
            # (a file changed while read), during decoding or the conversion after it.
            raise _decode_error(path, img, exc) from exc
    if orientation in _UPRIGHT:
        picture = picture.transpose(_UPRIGHT[orientation])
    displayed = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return picture, displayed


def _is_hidden(name: str) -> bool:
    # Covers dot-folders, macOS "._x.jpg" resource forks (not images) and our own temp files.
    return name.startswith(".")


def find_images(
    paths: Iterable[os.PathLike | str], *, exclude: Iterable[os.PathLike | str] = ()
) -> list[tuple[Path, Path]]:
    """Expand files and folders into (image, root) pairs, in a stable order.

    A file is taken whatever its extension (load_image judges it), with its folder as
    root. A folder is searched recursively for IMAGE_EXTENSIONS (any case), skipping
    hidden names and symlinked subfolders (no cycles); its images are sorted by
    relative path and it is their root. Anything in `exclude`, folders and files alike,
    is skipped, even when named: pass the output folder and the files a run wrote, so
    that earlier results are never read back as inputs. Arguments keep their order and
    an image reached twice is listed once. InputError for a missing path, an unlistable
    folder, a folder without images, or nothing left at all.
    """
    paths = [Path(p) for p in paths]
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    found: list[tuple[Path, Path]] = []

    def add(image: Path, root: Path, key: str) -> None:
        if key not in seen and key not in excluded:
            seen.add(key)
            found.append((image, root))

    def unlistable(exc: OSError) -> None:
        raise InputError(
            f"{show_path(exc.filename)}: cannot list folder ({exc.strerror or one_line(exc)})"
        )

    for arg in paths:
        _stat(arg)
        if not arg.is_dir():
            add(arg, arg.parent, os.path.realpath(arg))
            continue
        images = []
        for dirpath, dirnames, filenames in os.walk(arg, onerror=unlistable):
            dirnames[:] = [
                d
                for d in dirnames
                if not _is_hidden(d) and os.path.realpath(os.path.join(dirpath, d)) not in excluded
            ]
            images += [
                (image, os.path.realpath(image))
                for image in (Path(dirpath, f) for f in filenames)
                if not _is_hidden(image.name) and image.suffix.lower() in IMAGE_EXTENSIONS
            ]
        images = [(image, key) for image, key in images if key not in excluded]
        if not images:
            raise InputError(
                f"{show_path(arg)}: no images found (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} in it and its subfolders"
                + (", other than imrseg's own outputs)" if excluded else ")")
            )
        for image, key in sorted(images, key=lambda item: item[0].relative_to(arg).parts):
            add(image, arg, key)
    if paths and not found:
        raise InputError(f"{show_path(paths[0])}: no images left: every file given is an output imrseg wrote")
    return found
