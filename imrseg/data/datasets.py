"""Images and masks of the benchmarks, in the layouts HSNet and IMR-HSNet use.

PASCAL-5i: `ROOT/VOC2012/JPEGImages/<name>.jpg` and
`ROOT/VOC2012/SegmentationClassAug/<name>.png` (class index per pixel, 255 on
object boundaries). COCO-20i: `ROOT/COCO2014/<train2014|val2014>/<file>.jpg` and
`ROOT/COCO2014/annotations/<train2014|val2014>/<file>.png`.

Files are read as the authors read them: no EXIF rotation (the masks are drawn
on the stored pixels) and no downscaling.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, one_line

BOUNDARY = 255


@dataclass(frozen=True)
class BenchmarkData:
    """Where one benchmark's images and masks are under a data root."""

    benchmark: str
    root: Path

    @classmethod
    def open(cls, benchmark: str, data_root: os.PathLike | str) -> "BenchmarkData":
        """Check the layout up front, so a wrong `data_root` fails before any model loads."""
        data = cls(benchmark, Path(data_root))
        for folder in data.required_folders():
            if not folder.is_dir():
                raise InputError(f"{folder}: no such folder; `data_root` must hold "
                                 f"{'VOC2012/' if benchmark == 'pascal' else 'COCO2014/'} "
                                 "in HSNet's layout (see the README)")
        return data

    def required_folders(self) -> list[Path]:
        if self.benchmark == "pascal":
            voc = self.root / "VOC2012"
            return [voc / "JPEGImages", voc / "SegmentationClassAug"]
        coco = self.root / "COCO2014"
        return [coco, coco / "annotations"]

    def image_path(self, name: str) -> Path:
        if self.benchmark == "pascal":
            return self.root / "VOC2012" / "JPEGImages" / f"{name}.jpg"
        return self.root / "COCO2014" / name

    def mask_path(self, name: str) -> Path:
        if self.benchmark == "pascal":
            return self.root / "VOC2012" / "SegmentationClassAug" / f"{name}.png"
        # As the authors: everything from ".jpg" on becomes ".png", under annotations/.
        stem = name[:name.index(".jpg")] if ".jpg" in name else name
        return self.root / "COCO2014" / "annotations" / f"{stem}.png"

    def read_image(self, name: str) -> Image.Image:
        with open_image(self.image_path(name)) as img:
            return img.convert("RGB")

    def read_mask(self, name: str) -> np.ndarray:
        """(H, W) class indices as stored (palette indices for VOC's PNGs)."""
        path = self.mask_path(name)
        with open_image(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise InputError(f"{path}: a {img.mode} image, expected a single-channel class-index mask")
            return np.asarray(img)


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """A benchmark file opened and decoded as stored (no EXIF rotation), closed after
    use; a failure is a one-line InputError naming the file."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (listed in the split file)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image") from None
    except Image.DecompressionBombError as exc:
        # Benchmark images are under a megapixel; this many pixels is a damaged or hostile file.
        raise InputError(f"{path}: refused: {one_line(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image ({one_line(exc)})") from None
    try:
        yield img
    finally:
        img.close()


def read_matching_mask(data, name: str, image: Image.Image) -> np.ndarray:
    """`data.read_mask(name)`, refused (one line naming the mask file) unless it has the
    size of `image`, the decoded picture it belongs to: a mask of another size (or one
    transposed) would be resized onto the wrong pixels without a word. Evaluation and
    training both read their masks through here."""
    mask = data.read_mask(name)
    if mask.shape != (image.height, image.width):
        raise InputError(f"{data.mask_path(name)}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                         f"its image is {image.width}x{image.height}")
    return mask


def ground_truth(mask: np.ndarray, benchmark: str, class_id: int,
                 size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw class map -> (foreground, ignore), both (H, W) bool.

    As the authors: the raw map is resized first (nearest, torch's rule, to
    `size` = (H, W); None keeps the original size), then foreground = class_id + 1
    and, for PASCAL only, ignore = the 255 boundary label. COCO has no ignore label.
    """
    if size is not None and tuple(mask.shape) != tuple(size):
        mask = nearest_resize(mask, size)
    foreground = mask == class_id + 1
    if benchmark == "pascal":
        ignore = mask == BOUNDARY
    else:
        ignore = np.zeros(mask.shape, dtype=bool)
    return foreground, ignore


def nearest_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`F.interpolate(mode="nearest")` in numpy: source index floor(dst * in / out).

    torch computes the scale in float32 and the index as floor(dst * scale), clamped;
    the same arithmetic is done here so the two agree pixel for pixel."""
    rows = _nearest_index(array.shape[0], size[0])
    cols = _nearest_index(array.shape[1], size[1])
    return array[rows[:, None], cols[None, :]]


def _nearest_index(src: int, dst: int) -> np.ndarray:
    scale = np.float32(src) / np.float32(dst)
    idx = np.floor(np.arange(dst, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, src - 1)
