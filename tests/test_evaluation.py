"""Metrics against the authors' evaluation (golden fixture), the CAM disk cache,
the resumable state, the batched runner against the engine's own K-shot vote, and
the checks of a benchmark evaluation's settings."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from authors_reference import predict_mask_nshot
from imrseg.errors import InputError
from imrseg.data import splits
from imrseg.clip.cache import CamSource
from imrseg.data.datasets import BenchmarkData, ground_truth
from imrseg.data.episodes import Episode, sample_episodes
from imrseg.evaluation import BenchmarkSettings, run_benchmark
from imrseg.evaluation.loop import EvalSettings, evaluate
from imrseg.evaluation.metrics import IoUMeter, intersection_union
from imrseg.evaluation.state import FinishedEpisode, RunState
from imrseg.transforms import network_input


# ------------------------------------------------------------------ metrics
def test_metrics_match_the_authors_golden_values(golden_dir):
    g = np.load(golden_dir / "metrics_pascal.npz")
    meter = IoUMeter("pascal", [0, 1, 2, 3, 4])
    for pred, gt, ignore, class_id in zip(g["pred"], g["gt"], g["ignore"], g["class_id"]):
        meter.update(int(class_id), *intersection_union(pred, gt, ignore.astype(bool)))
    assert abs(meter.miou - float(g["miou"])) <= 1e-6
    assert abs(meter.fb_iou - float(g["fb_iou"])) <= 1e-6


def test_intersection_union_leaves_ignored_pixels_out():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 1]])
    gt = np.array([[1, 0, 0, 1], [1, 1, 0, 0]])
    ignore = np.array([[0, 0, 0, 1], [0, 0, 0, 1]], dtype=bool)
    inter, union = intersection_union(pred, gt, ignore)
    # Valid pixels: pred 1 1 0 | 1 0 0 ; gt 1 0 0 | 1 1 0.
    assert inter.tolist() == [2, 2]  # background both, foreground both
    assert union.tolist() == [4, 4]


def test_meter_reads_out_as_the_authors():
    meter = IoUMeter("coco", [1, 5, 9])
    meter.update(1, [6, 2], [8, 4])
    meter.update(1, [2, 0], [2, 2])
    meter.update(5, [10, 3], [10, 3])
    # class 9 never seen: its IoU is 0 (union clamped to 1) and it still counts in mIoU.
    assert meter.per_class() == {"bicycle": pytest.approx(100 * 2 / 6), "bus": 100.0, "traffic light": 0.0}
    assert meter.miou == pytest.approx((2 / 6 + 1 + 0) / 3 * 100)
    assert meter.fb_iou == pytest.approx((18 / 20 + 5 / 9) / 2 * 100)
    assert meter.unevaluated() == ["traffic light"]


def test_classes_no_episode_drew_are_named_in_the_table_and_the_report():
    """The authors' figure counts them as 0 IoU; the output says which they are."""
    from rich.console import Console

    from imrseg.cli.eval import _print_fold
    from imrseg.evaluation.loop import EvalResult

    meter = IoUMeter("pascal", [0, 1, 2, 3, 4])
    meter.update(0, [90, 10], [100, 10])
    result = EvalResult(EvalSettings("pascal", 0, episodes=1), meter.miou, meter.fb_iou, meter.per_class(), 1, 0,
                        1.0, unevaluated=meter.unevaluated())
    assert result.to_dict()["unevaluated_classes"] == ["bicycle", "bird", "boat", "bottle"]
    console = Console(record=True, width=200)
    _print_fold(console, result, None)
    text = console.export_text()
    assert "aeroplane" in text and "100.0" in text and text.count("not evaluated") == 5
    assert "not evaluated: bicycle, bird, boat, bottle (no episode drew them)" in text
    assert "count as 0 IoU in the mIoU" in text


# ---------------------------------------------------------------------- CAMs
class FakeCAM:
    """Stands in for ClipCAM: a map that depends on the image and the class."""

    template, mode = "a photo of a {c}", "official"

    def __init__(self):
        self.images = 0

    def __call__(self, images, classnames, targets, size=50):
        self.images += len(images)
        return torch.stack([torch.full((size, size), float(np.asarray(im).mean()) / 255 + t / 100)
                            for im, t in zip(images, targets)])


