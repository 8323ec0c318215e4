"""One folder of images labelled in the browser (`imrseg app`): its images, what the
output folder holds for each (the latest row of results.jsonl: mask, score, review),
the classes with their supports, and every change a person makes, written as it
happens into the output folder in the layout `imrseg segment` writes, through the
folder's guard, which the workspace holds (its lock) for as long as it is open.

What a person says of a mask is a new row of its query with a `review` (accepted,
corrected, rejected, or proposed again): the latest row wins, as for any re-run, so a
killed server loses at most the correction being drawn. The classes and supports are
kept in `app.json` (uploaded supports under `.supports/`, corrected masks made
examples under `.examples/`), so reopening the folder shows the work where it was left.
The run itself (the model's part) is `studio.runs`."""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from ..durable import ResultsLog
from ..errors import InputError, show_path
from ..guard import Fields, OwnedFolder
from ..images import find_images, load_image, load_image_bytes, load_label_mask_bytes, load_mask_bytes
from ..multiclass import check_labels
from ..outputs.masks import mask_png, read_index_mask, save_index_png, save_mask_png
from ..outputs.naming import CAM_SUFFIX, OVERLAY_SUFFIX, file_tags, plan_outputs, step_suffix
from ..outputs.overlay import OVERLAY_TINT, save_overlay
from ..outputs.palette import class_colour
from ..outputs.results import (RESULTS_FILE, REVIEWS, History, QueryRow, header_labels, query_file,
                               query_identity)
from ..outputs.thumbnails import THUMB_SIZE, image_thumbnail, overlay_thumbnail

STATE_FILE = "app.json"
UPLOADS = ".supports"
EXAMPLES = ".examples"
SUPPORT_KINDS = ("image", "upload", "example")
KEPT = ("accepted", "corrected")  # reviews a run leaves alone
MAX_SUPPORTS = 32  # a class's supports


class Conflict(Exception):
    """What was asked clashes with what is going on (a run recomputing the image)."""


@dataclass(frozen=True)
class Support:
    """One support of a class: a FOLDER image by its name (the model's CAM is its
    mask), an uploaded file (`ref` its name under UPLOADS, with or without a drawn
    mask), or an example (a corrected image with its drawn mask)."""

    kind: str
    ref: str


@dataclass(frozen=True)
class ClassSetting:
    label: str
    prompt: str
    supports: tuple[Support, ...] = ()


def colours(labels: Sequence[str]) -> list[str]:
    """Each class's colour as the overlays draw it: one class red, several the palette's."""
    rgb = [OVERLAY_TINT] if len(labels) == 1 else [class_colour(i) for i in range(1, len(labels) + 1)]
    return ["#%02x%02x%02x" % tuple(c) for c in rgb]


