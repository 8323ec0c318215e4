"""Labelling through the commands, with recipe weights on tiny images: several
classes in one run (indexed masks, per-class files, rows, each query decoded once),
COCO annotations that cover a resumed run and equal `imrseg export`'s, a one-class
`--class` run equal to the `--label` form, zero-shot with several labels, and the
argument errors that stop before a model loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from conftest import write_image
from imrseg.cli import _register, app
from imrseg.images import load_image
from imrseg.runner import batches

_register()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture()
def weights(recipe_weight_files):
    return ["--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"], "--steps", 1]


def test_several_classes_in_one_run_then_resumed_with_coco(tmp_path, weights, monkeypatch):
    queries, out = tmp_path / "q", tmp_path / "out"
    sizes = {"a.jpg": (64, 48), "sub/b.png": (40, 56)}
    for i, (name, size) in enumerate(sizes.items()):
        write_image(queries / name, size, seed=i)
    supports = [write_image(tmp_path / f"s{i}.jpg", seed=10 + i) for i in range(3)]
    decoded = []

    def counted(path, **kwargs):
        decoded.append(path)
        return load_image(path, **kwargs)

    monkeypatch.setattr(batches, "load_image", counted)

    result = run("segment", "--class", f"dog={supports[0]}", "--class", f"traffic cone={supports[1]}",
                 "--class", f"traffic cone={supports[2]}", "-q", queries, "-o", out, "--save-prob", "--save-steps",
                 "--coco", "--gallery", "--json", *weights)
    assert result.exit_code == 0, result.output
    assert sorted(Path(p).name for p in decoded) == ["a.jpg", "b.png"]  # once per query, not per class

    header, queried = rows(out)[0], [r for r in rows(out) if r["type"] == "query"]
    assert [c["label"] for c in header["classes"]] == ["dog", "traffic cone"]
    assert [len(c["supports"]) for c in header["classes"]] == [1, 2] and header["label"] is None
    for row in queried:
        name = row["file_name"]
        stem = out / Path(name).with_suffix("")
        mask = Image.open(f"{stem}.png")
        assert mask.mode == "P" and mask.size == sizes[name]
        index = np.asarray(mask)
        assert set(np.unique(index)) <= {0, 1, 2}
        for i, (label, tag) in enumerate((("dog", "dog"), ("traffic cone", "traffic_cone")), start=1):
            assert row["classes"][label]["fraction"] == pytest.approx((index == i).mean())
            assert 0.0 <= row["classes"][label]["score"] <= 1.0
            for suffix in ("_prob.png", "_step1.png"):
                assert Image.open(f"{stem}_{tag}{suffix}").size == sizes[name]
        assert row["foreground_fraction"] == pytest.approx((index > 0).mean())
        present = [c["score"] for c in row["classes"].values() if c["fraction"] > 0]
        assert row["score"] == pytest.approx(min(present, default=0.0))
    summary = json.loads(result.stdout.splitlines()[-1])
    assert [w["score"] for w in summary["worst"]] == sorted(r["score"] for r in queried)
    assert (out / "gallery.html").is_file()

    # A third query, then the same command: the two finished ones are skipped, and the
    # annotations cover all three.
    write_image(queries / "c.jpg", (30, 30), seed=7)
    decoded.clear()
    again = run("segment", "--class", f"dog={supports[0]}", "--class", f"traffic cone={supports[1]}",
                "--class", f"traffic cone={supports[2]}", "-q", queries, "-o", out, "--save-prob", "--save-steps",
                "--coco", "--json", *weights)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.splitlines()[-1])["skipped"] == 2 and [Path(p).name for p in decoded] == ["c.jpg"]
    doc = json.loads((out / "annotations.json").read_text())
    assert sorted(i["file_name"] for i in doc["images"]) == ["a.jpg", "c.jpg", "sub/b.png"]
    assert [c["name"] for c in doc["categories"]] == ["dog", "traffic cone"]
    for image in doc["images"]:
        index = np.asarray(Image.open(out / Path(image["file_name"]).with_suffix(".png")))
        for category in (1, 2):
            union = np.zeros(index.shape, bool)
            for ann in (a for a in doc["annotations"] if a["image_id"] == image["id"] and a["category_id"] == category):
                rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
                union |= mask_utils.decode(rle).astype(bool)
            assert np.array_equal(union, index == category)

    written = (out / "annotations.json").read_bytes()
    exported = run("export", out, "--coco")
    assert exported.exit_code == 0, exported.output
    assert (out / "annotations.json").read_bytes() == written  # export equals --coco


def test_one_class_given_as_class_equals_the_label_form(tmp_path, weights):
    query, support = write_image(tmp_path / "q.jpg", seed=1), write_image(tmp_path / "s.jpg", seed=2)
    by_label, by_class = tmp_path / "label", tmp_path / "class"
    assert run("segment", "-l", "dog", "-s", support, "-q", query, "-o", by_label, *weights).exit_code == 0
    assert run("segment", "--class", f"dog={support}", "-q", query, "-o", by_class, *weights).exit_code == 0
    for name in ("q.png", "q_overlay.jpg"):
        assert (by_label / name).read_bytes() == (by_class / name).read_bytes()
    assert Image.open(by_label / "q.png").mode == "L"  # a one-class run keeps its 0/255 mask
    assert rows(by_label)[0]["label"] == "dog" and rows(by_label)[-1]["classes"]["dog"]["score"] >= 0


def test_zero_shot_with_several_labels(tmp_path, weights):
    image = write_image(tmp_path / "p.jpg", (48, 40), seed=3)
    result = run("zero-shot", image, "--label", "dog", "--label", "cat", "-o", tmp_path / "out", *weights)
    assert result.exit_code == 0, result.output
    mask = Image.open(tmp_path / "out" / "p.png")
    assert mask.mode == "P" and mask.size == (48, 40) and set(np.unique(np.asarray(mask))) <= {0, 1, 2}
    assert [c["label"] for c in rows(tmp_path / "out")[0]["classes"]] == ["dog", "cat"]


@pytest.mark.parametrize("args, message", [
    (["--class", "dog"], "expected LABEL=SUPPORT"),
    (["--class", "=s.jpg"], "expected LABEL=SUPPORT"),
    (["--label", "dog", "--class", "cat=s.jpg"], "not both"),
    (["--support", "s.jpg", "--class", "cat=s.jpg"], "go with --label"),
    (["--class", "cat=s.jpg", "--class-mask", "dog=m.png"], "with a LABEL given by --class"),
    (["--class", "Dog=s.jpg", "--class", "dog =s.jpg"], "name the same class"),
    (["--class", "cat=s.jpg", "--class", "dog=s.jpg", "--class-mask", "cat=m.png", "--class-mask", "cat=m.png"],
     "1 support images but 2 drawn masks"),
    (["-l", "cat", "-s", "s.jpg", "--coco-polygons"], "add --coco"),
    (["-l", "cat", "-s", "s.jpg", "--coco", "--min-area", "-1"], "--min-area must be 0 or more"),
])
def test_class_argument_errors_stop_before_loading(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "s.jpg", seed=1)
    write_image(tmp_path / "q.jpg", seed=2)
    Image.new("L", (64, 48), 255).save(tmp_path / "m.png")
    result = CliRunner().invoke(app, ["segment", *args, "-q", "q.jpg", "-o", "out", "--weights", "missing.pt"])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
