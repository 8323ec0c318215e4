"""The picture files of a query's outputs, encoded in memory and written
atomically: the mask (0/255 for one class, indexed with VOC's palette for
several), probability maps, CAM heat maps; and a written mask read back as class
indices, for the exports."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from ..durable import atomic_write_bytes
from ..errors import ImrsegError, InputError, one_line, show_path
from .palette import PALETTE


def write_encoded(path: os.PathLike | str, ext: str, array: np.ndarray, params: Sequence[int] = ()) -> None:
    """`array` (greyscale or BGR, OpenCV's order) encoded as `ext` and written atomically."""
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise ImrsegError(f"{show_path(path)}: could not encode a {array.shape} image")
    atomic_write_bytes(path, buf.tobytes())


def as_2d(array, name: str) -> np.ndarray:
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
    atomic_write_bytes(path, mask_png(mask))


def mask_png(mask) -> bytes:
    """The bytes `save_mask_png` writes."""
    mask = as_2d(mask, "mask")
    ok, buf = cv2.imencode(".png", np.where(mask != 0, 255, 0).astype(np.uint8))
    if not ok:
        raise ImrsegError(f"could not encode a {mask.shape} mask as PNG")
    return buf.tobytes()


def save_index_png(path: os.PathLike | str, index: np.ndarray) -> None:
    """An (H, W) uint8 class-index mask as an indexed PNG with VOC's palette, atomically."""
    image = Image.fromarray(np.asarray(index, np.uint8), mode="P")
    image.putpalette(PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    atomic_write_bytes(path, buffer.getvalue())


def read_index_mask(path: os.PathLike | str, data: bytes | None = None) -> np.ndarray:
    """A written mask as class indices, (H, W) uint8: an indexed PNG as it is, a
    0/255 single-class mask as 0/1; decoded from `data` when given (the file's bytes,
    read by the caller), `path` then only naming it. InputError naming the file otherwise."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{show_path(path)}: cannot read the mask ({one_line(exc)})") from None
    if image.mode == "P":
        return np.asarray(image, np.uint8)
    if image.mode in ("L", "1"):
        return (np.asarray(image) > 0).astype(np.uint8)
    raise InputError(f"{show_path(path)}: a mask is an indexed or greyscale PNG, not mode {image.mode}")


def save_gray_png(path: os.PathLike | str, values) -> None:
    """Probabilities (H, W; floats in [0, 1]) as an 8-bit greyscale PNG."""
    write_encoded(path, ".png", _unit_to_u8(as_2d(values, "values")))


def save_heatmap_png(path: os.PathLike | str, cam, size: tuple[int, int]) -> None:
    """CAM (h, w; floats in [0, 1]) resized bilinearly to size=(W, H), JET colour map, PNG."""
    cam = np.nan_to_num(as_2d(cam, "cam").astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    width, height = (int(v) for v in size)
    cam = cv2.resize(np.clip(cam, 0.0, 1.0), (width, height), interpolation=cv2.INTER_LINEAR)
    write_encoded(path, ".png", cv2.applyColorMap(_unit_to_u8(cam), cv2.COLORMAP_JET))
