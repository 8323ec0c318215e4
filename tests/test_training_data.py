"""Training episodes as the authors' loaders make them (HSNet's trn lists, each
line once per epoch with a support of its class; COCO's class-then-image draw),
the masks their loss sees, folders in FSS-1000's layout, and HSNet's FSS-1000 test
episodes (checked against their rule, written out here). No network runs."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imrseg.errors import InputError
from imrseg.data import lists
from imrseg.data.classes import fold_classes
from imrseg.data.datasets import BenchmarkData
from imrseg.data.episodes import sample_episodes
from imrseg.clip.vocabulary import folder_vocabulary
from imrseg.data.folder import FolderData, open_fss, open_folder
from imrseg.data.splits import load_training_split
from imrseg.data.training_episodes import training_episodes
from imrseg.transforms import network_input
from training_fixtures import SHAPES, make_shapes

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "splits"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="no ../shared/reference/splits here")


# ------------------------------------------------------------ PASCAL / COCO
def _pascal_lists(root: Path) -> dict[int, list[str]]:
    """trn lists in HSNet's layout: fold f lists three images of each of its classes."""
    lines = {f: [f"img{f}_{c}_{i}__{c + 1:02d}" for c in fold_classes("pascal", f) for i in range(3)]
             for f in range(4)}
    for f, fold_lines in lines.items():
        path = root / "pascal" / "trn" / f"fold{f}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(fold_lines) + "\n")
    return lines


def test_pascal_trains_on_the_other_folds_lines(tmp_path):
    lines = _pascal_lists(tmp_path)
    split = load_training_split("pascal", 2, tmp_path)
    expected = [(n.split("__")[0], int(n.split("__")[1]) - 1) for f in (0, 1, 3) for n in lines[f]]
    assert list(split.entries) == expected and split.size == len(expected)
    assert set(split.class_ids) == set(range(20)) - set(fold_classes("pascal", 2))
    assert not split.official  # not HSNet's files


def test_an_epoch_visits_every_line_once_with_a_support_of_its_class(tmp_path):
    _pascal_lists(tmp_path)
    split = load_training_split("pascal", 0, tmp_path)
    epoch = training_episodes(split, 0, seed=0)
    assert Counter((e.query, e.class_id) for e in epoch) == Counter(split.entries)
    assert [e.index for e in epoch] == list(range(len(epoch)))
    for e in epoch:
        assert len(e.supports) == 1 and e.supports[0] != e.query
        assert e.supports[0] in split.classwise[e.class_id]
    # Shuffled every epoch; the same (seed, epoch) draws the same episodes, so a resumed run sees them.
    assert [e.query for e in training_episodes(split, 1)] != [e.query for e in epoch]
    assert training_episodes(split, 0, seed=0) == epoch
    assert training_episodes(split, 0, seed=1) != epoch


def test_coco_draws_class_then_image_over_the_training_classes(tmp_path):
    test = set(fold_classes("coco", 1))
    lists = {c: ([] if c in test else [f"train2014/{c}_{i}.jpg" for i in range(3)] + ["train2014/shared.jpg"])
             for c in range(80)}
    path = tmp_path / "coco" / "trn" / "fold1.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(lists))
    split = load_training_split("coco", 1, tmp_path)
    assert split.size == 60 * 3 + 1  # one episode per distinct image, as the authors
    epoch = training_episodes(split, 0)
    assert len(epoch) == split.size and split.entries == ()
    assert {e.class_id for e in epoch} <= set(split.class_ids) and not {e.class_id for e in epoch} & test
    assert all(e.query in lists[e.class_id] and e.supports[0] in lists[e.class_id] and e.supports[0] != e.query
               for e in epoch)
    lists[1] = ["train2014/x.jpg", "train2014/y.jpg"]  # a test class with images: another fold's list
    path.write_bytes(pickle.dumps(lists))
    with pytest.raises(InputError, match="test fold 1's classes"):
        load_training_split("coco", 1, tmp_path)


def test_without_splits_the_pinned_lists_are_fetched(tmp_path, monkeypatch):
    lines = _pascal_lists(tmp_path)
    asked = []

    def fetch(name, cache_dir=None, base_url=None):
        asked.append(name)
        return tmp_path / name

    monkeypatch.setattr(lists, "fetch_list", fetch)
    split = load_training_split("pascal", 1)
    assert asked == [f"pascal/trn/fold{f}.txt" for f in (0, 2, 3)] and set(asked) <= set(lists.OFFICIAL_SHA256)
    assert split.size == sum(len(lines[f]) for f in (0, 2, 3))


