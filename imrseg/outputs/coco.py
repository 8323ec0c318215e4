"""COCO instance annotations of an output folder: `OUT/annotations.json`.

Built from results.jsonl and the masks on disk (`results.read_finished`, through the
folder's guard), so a resumed or sharded run exports every query it finished, and
`imrseg export` gives the same file later without a model. Each class's mask is split into connected components
(8-connected), and each component becomes one annotation: its segmentation as
COCO run-length encoding (pycocotools' own encoding, exact) or, with polygons,
the outline of its pixels (traced on a grid twice as fine, so the polygon follows
the pixels' edges and pycocotools rasterises it back to the same pixels; holes
cannot be drawn by a COCO polygon and are filled), with its bbox, area,
`iscrowd` 0 and `score`: its class's score in that image (`imrseg.scores`)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .. import __version__
from ..guard import OwnedFolder
from .results import FinishedRun, opened, read_finished

ANNOTATIONS_FILE = "annotations.json"
POLYGON_SCALE = 2  # pixel edges lie on the half-pixel grid


@dataclass(frozen=True)
class Component:
    """One connected component: its pixels within its bounding box, placed in an image."""

    crop: np.ndarray  # (h, w) uint8 0/1
    left: int
    top: int
    image_shape: tuple[int, int]

    @property
    def area(self) -> int:
        return int(self.crop.sum())

    def full(self) -> np.ndarray:
        """The component as an (H, W) uint8 0/1 mask of the whole image."""
        out = np.zeros(self.image_shape, np.uint8, order="F")
        out[self.top:self.top + self.crop.shape[0], self.left:self.left + self.crop.shape[1]] = self.crop
        return out


def components(index: np.ndarray, class_index: int, min_area: int = 0) -> Iterator[Component]:
    """The 8-connected components of class `class_index` in an index mask, largest
    first (then top to bottom); those under `min_area` pixels are left out."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((index == class_index).astype(np.uint8),
                                                               connectivity=8)
    keep = [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= max(min_area, 1)]
    keep.sort(key=lambda c: (-stats[c, cv2.CC_STAT_AREA], stats[c, cv2.CC_STAT_TOP], stats[c, cv2.CC_STAT_LEFT]))
    for c in keep:
        left, top, width, height = (int(v) for v in stats[c, :4])
        crop = (labels[top:top + height, left:left + width] == c).astype(np.uint8)
        yield Component(crop, left, top, index.shape)


def rle(component: Component) -> dict:
    """COCO compressed RLE of a component, JSON-ready."""
    encoded = mask_utils.encode(component.full())
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def polygons(component: Component) -> list[list[float]]:
    """The outline of a component as COCO polygons [[x1, y1, x2, y2, ...]]: traced
    around the pixels' edges at POLYGON_SCALE, so even a one-pixel component has a
    polygon and pycocotools rasterises it back to its pixels (holes filled)."""
    fine = cv2.resize(component.crop, None, fx=POLYGON_SCALE, fy=POLYGON_SCALE, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(fine, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / POLYGON_SCALE + (component.left, component.top)
        out.append([round(float(v), 2) for v in points.ravel()])
    return out


def annotations_document(run: FinishedRun, min_area: int = 0, use_polygons: bool = False) -> dict:
    """The COCO instances document of a finished output folder; a query whose mask a
    person rejected (`imrseg app`) is left out, image and all: it has no mask to trust."""
    images, annotations = [], []
    kept = [query for query in run.queries if query.review != "rejected"]
    for image_id, query in enumerate(kept, start=1):
        index = run.mask(query)
        height, width = index.shape
        images.append({"id": image_id, "file_name": query.file_name, "width": width, "height": height})
        for class_index, label in enumerate(run.labels, start=1):
            score = (query.classes.get(label) or {}).get("score", query.score)
            for component in components(index, class_index, min_area):
                encoded = rle(component)
                segmentation = polygons(component) if use_polygons else encoded
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": class_index,
                    "segmentation": segmentation, "area": component.area,
                    "bbox": [float(v) for v in mask_utils.toBbox(_encoded(encoded))],
                    "iscrowd": 0, "score": score,
                })
    return {
        "info": {"description": f"imrseg masks of {run.out.name}", "version": __version__},
        "licenses": [],
        "images": images,
        "categories": [{"id": i, "name": label, "supercategory": "object"}
                       for i, label in enumerate(run.labels, start=1)],
        "annotations": annotations,
    }


def _encoded(json_rle: dict) -> dict:
    return {"size": json_rle["size"], "counts": json_rle["counts"].encode("ascii")}


def export_coco(out: OwnedFolder | os.PathLike | str, min_area: int = 0, use_polygons: bool = False) -> Path:
    """Write `out/annotations.json` atomically (replacing one imrseg wrote, never a
    file of the user's); returns its path. `out` is a folder, or the OwnedFolder a run holds."""
    with opened(out) as folder:
        document = annotations_document(read_finished(folder), min_area, use_polygons)
        folder.write(ANNOTATIONS_FILE, json.dumps(document, separators=(",", ":")).encode("utf-8"))
        return folder.given / ANNOTATIONS_FILE