def _write_image(path: Path, seed: int, size=(24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_cams_are_cached_on_disk_per_image_content_and_class(tmp_path):
    a, b = _write_image(tmp_path / "a.png", 0), _write_image(tmp_path / "b.png", 1)
    fake = FakeCAM()
    source = CamSource(fake, ["cat", "dog"], "clip-1", tmp_path / "cache")
    first = source.get([a, b, a], [0, 0, 0], Image.open)
    assert fake.images == 2 and source.computed == 2  # a twice in one call: computed once
    assert torch.equal(first[0], first[2])

    again = CamSource(fake, ["cat", "dog"], "clip-1", tmp_path / "cache")
    moved = _write_image(tmp_path / "elsewhere" / "a_copy.png", 0)  # same content, another path
    assert torch.equal(again.get([moved, b], [0, 0], Image.open), first[:2])
    assert fake.images == 2 and again.computed == 0

    again.get([a], [1], Image.open)  # another class is another map
    assert fake.images == 3
    for other in (CamSource(fake, ["cat", "cow"], "clip-1", tmp_path / "cache"),
                  CamSource(fake, ["cat", "dog"], "clip-2", tmp_path / "cache")):
        other.get([a], [0], Image.open)  # another vocabulary or CLIP: not reused
    assert fake.images == 5


def test_damaged_cache_file_is_recomputed(tmp_path):
    a = _write_image(tmp_path / "a.png", 0)
    fake = FakeCAM()
    expected = CamSource(fake, ["cat"], "c", tmp_path / "cache").get([a], [0], Image.open)
    for file in (tmp_path / "cache").rglob("*.npy"):
        file.write_bytes(b"not numpy")
    again = CamSource(fake, ["cat"], "c", tmp_path / "cache")
    assert torch.equal(again.get([a], [0], Image.open), expected) and again.computed == 1


def test_no_cache_writes_nothing(tmp_path):
    a = _write_image(tmp_path / "a.png", 0)
    CamSource(FakeCAM(), ["cat"], "c", None).get([a], [0], Image.open)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


# ---------------------------------------------------------------------- state
def test_state_refuses_another_setting_and_changed_episodes(tmp_path):
    state = RunState(tmp_path, {"fold": 0})
    episode = Episode(0, 2, "q", ("s",))
    state.append(episode, np.array([5, 1]), np.array([7, 2]))
    state.close()
    with open(state.path, "r+") as fh:  # the other setting's state found under this one's key
        header = fh.readline()
        rows = fh.read()
        fh.seek(0)
        fh.write(header.replace('"fold": 0', '"fold": 1') + rows)
    with pytest.raises(InputError, match="another evaluation setting"):
        RunState(tmp_path, {"fold": 0})
    state.path.write_text(header + rows)
    state = RunState(tmp_path, {"fold": 0})
    assert state.rows == [FinishedEpisode(0, 2, "q", ("s",), (5, 1), (7, 2))]
    state.check(state.rows[0], episode)
    with pytest.raises(InputError, match="split or seed changed"):
        state.check(state.rows[0], Episode(0, 2, "q", ("t",)))
    state.close()


# ------------------------------------------------------------------- runner
@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    """Four images of class 1 (aeroplane) with a square object and a boundary ring."""
    root = tmp_path_factory.mktemp("voc")
    lines = []
    for i in range(4):
        name = f"img{i}"
        rng = np.random.default_rng(i)
        image = rng.integers(0, 120, (48, 64, 3), dtype=np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        top, left = 8 + 2 * i, 10 + 3 * i
        mask[top - 1:top + 21, left - 1:left + 21] = 255
        mask[top:top + 20, left:left + 20] = 1
        image[mask == 1] = (200, 60, 40)
        (root / "VOC2012" / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "VOC2012" / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "VOC2012" / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(mask).save(root / "VOC2012" / "SegmentationClassAug" / f"{name}.png")
        lines.append(f"{name}__01")
    split = splits.parse_split("pascal", 0, root / "fold0.txt", ("\n".join(lines) + "\n").encode())
    return BenchmarkData.open("pascal", root), split


@pytest.mark.slow
def test_batched_runner_matches_the_engines_k_shot_vote(recipe_net, tiny_voc):
    """Two episodes in one batch, two shots each: every query is paired with its
    own supports and the K masks are voted, as the authors' `predict_mask_nshot`
    does with the (B, K) layout of their data loader."""
    data, split = tiny_voc
    cam_source = CamSource(FakeCAM(), ["aeroplane"], "fake", None)
    settings = EvalSettings("pascal", 0, shots=2, episodes=2, steps=1, batch_size=2)
    totals = []
    evaluate(settings, split, data, recipe_net, cam_source,
             on_episode=lambda done, total, meter: totals.append(meter.intersection[:, 0].copy()))

    episodes = list(sample_episodes(split, 2, 2))
    queries = torch.stack([network_input(data.read_image(e.query)) for e in episodes])
    supports = torch.stack([torch.stack([network_input(data.read_image(n)) for n in e.supports])
                            for e in episodes])
    cams = [cam_source.get([data.image_path(n) for n in (e.query, *e.supports)], [0] * 3, None) for e in episodes]
    with torch.inference_mode():
        preds = predict_mask_nshot(recipe_net, queries, supports, torch.stack([c[0] for c in cams]),
                                   torch.stack([c[1:] for c in cams]), steps=1).numpy()
    expected = np.zeros(2, np.int64)
    for episode, pred in zip(episodes, preds):
        fg, ignore = ground_truth(data.read_mask(episode.query), "pascal", 0, (400, 400))
        expected = expected + intersection_union(pred, fg, ignore)[0]
    assert totals[-1].tolist() == expected.tolist()
    assert len(totals) == 2


def test_cam_method_thresholds_the_query_cam(tiny_voc):
    data, split = tiny_voc

    class HalfCAM(FakeCAM):
        def __call__(self, images, classnames, targets, size=50):
            cams = torch.zeros(len(images), size, size)
            cams[:, :, : size // 2] = 1.0  # left half
            return cams

    settings = EvalSettings("pascal", 0, episodes=4, method="cam")
    result = evaluate(settings, split, data, None, CamSource(HalfCAM(), ["aeroplane"], "x", None))
    meter = IoUMeter("pascal", range(5))
    x = np.arange(400)
    left = np.broadcast_to(x[None, :] < 200, (400, 400))  # bilinear, align_corners: 0.5 at the middle
    for episode in sample_episodes(split, 1, 4):
        fg, ignore = ground_truth(data.read_mask(episode.query), "pascal", 0, (400, 400))
        meter.update(0, *intersection_union(left, fg, ignore))
    assert result.miou == pytest.approx(meter.miou) and result.fb_iou == pytest.approx(meter.fb_iou)
    assert result.per_class["aeroplane"] == pytest.approx(result.miou * 5)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """Two 20x14 images for each class of COCO fold 2, masks with some 255 pixels
    (not an ignore label on COCO)."""
    root = tmp_path_factory.mktemp("coco")
    classwise = {c: [] for c in range(80)}
    for class_id in range(2, 80, 4):
        for i in range(2):
            name = f"val2014/COCO_val2014_{class_id:04d}{i:04d}.jpg"
            mask = np.zeros((14, 20), np.uint8)
            mask[2:9, 3 + i:12 + i] = class_id + 1
            mask[10:, :5] = 255
            mask[0, :] = (class_id + 5) % 80  # another class
            image = np.full((14, 20, 3), 40 + class_id, np.uint8)
            for path, array in ((root / "COCO2014" / name, image),
                                (root / "COCO2014" / "annotations" / name.replace(".jpg", ".png"), mask)):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            classwise[class_id].append(name)
    split = splits.parse_split("coco", 2, root / "fold2.pkl", pickle.dumps(classwise))
    return BenchmarkData.open("coco", root), split


@pytest.mark.parametrize("original_size", [False, True])
def test_coco_scoring_at_either_resolution(tiny_coco, original_size):
    data, split = tiny_coco

    class TopCAM(FakeCAM):
        def __call__(self, images, classnames, targets, size=50):
            cams = torch.zeros(len(images), size, size)
            cams[:, : size // 2] = 1.0  # top half
            return cams

    settings = EvalSettings("coco", 2, episodes=6, method="cam", original_size=original_size, batch_size=4)
    result = evaluate(settings, split, data, None, CamSource(TopCAM(), ["x"] * 80, "x", None))
    meter = IoUMeter("coco", split.class_ids)
    for episode in sample_episodes(split, 1, 6):
        mask = data.read_mask(episode.query)
        fg, ignore = ground_truth(mask, "coco", episode.class_id, None if original_size else (400, 400))
        assert not ignore.any()
        h = fg.shape[0]
        top = np.broadcast_to((np.arange(h) * 49 / (h - 1) <= 24.5)[:, None], fg.shape)
        meter.update(episode.class_id, *intersection_union(top, fg, ignore))
    assert result.miou == pytest.approx(meter.miou) and result.fb_iou == pytest.approx(meter.fb_iou)
    assert result.episodes == 6 and len(result.per_class) == 20


def test_settings_are_checked():
    with pytest.raises(InputError, match="`method` must be one of imr, cam, not 'magic'"):
        EvalSettings("pascal", 0, method="magic")
    with pytest.raises(InputError, match="`episodes` must be 1 or more, not 0"):
        EvalSettings("pascal", 0, episodes=0)
    with pytest.raises(InputError, match="`seed` must be 0 or more, not -1"):
        EvalSettings("pascal", 0, seed=-1)


@pytest.mark.parametrize("changes, message", [
    ({"benchmark": "voc"}, "`benchmark` must be one of pascal, coco, fss, not 'voc'"),
    ({"fold": None}, "`fold` is needed for pascal: one of 0, 1, 2, 3, all"),
    ({"fold": 7}, "`fold` must be one of 0, 1, 2, 3, all, not 7"),
    ({"fold": "7"}, "`fold` must be one of 0, 1, 2, 3, all, not '7'"),
    ({"benchmark": "fss"}, "`fold` is for pascal and coco; FSS-1000 has one test split"),
    ({"method": "magic"}, "`method` must be one of imr, cam, not 'magic'"),
    ({"shots": 0}, "`shots` must be 1 or more, not 0"),
    ({"episodes": 0}, "`episodes` must be 1 or more, not 0"),
    ({"steps": 0}, "`steps` must be 1 or more, not 0"),
    ({"batch_size": -1}, "`batch_size` must be 1 or more, not -1"),
    ({"seed": -1}, "`seed` must be 0 or more, not -1"),
    ({"backbone": "vit"}, "`backbone` must be one of resnet50, vgg16, not 'vit'"),
    ({"zero_shot": True, "method": "cam"}, "`zero_shot` and `method` cam exclude each other"),
    ({"report": "."}, "`report` is a folder; give a file name"),
    ({"report": "taken/report.json"}, "taken/report.json: `report` cannot be written there"),
])
def test_benchmark_settings_name_the_parameter_at_fault(changes, message, tmp_path, monkeypatch):
    """Checked before the data is read (there is none here) or a model loads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file, not a folder\n")
    settings = BenchmarkSettings(**{"benchmark": "pascal", "data_root": tmp_path / "no-data", "fold": 0, **changes})
    with pytest.raises(InputError) as raised:
        run_benchmark(settings)
    assert message in str(raised.value)


def test_benchmark_settings_list_their_folds(tmp_path):
    assert BenchmarkSettings("pascal", tmp_path, fold="all").folds == [0, 1, 2, 3]
    assert BenchmarkSettings("coco", tmp_path, fold="2").folds == [2]
    assert BenchmarkSettings("coco", tmp_path, fold=1).folds == [1]
    assert BenchmarkSettings("fss", tmp_path).folds == [None]
