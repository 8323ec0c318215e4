"""Sharding over processes with torch.distributed (2 CPU ranks, gloo): the merged
result equals a single-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import write_image
from test_eval_cli import _make_voc

pytestmark = pytest.mark.slow


def _torchrun(*args, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "imrseg", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _single(*args, env=None):
    return subprocess.run([sys.executable, "-m", "imrseg", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


def test_segment_two_ranks_equals_one_process(tmp_path, recipe_weight_files):
    queries = tmp_path / "q"
    for i in range(5):
        write_image(queries / f"sub{i % 2}" / f"img{i}.png", (40 + 3 * i, 30 + 2 * i), seed=i)
    support = write_image(tmp_path / "s.jpg", seed=9)
    common = ["segment", "-l", "dog", "-s", support, "-q", queries, "--steps", 1, "--quiet", "--device", "cpu",
              "--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"]]
    one = _single(*common, "-o", tmp_path / "one")
    two = _torchrun(*common, "-o", tmp_path / "two")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr

    def rows(out):
        return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]

    def queries(rows):
        return [(r["query"], r["status"]) for r in rows if r["type"] == "query"]

    def written(rows):
        return sorted(f for r in rows if r["type"] == "writing" for f in r["outputs"])

    single, merged = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert merged[0]["world"] == 2 and merged[0]["fingerprint"] == single[0]["fingerprint"]
    assert queries(merged) == queries(single) and written(merged) == written(single)
    for r in single[1:]:
        if r["type"] != "query":
            continue
        mask = r["mask"]
        assert (tmp_path / "two" / os.path.relpath(mask, tmp_path / "one")).read_bytes() == open(mask, "rb").read()
    assert not list((tmp_path / "two").glob(".results.rank*"))


def test_sharded_multi_class_coco_run_equals_one_process(tmp_path, recipe_weight_files):
    """Rank 0 exports after the merge, so annotations.json holds every rank's queries."""
    from pycocotools.coco import COCO

    queries = tmp_path / "q"
    for i in range(5):
        write_image(queries / f"img{i}.png", (48 + 4 * i, 40 + 2 * i), seed=20 + i)
    supports = [write_image(tmp_path / f"s{i}.jpg", seed=30 + i) for i in range(2)]
    common = ["segment", "--class", f"dog={supports[0]}", "--class", f"cat={supports[1]}", "-q", queries,
              "--coco", "--steps", 1, "--quiet", "--device", "cpu",
              "--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"]]
    # One thread, as each rank has: the scores are then the same floats, not only close.
    one = _single(*common, "-o", tmp_path / "one", env={"OMP_NUM_THREADS": "1"})
    two = _torchrun(*common, "-o", tmp_path / "two")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr

    single = json.loads((tmp_path / "one" / "annotations.json").read_text())
    merged = json.loads((tmp_path / "two" / "annotations.json").read_text())
    assert sorted(image["file_name"] for image in merged["images"]) == [f"img{i}.png" for i in range(5)]
    assert merged["annotations"], "the recipe weights find objects in these images"
    assert {**merged, "info": None} == {**single, "info": None}  # info names the folder
    assert len(COCO(str(tmp_path / "two" / "annotations.json")).getAnnIds()) == len(merged["annotations"])


def test_eval_two_ranks_equals_one_process(tmp_path, recipe_weight_files):
    data = tmp_path / "data"
    lines = _make_voc(data, {1: 3, 2: 3})
    splits = tmp_path / "splits" / "pascal" / "val"
    splits.mkdir(parents=True)
    (splits / "fold0.txt").write_text("\n".join(lines) + "\n")
    common = ["eval", "--benchmark", "pascal", "--fold", 0, "--episodes", 4, "--steps", 1, "--device", "cpu",
              "--data-root", data, "--splits", tmp_path / "splits", "--weights", recipe_weight_files["weights"],
              "--clip-weights", recipe_weight_files["clip"]]
    one = _single(*common, "--report", tmp_path / "one.json", env={"IMRSEG_CACHE": str(tmp_path / "c1")})
    two = _torchrun(*common, "--report", tmp_path / "two.json", env={"IMRSEG_CACHE": str(tmp_path / "c2")})
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (a["miou"], a["fb_iou"], a["per_class"]) == (b["miou"], b["fb_iou"], b["per_class"])
