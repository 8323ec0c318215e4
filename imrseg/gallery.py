"""`OUT/gallery.html`: one static page to review an output folder by, worst first.

Every finished query (`imrseg.records`) gets a card: its overlay's thumbnail, the
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
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from PIL import Image

from .durable import atomic_write_bytes
from .errors import InputError, show_path
from .labels import class_colour, read_index_mask
from .outputs import OVERLAY_SUFFIX
from .records import FinishedQuery, FinishedRun, read_finished

GALLERY_FILE = "gallery.html"
THUMBS = ".gallery"
THUMB_SIZE = 256  # long side, px


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
    page = re.sub(r"\{\{(title|data)\}\}", lambda m: fill[m[1]], PAGE)  # one pass: no value is read as a slot
    path = run.out / GALLERY_FILE
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
header { position: sticky; top: 0; z-index: 1; background: #fff; padding: 10px 16px;
         box-shadow: 0 1px 4px rgba(0,0,0,.15); display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
header h1 { font-size: 16px; margin: 0 12px 0 0; }
.filter { border: 1px solid #999; border-radius: 12px; padding: 2px 10px; background: #fff; cursor: pointer; }
.filter[aria-pressed="true"] { background: #222; color: #fff; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
#count { margin-left: auto; color: #555; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; padding: 16px; }
figure.card { margin: 0; background: #fff; border-radius: 6px; overflow: hidden;
              box-shadow: 0 1px 3px rgba(0,0,0,.15); content-visibility: auto; contain-intrinsic-size: 220px 300px; }
figure.card[hidden] { display: none; }
.card img { display: block; width: 100%; height: 200px; object-fit: contain; background: #ddd; }
figcaption { padding: 6px 8px; }
.name { word-break: break-all; font-weight: 600; }
.score { float: right; font-variant-numeric: tabular-nums; }
.chip { display: inline-block; border-radius: 8px; padding: 0 6px; margin: 2px 2px 0 0; color: #fff; font-size: 12px;
        text-shadow: 0 0 2px #000; }
.links { display: flex; flex-wrap: wrap; column-gap: 6px; font-size: 12px; }
</style>
</head>
<body>
<header>
<h1>{{title}}</h1>
<span id="filters"></span>
<label>sort <select id="sort">
<option value="worst">worst score first</option><option value="best">best score first</option>
<option value="name">name</option></select></label>
<span id="count"></span>
</header>
<main id="cards"></main>
<script id="data" type="application/json">{{data}}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const cards = document.getElementById("cards");
const byIndex = new Map(data.classes.map(c => [c.index, c]));
const NONE = 0;  // the filter for queries where no class was found
const selected = new Set();

function element(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(q) {
  const fig = element("figure", {"class": "card", "data-classes": q.classes.join(" ") || String(NONE)});
  const open = element("a", {href: q.links.find(l => l[0] === "overlay")[1]});
  open.append(element("img", {src: q.thumb, loading: "lazy", alt: q.name}));
  const cap = element("figcaption");
  cap.append(element("span", {"class": "score"}, q.score === null ? "?" : q.score.toFixed(3)));
  cap.append(element("div", {"class": "name"}, q.name));
  const chips = element("div");
  for (const i of q.classes) {
    chips.append(element("span", {"class": "chip", style: "background:" + byIndex.get(i).colour}, byIndex.get(i).label));
  }
  if (!q.classes.length) chips.append(element("span", {"class": "chip", style: "background:#777"}, "nothing found"));
  const links = element("div", {"class": "links"});
  for (const [name, href] of q.links) links.append(element("a", {href: href}, name));
  cap.append(chips, links);
  fig.append(open, cap);
  fig.query = q;
  return fig;
}

const all = data.queries.map(card);
const order = {
  worst: (a, b) => (a.query.score ?? -1) - (b.query.score ?? -1) || a.query.name.localeCompare(b.query.name),
  best: (a, b) => (b.query.score ?? -1) - (a.query.score ?? -1) || a.query.name.localeCompare(b.query.name),
  name: (a, b) => a.query.name.localeCompare(b.query.name),
};

function show() {
  let shown = 0;
  for (const fig of all) {
    const has = fig.query.classes.length ? fig.query.classes : [NONE];
    fig.hidden = selected.size > 0 && !has.some(i => selected.has(i));
    if (!fig.hidden) shown++;
  }
  document.getElementById("count").textContent = shown + " of " + all.length + " shown";
  for (const b of document.querySelectorAll(".filter")) b.setAttribute("aria-pressed", selected.has(Number(b.dataset.index)));
}

function sortCards() {
  cards.replaceChildren(...all.sort(order[document.getElementById("sort").value]));
}

const filters = document.getElementById("filters");
for (const c of [...data.classes, {index: NONE, label: "nothing found", colour: "#777"}]) {
  const b = element("button", {"class": "filter", "data-index": c.index, "aria-pressed": "false"});
  b.append(element("span", {"class": "swatch", style: "background:" + c.colour}), c.label);
  b.addEventListener("click", () => { selected.has(c.index) ? selected.delete(c.index) : selected.add(c.index); show(); });
  filters.append(b);
}
document.getElementById("sort").addEventListener("change", sortCards);
const wanted = new URLSearchParams(location.hash.slice(1)).getAll("class");
for (const c of data.classes) if (wanted.includes(c.label)) selected.add(c.index);
sortCards();
show();
</script>
</body>
</html>
"""