class Workspace:
    """FOLDER's images and the output folder `out`, open between `open()` and `close()`.
    Every public method is safe to call from several threads."""

    def __init__(self, folder: Path, out: Path, max_pixels: int | None = None):
        self.folder, self.out, self.max_pixels = Path(folder), Path(out), max_pixels
        self.guard: OwnedFolder | None = None
        self.lock = threading.RLock()
        self.images: list[Path] = []  # by id
        self.names: list[str] = []  # relative to FOLDER, posix
        self.stems: list[str] = []  # output stems relative to `out` (one class)
        self.files: list[dict | None] = []  # each image's size and mtime when opened
        self.rows: list[QueryRow | None] = []
        self.revs: list[int] = []
        self.labels: list[str] = []  # what the masks' values mean: the latest run's classes
        self.classes: list[ClassSetting] = []
        self.uploads: dict[str, dict] = {}  # ref -> {"name", "file", "mask"}
        self.examples: dict[str, dict] = {}  # ref -> {"image", "mask", "label"}
        self.busy: set[int] = set()  # ids a run is recomputing now
        self.listeners: list[Callable[[str, dict], None]] = []
        self._log: ResultsLog | None = None
        self._rev = 0

    # ------------------------------------------------------------------ opening
    def open(self) -> Workspace:
        if not self.folder.is_dir():
            raise InputError(f"{show_path(self.folder)}: not a folder (`folder`)")
        history = History(self.out)
        self.guard = OwnedFolder(self.out, parameter="out", overwrite=None, known=history.written)
        self.guard.__enter__()
        try:
            # `out` may be, or lie inside, FOLDER (as for `segment`): what imrseg wrote there is
            # never an image to label, the person's own images there are.
            found = find_images([self.folder], exclude=[self.guard.root / name for name in self.guard.owned])
            self._read(found, history)
        except BaseException:
            self.close()
            raise
        return self

    def _read(self, found, history: History) -> None:
        self.images = [image for image, _ in found]
        self.names = [image.relative_to(root).as_posix() for image, root in found]
        plan = plan_outputs(found, self.out)
        self.stems = [self.guard.relative(plan[image]) for image in self.images]
        self.files = [query_file(image) for image in self.images]  # size and mtime now, as rows record them
        self.rows = [history.last.get(query_identity(image), (None, None))[1] for image in self.images]
        self.revs = [row.index + 1 if row else 0 for row in self.rows]
        self._rev = max(self.revs, default=0)
        self.labels = header_labels(history.headers[-1]) if history.headers else []
        if self.guard.is_file(STATE_FILE):
            self._read_state()
        elif self.labels:  # a folder `imrseg segment` made: its classes, supports found in FOLDER
            by_path = {str(image): name for image, name in zip(self.images, self.names)}
            header = history.headers[-1]
            given = header.items("classes", optional=True) or [header]
            self.classes = [ClassSetting(label, label, tuple(
                Support("image", by_path[path]) for path in (c.texts("supports", optional=True) or [])
                if path in by_path)) for label, c in zip(self.labels, given)]

    def _read_state(self) -> None:
        where = show_path(self.out / STATE_FILE)
        try:
            state = Fields(json.loads(self.guard.read_bytes(STATE_FILE)), where)
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{where}: not JSON; move it away to start the classes afresh") from None
        self.uploads = {ref: {"name": u.text("name"), "file": u.relative("file"), "mask": u.relative("mask",
                                                                                                  optional=True)}
                        for ref, u in state.mapping("uploads", optional=True).items()}
        self.examples = {ref: {"image": e.text("image"), "mask": e.relative("mask"), "label": e.text("label")}
                         for ref, e in state.mapping("examples", optional=True).items()}
        self.classes = [ClassSetting(c.text("label"), c.text("prompt", optional=True) or c.text("label"),
                                     tuple(Support(s.text("kind", choices=SUPPORT_KINDS), s.text("ref"))
                                           for s in c.items("supports", optional=True)))
                        for c in state.items("classes", optional=True)]
        for setting in self.classes:  # a support whose file is gone is left out, not an error
            object.__setattr__(setting, "supports", tuple(s for s in setting.supports if self._known(s)))

    def close(self) -> None:
        with self.lock:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.guard is not None:
                self.guard.__exit__(None, None, None)
                self.guard = None

    # ------------------------------------------------------------------ reading
    def state_of(self, i: int) -> str | None:
        """None while image `i` has no mask of its present content (none yet, its row
        failed, or the file changed since: then its mask, even an accepted one, is stale)."""
        row = self.rows[i]
        if row is None or row.status == "failed" or row.mask is None or row.query_file != self.files[i]:
            return None
        return row.review or "proposed"

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("none", *REVIEWS), 0)
        for i in range(len(self.images)):
            counts[self.state_of(i) or "none"] += 1
        return counts

    def item(self, i: int) -> dict:
        row = self.rows[i]
        state = self.state_of(i)
        return {"id": i, "name": show_path(self.names[i]), "state": state, "score": row.score if state else None,
                "fraction": row.foreground_fraction if state else None, "rev": self.revs[i],
                "error": row.error if row is not None and row.status == "failed" else None}

    def listing(self, offset: int, limit: int, order: str, state: str) -> dict:
        with self.lock:
            items = [self.item(i) for i in range(len(self.images))]
        if state != "all":
            items = [it for it in items if (it["state"] or "none") == state]
        if order == "score":
            items.sort(key=lambda it: (it["score"] is None, it["score"] or 0.0, it["name"]))
        return {"total": len(items), "offset": offset, "items": items[offset:offset + limit]}

    def detail(self, i: int) -> dict:
        with self.lock:
            row, item = self.rows[i], self.item(i)
            labels = list(self.labels)
        classes = []
        steps, cam = 0, False
        if item["state"] is not None:
            tags = file_tags(labels)
            outputs = set(row.outputs)
            for label, colour, tag in zip(labels, colours(labels), tags):
                c = row.classes.get(label) or {}
                classes.append({"label": label, "color": colour, "score": c.get("score"),
                                "fraction": c.get("fraction")})
            cam = row.stem + tags[0] + CAM_SUFFIX in outputs
            while row.stem + tags[0] + step_suffix(steps + 1) in outputs:
                steps += 1
        width, height = self._size(i)
        return {**item, "width": width, "height": height, "classes": classes, "steps": steps, "cam": cam}

    def _size(self, i: int) -> tuple[int, int]:
        """The upright full size masks are drawn at (decoded small where the format allows)."""
        return load_image(self.images[i], max_pixels=self.max_pixels, draft_size=THUMB_SIZE).size

    def output_file(self, i: int, kind: str, label: str | None = None, step: int | None = None) -> bytes:
        """A file of image `i`'s outputs: "mask", "cam" or "step" (of `label`)."""
        with self.lock:
            row, labels = self.rows[i], list(self.labels)
        if self.state_of(i) is None:
            raise LookupError(f"image {i}: no mask yet")
        if kind == "mask":
            return self.guard.read_bytes(row.mask)
        label = label if label is not None else labels[0]
        if label not in labels:
            raise InputError(f"label: {label!r} is not among the classes {labels}")
        tag = file_tags(labels)[labels.index(label)]
        rel = row.stem + tag + (CAM_SUFFIX if kind == "cam" else step_suffix(step))
        if rel not in row.outputs:
            raise LookupError(f"image {i}: no {kind} file{'' if step is None else f' for step {step}'}")
        return self.guard.read_bytes(rel)

    def thumbnail(self, i: int) -> bytes:
        """The overlay's thumbnail when the image has a mask, else the image's."""
        with self.lock:
            row = self.rows[i] if self.state_of(i) else None
        # Made outside the lock, so a page loading many never holds up a run's rows; two
        # requests for one thumbnail write the same picture, atomically.
        rel = (overlay_thumbnail(self.guard, row) if row is not None else
               image_thumbnail(self.guard, self.images[i], self.stems[i], self.max_pixels))
        return self.guard.read_bytes(rel)

    def picture(self, i: int):
        """The image upright at full size, as masks are drawn over it."""
        return load_image(self.images[i], max_pixels=self.max_pixels, draft_size=0)

    # ------------------------------------------------------------------ classes
    def classes_state(self) -> list[dict]:
        labels = [c.label for c in self.classes]
        ids = {name: i for i, name in enumerate(self.names)}
        out = []
        for setting, colour in zip(self.classes, colours(labels) if labels else []):
            supports = []
            for s in setting.supports:
                if s.kind == "image":
                    supports.append({"kind": "image", "ref": ids[s.ref], "name": show_path(s.ref), "drawn": False,
                                     "thumb": f"thumb/{ids[s.ref]}"})
                elif s.kind == "upload":
                    u = self.uploads[s.ref]
                    supports.append({"kind": "upload", "ref": s.ref, "name": show_path(u["name"]),
                                     "drawn": bool(u["mask"]),
                                     "thumb": f"support/{s.ref}"})
                else:
                    e = self.examples[s.ref]
                    supports.append({"kind": "example", "ref": s.ref, "name": show_path(e["image"]), "drawn": True,
                                     "thumb": f"thumb/{ids[e['image']]}" if e["image"] in ids else ""})
            out.append({"label": setting.label, "prompt": setting.prompt, "color": colour, "supports": supports})
        return out

    def set_classes(self, classes: Sequence[dict], check_prompt: Callable[[str], None]) -> None:
        """The classes and their supports, as the page sends them: [{"label", "prompt",
        "supports": [{"kind", "ref"}]}], image refs by id. InputError naming the field."""
        settings = []
        for k, c in enumerate(classes):
            field = f"classes[{k}]"
            prompt = (c.get("prompt") or c["label"]).strip()
            check_prompt(prompt)
            if len(c.get("supports") or ()) > MAX_SUPPORTS:
                raise InputError(f"{field}.supports: {len(c['supports'])} supports, the most is {MAX_SUPPORTS}")
            supports = []
            for j, s in enumerate(c.get("supports") or ()):
                kind, ref = s["kind"], s["ref"]
                if kind == "image":
                    if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < len(self.images):
                        raise InputError(f"{field}.supports[{j}].ref: no image {ref!r} in the folder")
                    support = Support("image", self.names[ref])
                else:
                    support = Support(kind, str(ref))
                    if not self._known(support):
                        raise InputError(f"{field}.supports[{j}].ref: no {kind} {str(ref)!r}")
                if support in supports:
                    raise InputError(f"{field}.supports[{j}]: given twice")
                supports.append(support)
            settings.append(ClassSetting(c["label"].strip(), prompt, tuple(supports)))
        try:
            labels = check_labels([s.label for s in settings]) if settings else []
        except InputError as exc:
            raise InputError(f"classes: {exc}") from None
        with self.lock:
            reviewed = any(self.state_of(i) in KEPT for i in range(len(self.images)))
            if reviewed and labels != self.labels:
                raise InputError(f"classes: the folder's accepted and corrected masks are of {self.labels}; keep "
                                 f"those classes, in that order, or label other classes into another --out")
            self.classes = settings
            self._save_state()
        self.emit("classes", {"classes": self.classes_state()})

    def _known(self, support: Support) -> bool:
        if support.kind == "image":
            return support.ref in self.names
        if support.kind == "upload":
            return support.ref in self.uploads and self.guard.is_file(self.uploads[support.ref]["file"])
        return support.ref in self.examples and self.guard.is_file(self.examples[support.ref]["mask"])

    def _save_state(self) -> None:
        state = {"classes": [{"label": c.label, "prompt": c.prompt,
                              "supports": [{"kind": s.kind, "ref": s.ref} for s in c.supports]}
                             for c in self.classes],
                 "uploads": self.uploads, "examples": self.examples}
        self.guard.write(STATE_FILE, json.dumps(state, indent=1).encode("utf-8"))

    def support_files(self, setting: ClassSetting) -> list[tuple[Path, Path | None]]:
        """Each support of a class as (image file, drawn mask file or None)."""
        by_name = dict(zip(self.names, self.images))
        files = []
        for s in setting.supports:
            if s.kind == "image":
                files.append((by_name[s.ref], None))
            elif s.kind == "upload":
                u = self.uploads[s.ref]
                files.append((self.guard.path(u["file"]), self.guard.path(u["mask"]) if u["mask"] else None))
            else:
                e = self.examples[s.ref]
                if e["image"] not in by_name:
                    raise InputError(f"example {s.ref!r}: its image {e['image']!r} is no longer in the folder")
                files.append((by_name[e["image"]], self.guard.path(e["mask"])))
        return files

    def upload(self, data: bytes, name: str, mask: bytes | None) -> dict:
        """An image dropped onto the page (and its drawn mask), kept under UPLOADS by
        content, to be named among a class's supports."""
        image = load_image_bytes(data, f"file: {name}", max_pixels=self.max_pixels, draft_size=0)
        drawn = None
        if mask is not None:
            drawn = load_mask_bytes(mask, f"mask: {name}", self.max_pixels)
            if drawn.shape[::-1] != image.size:
                raise InputError(f"mask: {drawn.shape[1]}x{drawn.shape[0]} but its image {name} is "
                                 f"{image.size[0]}x{image.size[1]}")
        digest = hashlib.sha256(data + b"\0" + (mask_png(drawn) if drawn is not None else b"")).hexdigest()[:20]
        with self.lock:
            if digest not in self.uploads:
                file = self.guard.write(f"{UPLOADS}/{digest}.img", data)
                mask_rel = f"{UPLOADS}/{digest}_mask.png" if drawn is not None else None
                if mask_rel:
                    self.guard.write(mask_rel, mask_png(drawn))
                self.uploads[digest] = {"name": Path(name).name or "upload", "file": self.guard.relative(file),
                                        "mask": mask_rel}
                self._save_state()
        return {"kind": "upload", "ref": digest, "name": show_path(self.uploads[digest]["name"]),
                "drawn": drawn is not None}

    def support_picture(self, ref: str) -> bytes:
        if ref not in self.uploads:
            raise LookupError(f"ref: no upload {ref!r}")
        return self.guard.read_bytes(self.uploads[ref]["file"])

    # ------------------------------------------------------------------ reviews
    def _reviewable(self, i: int) -> QueryRow:
        if i in self.busy:
            raise Conflict(f"image {i} is being recomputed by the run; wait for its new mask")
        if self.state_of(i) is None:
            raise InputError(f"image {i}: no mask yet; run the model first")
        return self.rows[i]

    def review(self, i: int, state: str) -> dict:
        if state not in ("accepted", "rejected", "proposed"):
            raise InputError(f"state: {state!r}; expected accepted, rejected or proposed")
        with self.lock:
            row = self._reviewable(i)
            self._append(i, {**self._row_dict(row), "review": state})
        return self.detail(i)

    def correct(self, i: int, data: bytes) -> dict:
        """A person's mask for image `i` (PNG at the image's size: one class nonzero =
        object; several, values = class index) replaces the mask and its overlay."""
        with self.lock:
            row, labels = self._reviewable(i), list(self.labels)
        loaded = self.picture(i)
        if len(labels) > 1:
            index = load_label_mask_bytes(data, "mask", self.max_pixels)
        else:
            index = load_mask_bytes(data, "mask", self.max_pixels).astype(np.uint8)
        if index.shape[::-1] != loaded.size:
            raise InputError(f"mask: {index.shape[1]}x{index.shape[0]} but image {i} is "
                             f"{loaded.size[0]}x{loaded.size[1]}")
        if int(index.max(initial=0)) > len(labels):
            raise InputError(f"mask: value {int(index.max())} but there are {len(labels)} classes")
        with self.lock:
            if self.rows[i] is not row:
                raise Conflict(f"image {i} changed meanwhile; reload it")
            overlay, mask = self.guard.claim([row.stem + OVERLAY_SUFFIX, row.mask])
            save_overlay(overlay, loaded.image, index, labels if len(labels) > 1 else ())
            (save_index_png if len(labels) > 1 else save_mask_png)(mask, index)
            counts = np.bincount(index.ravel(), minlength=len(labels) + 1) / max(index.size, 1)
            classes = {label: {"fraction": float(counts[k]), "score": (row.classes.get(label) or {}).get("score")}
                       for k, label in enumerate(labels, start=1)}
            self._append(i, {**self._row_dict(row), "review": "corrected",
                             "foreground_fraction": float(counts[1:].sum()), "classes": classes})
        return self.detail(i)

    def example(self, i: int) -> None:
        """Image `i`'s mask (after correction) becomes a support with its drawn mask, of
        every class it has pixels of."""
        with self.lock:
            row, labels = self._reviewable(i), list(self.labels)
            if row.review == "rejected":
                raise InputError(f"image {i}: its mask was rejected; correct it before using it as an example")
            index = read_index_mask(self.out / row.mask, self.guard.read_bytes(row.mask))
            present = [(k, label) for k, label in enumerate(labels, start=1) if (index == k).any()]
            if not present:
                raise InputError(f"image {i}: its mask is empty; paint the object first")
            by_label = {c.label: c for c in self.classes}
            for k, label in present:
                # Named by what it is a snapshot of: this image's mask, at this revision, for this class.
                ref = hashlib.sha256(json.dumps([self.names[i], self.revs[i], label]).encode()).hexdigest()[:20]
                rel = f"{EXAMPLES}/{ref}.png"
                if ref not in self.examples:
                    self.guard.write(rel, mask_png(index == k))
                    self.examples[ref] = {"image": self.names[i], "mask": rel, "label": label}
                setting = by_label.get(label) or ClassSetting(label, label)
                # The example takes the place of the image as a plain support (its CAM) and of
                # its earlier examples: the newest drawing of an image is the one that teaches.
                superseded = {Support("image", self.names[i])} | {
                    Support("example", r) for r, e in self.examples.items() if e["image"] == self.names[i]
                    and e["label"] == label and r != ref}
                kept = tuple(s for s in setting.supports if s not in superseded)
                by_label[label] = replace(setting, supports=(*kept, Support("example", ref)))
            self.classes = [by_label.get(c.label, c) for c in self.classes] + [
                by_label[label] for _, label in present if label not in {c.label for c in self.classes}]
            self._save_state()
        self.emit("classes", {"classes": self.classes_state()})

    # ------------------------------------------------------------------ writing
    def log(self) -> ResultsLog:
        """results.jsonl, opened once for the workspace; callers hold `lock` to write."""
        if self._log is None:
            self._log = self.guard.log(RESULTS_FILE)
        return self._log

    def _row_dict(self, row: QueryRow) -> dict:
        return {"type": "query", "query": row.query, "resolved": row.identity, "file_name": row.file_name,
                "status": row.status, "mask": str(self.out / row.mask), "outputs": list(row.outputs),
                "query_file": row.query_file,
                "foreground_fraction": row.foreground_fraction, "score": row.score, "classes": row.classes,
                "steps": row.steps, "seconds": row.seconds, "error": None, "review": row.review}

    def _append(self, i: int, row: dict) -> None:
        """Write a query row for image `i` and make it the image's latest (holding `lock`)."""
        self.log().write(row)
        self.record(i, row)

    def record(self, i: int, row: dict) -> None:
        """Image `i`'s latest row is `row` (already written); tell the listeners."""
        with self.lock:
            self._rev += 1
            self.rows[i] = QueryRow.read(Fields(row, f"{show_path(self.out / RESULTS_FILE)}"), self._rev)
            self.revs[i] = self._rev
            item = self.item(i)
        self.emit("result", {key: item[key] for key in ("id", "state", "score", "fraction", "rev", "error")})

    def emit(self, event: str, data: dict) -> None:
        for listener in list(self.listeners):
            listener(event, data)
