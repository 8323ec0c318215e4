"""Small pictures for pages that show many images at once (the review gallery, the
browser app): an overlay's or an input image's thumbnail, made once under the output
folder, through its guard, and made again only when its source is newer."""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..errors import InputError, one_line, show_path
from ..guard import OwnedFolder
from ..images import load_image
from .naming import OVERLAY_SUFFIX
from .results import QueryRow

THUMB_SIZE = 256  # long side, px
OVERLAY_THUMBS = ".gallery"  # overlays' thumbnails, by their query's stem
IMAGE_THUMBS = ".thumbnails"  # input images' thumbnails, by the stem their outputs have or would have


def _cached(folder: OwnedFolder, rel: str, source: Path, make: Callable[[], Image.Image]) -> str:
    """`rel` (a JPEG inside the folder), written from `make()` only when missing or
    older than `source`."""
    if folder.is_file(rel) and os.stat(folder.path(rel)).st_mtime_ns >= os.stat(source).st_mtime_ns:
        return rel
    small = make()
    small.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    folder.write(rel, buffer.getvalue())
    return rel


def overlay_thumbnail(folder: OwnedFolder, query: QueryRow) -> str:
    """The overlay's thumbnail, relative to the folder (a redone or corrected query's
    overlay is newer, so it gets a new one)."""
    overlay = query.stem + OVERLAY_SUFFIX
    source = folder.path(overlay)  # a link in the way is refused
    if not folder.is_file(overlay):
        raise InputError(f"{show_path(folder.given / overlay)}: the overlay of {show_path(query.query)} is missing; "
                         "run the segment command again to redo it")

    def make() -> Image.Image:
        try:
            with Image.open(io.BytesIO(folder.read_bytes(overlay))) as image:
                image.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG decodes straight at a reduced size
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{show_path(folder.given / overlay)}: cannot read the overlay "
                             f"({one_line(exc)})") from None

    return _cached(folder, f"{OVERLAY_THUMBS}/{query.stem}.jpg", source, make)


def image_thumbnail(folder: OwnedFolder, image: Path, stem: str, max_pixels: int | None = None) -> str:
    """An input image's thumbnail (upright, as `load_image` reads it), relative to the
    folder; `stem` is the image's output stem relative to the folder."""
    return _cached(folder, f"{IMAGE_THUMBS}/{stem}.jpg", image,
                   lambda: load_image(image, max_pixels=max_pixels, draft_size=THUMB_SIZE).image)