@needs_reference
def test_pinned_sha256_are_the_reference_lists():
    for name, sha in lists.OFFICIAL_SHA256.items():
        assert hashlib.sha256((REFERENCE / name).read_bytes()).hexdigest() == sha, name


@needs_reference
@pytest.mark.parametrize("name, fold, size, pairs", [("pascal", 0, 11394, 11394), ("coco", 3, 73808, 141016)])
def test_official_training_lists(name, fold, size, pairs):
    split = load_training_split(name, fold, REFERENCE)
    assert split.official and split.size == size and len(split.cam_pairs()) == pairs
    assert not set(split.class_ids) & set(fold_classes(name, fold))
    if name == "pascal":
        text = "".join((REFERENCE / f"pascal/trn/fold{f}.txt").read_text() for f in (1, 2, 3))
        assert [f"{n}__{c + 1:02d}" for n, c in split.entries] == text.split("\n")[:-1]


def test_masks_are_what_the_authors_loss_sees(tmp_path):
    """PASCAL: resized nearest to 400x400, 1 for the class, 0 elsewhere, the 255
    boundary included (their training loss has no ignore index)."""
    from imrseg.training.data import EpisodeLoader

    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    raw = np.zeros((37, 53), np.uint8)
    raw[5:20, 8:30], raw[4, 8:30], raw[25:30, 40:50] = 3, 255, 7
    rgb = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(voc / "JPEGImages" / "a.jpg")
    Image.fromarray(raw).save(voc / "SegmentationClassAug" / "a.png")
    loader = EpisodeLoader(BenchmarkData.open("pascal", tmp_path), "pascal", cams=None)
    image, mask = loader._image_and_mask("a", 2)
    theirs = F.interpolate(torch.from_numpy(raw)[None, None].float(), (400, 400), mode="nearest")[0, 0]
    assert mask.dtype == torch.long and torch.equal(mask, (theirs == 3).long())
    assert mask.sum() > 0 and not mask[theirs == 255].any()
    assert torch.equal(image, network_input(Image.open(voc / "JPEGImages" / "a.jpg")))


# ------------------------------------------------------------------ folders
def test_folder_holds_classes_out_and_reads_masks(tmp_path):
    root = make_shapes(tmp_path / "shapes", per_class=3)
    data, train, val = open_folder(root, ["green_square"])
    names = sorted(SHAPES)
    assert data.class_names == tuple(names)
    assert val.class_ids == (names.index("green_square"),) and len(val.entries) == 3
    assert set(train.class_ids) == set(range(4)) - set(val.class_ids) and train.size == 9
    mask = data.read_mask("green_square/2.jpg")
    expected = np.asarray(Image.open(root / "green_square" / "2.png").convert("L")) >= 128
    assert np.array_equal(mask, expected * (names.index("green_square") + 1)) and mask.any()
    # A held-out share is picked with seed 0: the same classes every time.
    assert open_folder(root, val_share=0.5)[2].class_ids == open_folder(root, val_share=0.5)[2].class_ids
    assert len(open_folder(root, val_share=0.5)[2].class_ids) == 2
    # 0/1 masks (as indices) are read as 0/1, not thresholded at 128.
    Image.fromarray((expected * 1).astype(np.uint8)).save(root / "green_square" / "2.png")
    assert np.array_equal(data.read_mask("green_square/2.jpg"), mask)


@pytest.mark.parametrize("change, message", [
    (lambda root: os.remove(root / "red_disc" / "2.png"), r"2\.jpg: no mask 2\.png"),
    (lambda root: [os.remove(root / "red_disc" / f"{n}.{e}") for n in (2, 3) for e in ("jpg", "png")],
     "red_disc: 1 image"),
])
def test_folder_problems_name_the_file(tmp_path, change, message):
    root = make_shapes(tmp_path / "shapes", per_class=3, classes=["red_disc", "green_square"])
    change(root)
    with pytest.raises(InputError, match=message) as exc:
        open_folder(root, ["green_square"])
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("val_classes, message", [
    (["purple"], "`val_classes` purple: no such class folder"),
    (["red_disc", "green_square"], "every class is held out"),
])
def test_folder_validation_classes_are_checked(tmp_path, val_classes, message):
    root = make_shapes(tmp_path / "shapes", per_class=2, classes=["red_disc", "green_square"])
    with pytest.raises(InputError, match=message):
        open_folder(root, val_classes)


