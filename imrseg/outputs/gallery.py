"""`OUT/gallery.html`: one static page to review an output folder by, worst first.

Every finished query (`results.read_finished`) gets a card: its overlay's thumbnail, the
classes found and the score (`imrseg.scores`), links to the image, the mask, the
overlay and the per-step masks. Cards come worst score first; buttons filter by
class (`gallery.html#class=dog` opens with one class selected), a menu re-sorts.
The page needs no server and no network: its style, script and data are inline,
and every link is relative, so the folder can be moved or zipped. Thumbnails are
written once, under `OUT/.gallery/` (a hidden folder, which no query's outputs can
collide with), and loaded lazily, so the page stays usable at 10,000 queries."""
from __future__ import annotations

import html
import io
import json
import os
import re
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from PIL import Image

from ..durable import atomic_write_bytes
from ..errors import InputError, show_path
from .masks import read_index_mask
from .naming import OVERLAY_SUFFIX
from .palette import class_colour
from .results import FinishedQuery, FinishedRun, read_finished

GALLERY_FILE = "gallery.html"
THUMBS = ".gallery"
THUMB_SIZE = 256  # long side, px
PAGE_TEMPLATE = "gallery_page.html"  # package data beside this module


def thumbnail(out: Path, query: FinishedQuery) -> str:
    """The overlay's thumbnail, relative to `out`; written only when missing or older
    than the overlay (a redone query gets a new one)."""
    overlay = out / (query.stem + OVERLAY_SUFFIX)
    rel = f"{THUMBS}/{query.stem}.jpg"
    thumb = out / rel
    if (out / THUMBS).is_symlink() or not thumb.parent.resolve().is_relative_to(out.resolve()):
        raise InputError(f"{show_path(thumb.parent)}: leads outside {show_path(out)} (a symbolic link); "
                         "remove it so that thumbnails stay in the output folder")
    if thumb.is_file() and thumb.stat().st_mtime_ns >= overlay.stat().st_mtime_ns:
        return rel
    with Image.open(overlay) as image:
        image.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG decodes straight at a reduced size
        small = image.convert("RGB")
        small.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    atomic_write_bytes(thumb, buffer.getvalue())
    return rel


def _href(rel: str) -> str:
    """A relative path as a link: every character a URL gives meaning to escaped."""
    return quote(rel, safe="/")


def _image_link(out: Path, query: FinishedQuery) -> str | None:
    """A relative link from the page to the query image, if it is where the run found it."""
    path = Path(query.query)
    if not path.is_file():
        return None
    return _href(Path(os.path.relpath(path.resolve(), out.resolve())).as_posix())


def _present(run: FinishedRun, query: FinishedQuery) -> list[int]:
    """The classes (1-based) a query has pixels of: from its row, or its mask when the row has none."""
    if query.classes:
        return [i for i, label in enumerate(run.labels, start=1)
                if (query.classes.get(label) or {}).get("fraction", 0) > 0]
    index = read_index_mask(run.out / query.mask)
    return [i for i in range(1, len(run.labels) + 1) if (index == i).any()]


def _entry(run: FinishedRun, query: FinishedQuery) -> dict:
    extra = [rel for rel in query.outputs if rel not in (query.mask, query.stem + OVERLAY_SUFFIX)]
    links = [["image", _image_link(run.out, query)], ["mask", _href(query.mask)],
             ["overlay", _href(query.stem + OVERLAY_SUFFIX)]]
    links += [[PurePosixPath(rel).name[len(PurePosixPath(query.stem).name) + 1:].rsplit(".", 1)[0], _href(rel)]
              for rel in extra]
    return {"name": query.file_name, "thumb": _href(thumbnail(run.out, query)), "score": query.score,
            "classes": _present(run, query), "links": [link for link in links if link[1]]}


def build_gallery(out: os.PathLike | str) -> Path:
    """Write `out/gallery.html` (and any missing thumbnails); returns its path."""
    run = read_finished(out)
    entries = sorted((_entry(run, q) for q in run.queries),
                     key=lambda e: (-1.0 if e["score"] is None else e["score"], e["name"]))
    classes = [{"index": i, "label": label, "colour": "rgb(%d,%d,%d)" % class_colour(i)}
               for i, label in enumerate(run.labels, start=1)]
    data = json.dumps({"classes": classes, "queries": entries}, ensure_ascii=True).replace("</", "<\\/")
    fill = {"title": html.escape(f"imrseg: {run.out.resolve().name}"), "data": data}
    page = re.sub(r"\{\{(title|data)\}\}", lambda m: fill[m[1]], _page())  # one pass: no value is read as a slot
    path = run.out / GALLERY_FILE
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def _page() -> str:
    """The page's template (package data): `{{title}}` and `{{data}}` are filled in."""
    return resources.files(__package__).joinpath(PAGE_TEMPLATE).read_text(encoding="utf-8")
