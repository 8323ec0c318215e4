"""Labelling outputs without a model: indexed masks and their palette, per-class file
names, the labelled overlay, COCO annotations of an output folder (exact RLE,
polygons, min-area, export), and the review gallery rendered by a real browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from typer.testing import CliRunner

from imrseg.outputs.coco import ANNOTATIONS_FILE, export_coco
from imrseg.durable import ResultsLog
from imrseg.outputs.gallery import GALLERY_FILE, build_gallery
from imrseg.outputs.thumbnails import OVERLAY_THUMBS as THUMBS
from imrseg.multiclass import index_mask
from imrseg.outputs.masks import read_index_mask, save_index_png, save_mask_png
from imrseg.outputs.naming import label_slugs
from imrseg.outputs.overlay import save_overlay
from imrseg.outputs.palette import class_colour, voc_palette

LABELS = ["dog", "traffic cone"]


def test_index_png_has_vocs_palette_and_reads_back(tmp_path):
    index = np.zeros((20, 30), np.uint8)
    index[2:8, 3:9], index[10:18, 12:25] = 1, 2
    save_index_png(tmp_path / "m.png", index)
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P" and image.size == (30, 20)
    assert image.getpalette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]  # VOC's first colours
    assert voc_palette()[3 * 15:3 * 16] == [192, 128, 128]  # VOC's person
    assert np.array_equal(read_index_mask(tmp_path / "m.png"), index)
    save_mask_png(tmp_path / "single.png", index == 2)  # a one-class run's 0/255 mask is class 1
    assert np.array_equal(read_index_mask(tmp_path / "single.png"), (index == 2).astype(np.uint8))


def test_index_mask_rules():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[0, 1, 1, 0]], bool)
    pa = np.array([[0.9, 0.6, 0.9, 0.9]], np.float32)
    pb = np.array([[0.1, 0.7, 0.4, 0.9]], np.float32)
    # Background where no mask is set, whatever the probabilities; overlaps to the more probable;
    # a class whose mask is not set never wins a pixel (column 2: a is more probable but b's mask).
    assert index_mask([a, b], [pa, pb]).tolist() == [[1, 2, 2, 0]]


def test_label_slugs_are_file_name_safe_and_distinct():
    assert label_slugs(["traffic cone", "a/b", "Dog", "dog", "..", "chat noir"]) == [
        "traffic_cone", "a_b", "Dog", "dog_2", "class", "chat_noir"]


def test_labelled_overlay_colours_each_class_and_has_a_legend(tmp_path):
    picture = np.full((120, 160, 3), 128, np.uint8)
    index = np.zeros((60, 80), np.uint8)  # half size: resized to the picture
    index[30:55, 5:35], index[30:55, 45:75] = 1, 2
    save_overlay(tmp_path / "o.jpg", picture, index, LABELS)
    out = np.asarray(Image.open(tmp_path / "o.jpg")).astype(int)
    assert out.shape == (120, 160, 3)
    for i, (y, x) in ((1, (85, 40)), (2, (85, 120))):
        expected = np.round(128 * 0.55 + np.array(class_colour(i)) * 0.45)
        assert np.abs(out[y, x] - expected).max() <= 6, (i, out[y, x], expected)
    assert (out[2:6, 30:40] > 240).all()  # the legend's white box, top left
    assert (np.abs(out[2:20, 2:20] - np.array(class_colour(1))).sum(axis=2) < 40).any()  # a swatch


# ----------------------------------------------------------------- a folder
def _disk(shape, centre, radius):
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def labelled_folder(tmp_path: Path) -> Path:
    """An output folder as `segment --class dog=... --class "traffic cone"=...` leaves it:
    two finished queries (one with a ring, a lone pixel and two classes, one empty),
    one failed."""
    out, queries = tmp_path / "out", tmp_path / "queries"
    index = np.zeros((40, 60), np.uint8)
    index[_disk((40, 60), (15, 15), 10)] = 1
    index[_disk((40, 60), (15, 15), 4)] = 0  # a hole: RLE keeps it
    index[5:30, 35:55] = 2
    index[38, 2] = 1  # a one-pixel component
    index[36:39, 50:53] = 1
    masks = {"sub/a.jpg": index, "b.png": np.zeros((30, 20), np.uint8)}
    rows = []
    for name, mask in masks.items():
        stem = Path(name).with_suffix("").as_posix()
        (queries / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(mask.shape + (3,), 90, np.uint8)).save(queries / name)
        save_index_png(out / f"{stem}.png", mask)
        save_overlay(out / f"{stem}_overlay.jpg", np.full(mask.shape + (3,), 90, np.uint8), mask, LABELS)
        classes = {label: {"fraction": float((mask == i).mean()), "score": 0.5 + 0.1 * i}
                   for i, label in enumerate(LABELS, start=1)}
        score = min([c["score"] for c in classes.values() if c["fraction"] > 0], default=0.0)
        rows.append({"type": "query", "query": str(queries / name), "file_name": name, "status": "done",
                     "mask": str(out / f"{stem}.png"), "outputs": [f"{stem}_overlay.jpg", f"{stem}.png"],
                     "classes": classes, "score": score})
    rows.append({"type": "query", "query": str(queries / "c.jpg"), "file_name": "c.jpg", "status": "failed",
                 "mask": None, "outputs": [], "error": "c.jpg: not an image"})
    with ResultsLog(out / "results.jsonl") as log:
        log.write({"type": "run", "label": None, "classes": [{"label": label} for label in LABELS]})
        for row in rows:
            log.write(row)
    return out


def _decode(segmentation, height, width) -> np.ndarray:
    if isinstance(segmentation, list):
        segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        segmentation = {**segmentation, "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(segmentation).astype(bool)


def test_coco_rle_annotations_are_exactly_the_components(tmp_path):
    out = labelled_folder(tmp_path)
    path = export_coco(out)
    assert path == out / ANNOTATIONS_FILE and not [p for p in os.listdir(out) if ".tmp-" in p]
    doc = json.loads(path.read_text())
    assert [c["name"] for c in doc["categories"]] == LABELS and [c["id"] for c in doc["categories"]] == [1, 2]
    assert [(i["file_name"], i["width"], i["height"]) for i in doc["images"]] == [("sub/a.jpg", 60, 40),
                                                                                  ("b.png", 20, 30)]
    coco = COCO(str(path))  # pycocotools accepts it
    index = read_index_mask(out / "sub/a.png")
    count, _ = cv2.connectedComponents((index == 1).astype(np.uint8), connectivity=8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len([a for a in anns if a["category_id"] == 1]) == count - 1 == 3
    assert len([a for a in anns if a["category_id"] == 2]) == 1
    for category in (1, 2):
        union = np.zeros_like(index, bool)
        for ann in (a for a in anns if a["category_id"] == category):
            pixels = coco.annToMask(ann).astype(bool)
            assert np.array_equal(pixels, _decode(ann["segmentation"], 40, 60))
            # Exactly one component of its class: connected, inside the class, and maximal.
            assert (index[pixels] == category).all() and not (union & pixels).any()
            n, _ = cv2.connectedComponents(pixels.astype(np.uint8), connectivity=8)
            grown = cv2.dilate(pixels.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            assert n == 2 and not ((index == category) & grown & ~pixels).any()
            ys, xs = np.nonzero(pixels)
            assert ann["area"] == pixels.sum() and ann["iscrowd"] == 0
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["score"] == pytest.approx(0.5 + 0.1 * category)
            union |= pixels
        assert np.array_equal(union, index == category)
    assert coco.getAnnIds(imgIds=[2]) == []  # the empty query: an image without annotations


def test_coco_polygons_within_a_pixel_and_min_area(tmp_path):
    out = labelled_folder(tmp_path)
    rle = json.loads(export_coco(out).read_text())["annotations"]
    polygons = json.loads(export_coco(out, use_polygons=True).read_text())["annotations"]
    assert [a["area"] for a in polygons] == [a["area"] for a in rle]
    for by_rle, by_polygon in zip(rle, polygons):
        exact, traced = _decode(by_rle["segmentation"], 40, 60), _decode(by_polygon["segmentation"], 40, 60)
        if by_rle["category_id"] == 1 and by_rle["area"] > 50:  # the ring: a COCO polygon cannot keep its hole
            assert np.array_equal(traced, _disk((40, 60), (15, 15), 10))
        else:  # hole-free shapes, even a single pixel, come back pixel for pixel
            assert np.array_equal(traced, exact)
    kept = json.loads(export_coco(out, min_area=9).read_text())["annotations"]
    assert sorted(a["area"] for a in kept) == sorted(a["area"] for a in rle if a["area"] >= 9)
    assert len(kept) == len(rle) - 1  # the lone pixel is gone


def test_export_command_writes_the_same_file(tmp_path):
    from imrseg.cli import _register, app

    _register()
    out = labelled_folder(tmp_path)
    expected = export_coco(out, use_polygons=True).read_bytes()
    (out / ANNOTATIONS_FILE).unlink()
    result = CliRunner().invoke(app, ["export", str(out), "--coco", "--coco-polygons"])
    assert result.exit_code == 0, result.output
    assert (out / ANNOTATIONS_FILE).read_bytes() == expected
    for args, message in ((["export", str(out)], "pass --coco"),
                          (["export", str(tmp_path / "nowhere"), "--coco"], "not a folder"),
                          (["export", str(tmp_path / "queries"), "--coco"], "no results.jsonl")):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 2 and message in bad.output and len(bad.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ gallery
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           *args], capture_output=True, text=True, timeout=120)


def test_gallery_page_renders_worst_first_and_filters_by_class(tmp_path):
    out = labelled_folder(tmp_path)
    page = build_gallery(out)
    assert page == out / GALLERY_FILE
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<link" not in html  # self-contained
    thumbs = sorted((out / THUMBS).rglob("*.jpg"))
    assert [t.relative_to(out / THUMBS).as_posix() for t in thumbs] == ["b.jpg", "sub/a.jpg"]
    written = [t.stat().st_mtime_ns for t in thumbs]
    build_gallery(out)
    assert [t.stat().st_mtime_ns for t in thumbs] == written  # thumbnails are written once
    if _chromium() is None:
        pytest.skip("no chromium to render the page (apt-get install chromium)")

    dom = _browser("--dump-dom", page.as_uri()).stdout
    cards = re.findall(r'<figure class="card" data-classes="([^"]*)"( hidden="")?>(.*?)</figure>', dom, re.S)
    assert len(cards) == 2, dom[:2000]
    names = [re.search(r'<div class="name">([^<]*)</div>', c[2])[1] for c in cards]
    assert names == ["b.png", "sub/a.jpg"]  # worst score (0, nothing found) first
    assert "nothing found" in cards[0][2] and "dog" in cards[1][2] and "traffic cone" in cards[1][2]
    assert 'loading="lazy"' in cards[1][2] and 'src=".gallery/sub/a.jpg"' in cards[1][2]
    links = {text: href for href, text in re.findall(r'<a href="([^"]*)">([^<]*)</a>', cards[1][2])}
    assert links["mask"] == "sub/a.png" and links["overlay"] == "sub/a_overlay.jpg"
    assert (out / links["image"]).resolve() == (tmp_path / "queries" / "sub" / "a.jpg").resolve()
    assert "2 of 2 shown" in dom

    filtered = _browser("--dump-dom", page.as_uri() + "#class=traffic%20cone").stdout
    shown = re.findall(r'<figure class="card" data-classes="([^"]*)">', filtered)
    assert shown == ["1 2"] and "1 of 2 shown" in filtered

    shot = Path("/tmp/imrseg-gallery.png")
    _browser(f"--screenshot={shot}", "--window-size=900,600", "--virtual-time-budget=3000", page.as_uri())
    assert Image.open(shot).size == (900, 600)
