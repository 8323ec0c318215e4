"""Several classes in one run: the names each class's CLIP-CAM competes with, the
indexed mask, its palette, the overlay with a legend, and the per-class file names.

A labelled query has one mask, `<name>.png`, an indexed PNG (mode P with PASCAL
VOC's palette, so dataset tools and image viewers show it in the usual colours):
0 is background and i the i-th class in the order the classes were given. Where
the classes' masks overlap, the pixel goes to the class with the highest
foreground probability; where none says foreground it is background.
Single-class runs keep their 0/255 mask; `read_index_mask` reads both kinds."""
from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .durable import atomic_write_bytes
from .errors import InputError, show_path
from .outputs import JPEG_QUALITY, OVERLAY_ALPHA, _write_encoded
from .vocabulary import background_vocabulary

# 0 is background and 255 is VOC's "void" colour, so 254 classes fit in one mask.
MAX_CLASSES = 254
BACKGROUND = 0


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette as 768 values (r, g, b, r, g, b, ...): the
    bits of each index spread over the three channels, high bits first."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


PALETTE = voc_palette()


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB of class `index` (1 = the first class) in the mask's palette."""
    return tuple(PALETTE[3 * index:3 * index + 3])


def check_class_count(count: int) -> None:
    if count > MAX_CLASSES:
        raise InputError(f"{count} classes: one indexed mask holds at most {MAX_CLASSES}")


def class_vocabulary(label: str, labels: Sequence[str], background: Sequence[str] | None = None) -> list[str]:
    """[label, the other labels, the background competitors...] (synonyms of the
    label and repeats left out): the names the label's CLIP softmax is taken over,
    so that each class's CAM is drawn away from the other classes asked for. With
    one label it is `background_vocabulary(label, background)`."""
    return background_vocabulary(label, background, first=[other for other in labels if other != label])


def check_distinct_labels(labels: Sequence[str]) -> None:
    """Two labels that differ only in case or spacing would be two classes of one thing."""
    seen: dict[str, str] = {}
    for label in labels:
        key = " ".join(label.split()).casefold()
        if key in seen:
            raise InputError(f"the labels {seen[key]!r} and {label!r} name the same class; give it once")
        seen[key] = label


def index_mask(masks: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W) uint8: 0 where no class's mask is set, else 1 + the index of the class
    with the highest probability among those whose mask is set there."""
    check_class_count(len(masks))
    chosen = np.stack([np.asarray(m, bool) for m in masks])
    competing = np.where(chosen, np.stack(probs).astype(np.float32), -1.0)
    return np.where(chosen.any(axis=0), competing.argmax(axis=0) + 1, BACKGROUND).astype(np.uint8)


def save_index_png(path: os.PathLike | str, index: np.ndarray) -> None:
    """An (H, W) uint8 class-index mask as an indexed PNG with VOC's palette, atomically."""
    image = Image.fromarray(np.asarray(index, np.uint8), mode="P")
    image.putpalette(PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    atomic_write_bytes(path, buffer.getvalue())


def read_index_mask(path: os.PathLike | str) -> np.ndarray:
    """A written mask as class indices, (H, W) uint8: an indexed PNG as it is, a
    0/255 single-class mask as 0/1. InputError naming the file otherwise."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError) as exc:
        raise InputError(f"{show_path(path)}: cannot read the mask ({exc})") from None
    if image.mode == "P":
        return np.asarray(image, np.uint8)
    if image.mode in ("L", "1"):
        return (np.asarray(image) > 0).astype(np.uint8)
    raise InputError(f"{show_path(path)}: a mask is an indexed or greyscale PNG, not mode {image.mode}")


def label_slugs(labels: Sequence[str]) -> list[str]:
    """A distinct file-name-safe form of each label, for per-class files
    (`traffic cone` -> `traffic_cone`; a clash gets `_2`, `_3`, ... caselessly)."""
    taken, out = set(), []
    for label in labels:
        base = re.sub(r"[^\w-]+", "_", label.strip()).strip("_")[:64] or "class"
        slug, n = base, 2
        while slug.casefold() in taken:
            slug, n = f"{base}_{n}", n + 1
        taken.add(slug.casefold())
        out.append(slug)
    return out


def file_tags(labels: Sequence[str]) -> list[str]:
    """What each class's probability, CAM and step files insert before their suffix:
    nothing for a one-class run (`a_prob.png`), `_<slug>` for each of several
    (`a_dog_prob.png`, `a_traffic_cone_prob.png`)."""
    return [""] if len(labels) < 2 else [f"_{slug}" for slug in label_slugs(labels)]


def save_labelled_overlay(path: os.PathLike | str, image, index: np.ndarray, labels: Sequence[str]) -> None:
    """The picture with each class tinted in its palette colour and outlined, and a
    legend of the classes present, as a JPEG at the picture's resolution (a mask of
    another size is resized to it, nearest neighbour: indices do not average)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    height, width = rgb.shape[:2]
    index = np.asarray(index, np.uint8)
    if index.shape != (height, width):
        index = cv2.resize(index, (width, height), interpolation=cv2.INTER_NEAREST)
    out = rgb.astype(np.float32)
    thickness = max(1, round(max(height, width) / 300))
    present = [i for i in range(1, len(labels) + 1) if (index == i).any()]
    outlines = []
    for i in present:
        region = index == i
        out[region] = out[region] * (1.0 - OVERLAY_ALPHA) + np.array(class_colour(i)) * OVERLAY_ALPHA
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((contours, class_colour(i)))
    bgr = cv2.cvtColor(np.round(out).astype(np.uint8), cv2.COLOR_RGB2BGR)
    for contours, colour in outlines:
        cv2.drawContours(bgr, contours, -1, colour[::-1], thickness)
    picture = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    _draw_legend(picture, [(labels[i - 1], class_colour(i)) for i in present])
    _write_encoded(path, ".jpg", cv2.cvtColor(np.asarray(picture), cv2.COLOR_RGB2BGR),
                   (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))


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
