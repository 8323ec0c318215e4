"""`OUT/gallery.html`: one static page to review an output folder by, worst first.

Every finished query (`results.read_finished`) gets a card: its overlay's thumbnail, the
classes found and the score (`imrseg.scores`), links to the image, the mask, the
overlay and the per-step masks, and the review a person gave it in `imrseg app`.
Cards come worst score first; buttons filter by class (`gallery.html#class=dog` opens
with one class selected), a menu re-sorts.
The page needs no server and no network: its style, script and data are inline,
and every link is relative, so the folder can be moved or zipped. Thumbnails are
written once, under `OUT/.gallery/` (a hidden folder, which no query's outputs can
collide with; `outputs.thumbnails`), and loaded lazily, so the page stays usable at 10,000 queries. The
page's data is JSON inside a script element, with `<`, `>` and `&` escaped, so no
name or label can end it. Files are read and written through the folder's guard."""
from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import quote


from ..errors import show_path
from ..guard import OwnedFolder
from .naming import OVERLAY_SUFFIX
from .palette import class_colour
from .results import FinishedRun, QueryRow, opened, read_finished
from .thumbnails import overlay_thumbnail

GALLERY_FILE = "gallery.html"
PAGE_TEMPLATE = "gallery_page.html"  # package data beside this module
# What the page's embedded JSON escapes, so that no text in it (a file name, a label)
# can end the script element or open a comment in it: `</script>`, `<!--`, `<script`.
SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _href(rel: str) -> str:
    """A relative path as a link: every character a URL gives meaning to escaped, and
    a name that is not UTF-8 by its bytes on disk."""
    return quote(os.fsencode(rel), safe="/")


def _image_link(folder: OwnedFolder, query: QueryRow) -> str | None:
    """A relative link from the page to the query image, if it is where the run found it."""
    if not os.path.isfile(query.identity):
        return None
    return _href(Path(os.path.relpath(query.identity, folder.root)).as_posix())


def _present(run: FinishedRun, query: QueryRow) -> list[int]:
    """The classes (1-based) a query has pixels of: from its row, or its mask when the row has none."""
    if query.classes:
        return [i for i, label in enumerate(run.labels, start=1)
                if (query.classes.get(label) or {}).get("fraction", 0) > 0]
    index = run.mask(query)
    return [i for i in range(1, len(run.labels) + 1) if (index == i).any()]


def _entry(run: FinishedRun, query: QueryRow) -> dict:
    extra = [rel for rel in query.outputs if rel not in (query.mask, query.stem + OVERLAY_SUFFIX)]
    links = [["image", _image_link(run.folder, query)], ["mask", _href(query.mask)],
             ["overlay", _href(query.stem + OVERLAY_SUFFIX)]]
    links += [[PurePosixPath(rel).name[len(PurePosixPath(query.stem).name) + 1:].rsplit(".", 1)[0], _href(rel)]
              for rel in extra]
    return {"name": query.file_name, "thumb": _href(overlay_thumbnail(run.folder, query)), "score": query.score,
            "review": query.review, "classes": _present(run, query), "links": [link for link in links if link[1]]}


def build_gallery(out: OwnedFolder | os.PathLike | str) -> Path:
    """Write `out/gallery.html` (and any missing thumbnails); returns its path. `out` is
    a folder, or the OwnedFolder a run holds."""
    with opened(out) as folder:
        run = read_finished(folder)
        folder.check([GALLERY_FILE])  # refused now, if it is not imrseg's, before any thumbnail is written
        entries = sorted((_entry(run, q) for q in run.queries),
                         key=lambda e: (-1.0 if e["score"] is None else e["score"], e["name"]))
        classes = [{"index": i, "label": label, "colour": "rgb(%d,%d,%d)" % class_colour(i)}
                   for i, label in enumerate(run.labels, start=1)]
        data = json.dumps({"classes": classes, "queries": entries}, ensure_ascii=True).translate(SCRIPT_SAFE)
        fill = {"title": html.escape(show_path(f"imrseg: {folder.root.name}")), "data": data}
        page = re.sub(r"\{\{(title|data)\}\}", lambda m: fill[m[1]], _page())  # one pass: no value is read as a slot
        folder.write(GALLERY_FILE, page.encode("utf-8"))
        return folder.given / GALLERY_FILE


def _page() -> str:
    """The page's template (package data): `{{title}}` and `{{data}}` are filled in."""
    return resources.files(__package__).joinpath(PAGE_TEMPLATE).read_text(encoding="utf-8")
