"""The overlay a person looks at: the picture at its own resolution with each
class tinted and outlined. One class is tinted red and outlined in yellow; each
of several gets its palette colour and a legend of the classes present."""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .masks import as_2d, write_encoded
from .palette import class_colour

OVERLAY_TINT = (255, 0, 0)
OVERLAY_ALPHA = 0.45
CONTOUR_COLOR = (255, 255, 0)
JPEG_QUALITY = 90


def _picture(image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {rgb.shape}")
    return rgb


def _at_size(mask: np.ndarray, shape: tuple[int, int], indexed: bool) -> np.ndarray:
    """The mask at the picture's size: class indices nearest (indices do not average); a
    binary mask by area averaging then a 50% threshold, which keeps thin parts better."""
    if mask.shape == shape:
        return mask if indexed else mask != 0
    height, width = shape
    if indexed:
        return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    resized = cv2.resize((mask != 0).astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_AREA)
    return resized >= 128


def save_overlay(path: os.PathLike | str, image, mask, labels: Sequence[str] = ()) -> None:
    """The picture (PIL image or (H, W, 3) uint8 RGB) with its mask drawn over it, as a
    JPEG at the picture's resolution. With fewer than two `labels`, `mask` is binary
    (nonzero = object); with several it holds class indices (i = labels[i - 1])."""
    rgb = _picture(image)
    height, width = rgb.shape[:2]
    indexed = len(labels) > 1
    mask = _at_size(as_2d(mask, "mask"), (height, width), indexed)
    if indexed:
        regions = [(mask == i, class_colour(i), class_colour(i), labels[i - 1]) for i in range(1, len(labels) + 1)]
        regions = [region for region in regions if region[0].any()]
    else:
        regions = [(mask, OVERLAY_TINT, CONTOUR_COLOR, None)]
    out = rgb.copy()
    for region, tint, _, _ in regions:
        out[region] = np.round(out[region] * (1.0 - OVERLAY_ALPHA) + np.array(tint) * OVERLAY_ALPHA).astype(np.uint8)
    bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(height, width) / 300))
    for region, _, outline, _ in regions:
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(bgr, contours, -1, outline[::-1], thickness)
    if indexed:
        picture = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        _draw_legend(picture, [(label, colour) for _, colour, _, label in regions])
        bgr = cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2BGR)
    write_encoded(path, ".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))


def _draw_legend(picture: Image.Image, entries: Sequence[tuple[str, tuple]]) -> None:
    """A white box in the top-left corner: one colour swatch and label per line."""
    if not entries:
        return
    size = max(10, round(min(picture.size) / 24))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture)
    pad, line = max(2, size // 3), size + max(2, size // 3)
    text_width = max(draw.textlength(label, font=font) for label, _ in entries)
    draw.rectangle([0, 0, 3 * pad + size + text_width + pad, pad + line * len(entries)], fill=(255, 255, 255))
    for n, (label, colour) in enumerate(entries):
        top = pad + n * line
        draw.rectangle([pad, top, pad + size, top + size], fill=colour, outline=(0, 0, 0))
        draw.text((2 * pad + size, top), label, fill=(0, 0, 0), font=font)