def test_folder_vocabulary_gives_competitors():
    vocab = folder_vocabulary(["hotel_slipper", "dog"])
    assert vocab[:2] == ["hotel slipper", "dog"] and "cat" in vocab and vocab.count("dog") == 1
    assert "aeroplane" in folder_vocabulary(["cup"]) and len(folder_vocabulary(["cup"])) > 50


# ------------------------------------------------------------------ FSS-1000
def _fss(root: Path, test: list[str], per_class: int = 10) -> Path:
    """FSS-1000/<class>/{1..per_class}.jpg|png and HSNet-style class lists."""
    splits = root / "splits" / "fss"
    splits.mkdir(parents=True)
    (splits / "trn.txt").write_text("zebra_fish\nant\n")
    (splits / "val.txt").write_text("bee\n")
    (splits / "test.txt").write_text("\n".join(test) + "\n")
    rng = np.random.default_rng(0)
    for name in test:
        for n in range(1, per_class + 1):
            folder = root / "data" / "FSS-1000" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(folder / f"{n}.jpg")
            Image.fromarray((rng.random((12, 16)) > 0.5).astype(np.uint8) * 255).save(folder / f"{n}.png")
    return root


def _hsnet_fss_test(base: Path, categories: list[str], count: int) -> list[tuple]:
    """HSNet's DatasetFSS('test') under test.py's fix_randseed(0), written out."""
    categories = sorted(categories)
    metadata = []
    for cat in categories:
        for path in sorted(str(p) for p in (base / cat).glob("*")):
            if os.path.basename(path).split(".")[1] == "jpg":
                metadata.append(path)
    np.random.seed(0)
    out = []
    for idx in range(count):
        query = metadata[idx]
        class_sample = categories.index(query.split("/")[-2]) + 760
        while True:
            support = os.path.join(os.path.dirname(query), str(np.random.choice(range(1, 11), 1, replace=False)[0]))
            support += ".jpg"
            if query != support:
                break
        out.append((class_sample, os.path.relpath(query, base), os.path.relpath(support, base)))
    return out


def test_fss_episodes_are_hsnets(tmp_path):
    test = ["fire_hydrant", "cup", "bus"]
    root = _fss(tmp_path, test)
    data, split = open_fss(root / "data", root / "splits")
    assert isinstance(data, FolderData) and not split.official
    # Class indices as HSNet's: sorted trn list, then val, then test from 760 (here 3).
    assert data.class_names == ("ant", "zebra_fish", "bee", "bus", "cup", "fire_hydrant")
    assert split.class_ids == (3, 4, 5) and len(split.entries) == 30
    theirs = _hsnet_fss_test(root / "data" / "FSS-1000", test, 30)
    ours = [(e.class_id, e.query, e.supports[0]) for e in sample_episodes(split, 1, 30)]
    assert [(c - 760 + 3, q, s) for c, q, s in theirs] == ours
    assert ours[1][1] == "bus/10.jpg"  # file names in sorted-string order, as glob + sorted


def test_fss_needs_its_folder(tmp_path):
    root = _fss(tmp_path, ["cup"])
    with pytest.raises(InputError, match="FSS-1000: no such folder"):
        open_fss(tmp_path, root / "splits")
    (root / "splits" / "fss" / "test.txt").write_text("cup\nmissing_class\n")
    with pytest.raises(InputError, match="1 of the test classes are missing"):
        open_fss(root / "data", root / "splits")


@pytest.mark.slow
def test_eval_fss_runs_hsnets_test(tmp_path, monkeypatch, capsys, recipe_weight_files):
    """`imrseg eval --benchmark fss`: one episode per test image by default, the
    FSS-1000 classes reported by name, no fold."""
    from imrseg.cli import main

    root = _fss(tmp_path, ["cup", "bus"], per_class=3)
    report = tmp_path / "fss.json"
    monkeypatch.setenv("IMRSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["imrseg", "eval", "--benchmark", "fss", "--data-root", str(root / "data"),
                                      "--splits", str(root / "splits"), "--weights", recipe_weight_files["weights"],
                                      "--clip-weights", recipe_weight_files["clip"], "--steps", "1", "--device",
                                      "cpu", "--report", str(report)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    result = json.loads(report.read_text())
    assert (result["benchmark"], result["fold"], result["episodes"]) == ("fss", None, 6)
    assert set(result["per_class"]) == {"bus", "cup"} and result["unevaluated_classes"] == []
    assert "FSS-1000" in out and 0 <= result["miou"] <= 100

    monkeypatch.setattr(sys, "argv", ["imrseg", "eval", "--benchmark", "fss", "--fold", "0", "--data-root",
                                      str(root / "data")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and "FSS-1000 has one test split" in capsys.readouterr().err
