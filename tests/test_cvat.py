"""The CVAT auto-annotation function (`imrseg.cvat`), run as cvat-sdk's driver runs it:
its spec and every frame's shapes go through the driver's own label mapping and
checks (`annotate_task` itself needs a CVAT server, which there is none of here),
masks decode with the sdk's own decoder to exactly the predictor's mask, polygons
rasterise back to it (holes filled), and bad parameters end in one line."""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest
from cvat_sdk import models
from cvat_sdk.auto_annotation import BadFunctionError
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import write_image
from imrseg import cvat
from imrseg.clip.cam import ClipCAM
from imrseg.predictor import Predictor

LABELS = ["dog", "cat"]
# The task's own label ids differ from the function's: the driver maps them by name.
TASK_IDS = {"dog": 40, "cat": 41}


def _image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _mapper(function, conv_mask_to_poly: bool = False, task_type: str = "any") -> _AnnotationMapper:
    """The driver's check of the function's labels against a task's, as annotate_task makes it."""
    task_labels = [models.Label(name=name, id=TASK_IDS[name], type=task_type, sublabels=[], attributes=[])
                   for name in LABELS]
    return _AnnotationMapper(logging.getLogger("cvat-test"), function.spec.labels, task_labels,
                             allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)


def _run(function, image: Image.Image, conv_mask_to_poly: bool = False, conf_threshold=None) -> list:
    """A frame as annotate_task handles it: detect, then the driver's validation and remapping."""
    context = _DetectionFunctionContextImpl(frame_name="frame.png", conf_threshold=conf_threshold,
                                            conv_mask_to_poly=conv_mask_to_poly)
    _, shapes = _mapper(function, conv_mask_to_poly).validate_and_remap(function.detect(context, image), 3)
    assert all(s.frame == 3 and s.source == "auto" for s in shapes)
    return shapes


def _decoded(shapes, label: str, size) -> list[np.ndarray]:
    width, height = size
    return [decode_mask(s.points, image_width=width, image_height=height)
            for s in shapes if s.label_id == TASK_IDS[label]]


def _filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: everything but the background reachable from the border."""
    _, regions = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    edge = np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])
    return ~np.isin(regions, edge[edge > 0])


def _drawn(shapes, size) -> np.ndarray:
    """The union of polygon shapes as pycocotools rasterises them (COCO's pixel-edge convention)."""
    width, height = size
    if not shapes:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects([s.points for s in shapes], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _recording(predictor) -> list:
    """What the predictor gives `detect` from now on: imrseg's own results for each frame."""
    given = []
    predict = predictor.predict_classes

    def predict_classes(images, *args, **kwargs):
        results = predict(images, *args, **kwargs)
        given.extend(results)
        return results

    predictor.predict_classes = predict_classes
    return given


@pytest.fixture(scope="module")
def function(recipe_weight_files, tmp_path_factory):
    """What cvat-cli builds for `-p label=str:dog,cat -p support=str:dog=DIR:cat=FILE ...`:
    two dogs in a folder, one cat."""
    folder = tmp_path_factory.mktemp("supports")
    dogs = write_image(folder / "dogs" / "a.png", seed=1).parent
    write_image(dogs / "b.jpg", seed=2)
    support = os.pathsep.join([f"dog={dogs}", f"cat={write_image(folder / 'cat.png', seed=3)}"])
    return cvat.create(label=",".join(LABELS), support=support, device="cpu", steps=1, **recipe_weight_files)


@pytest.fixture(scope="module")
def frame():
    return _image(5)


@pytest.fixture(scope="module")
def detected(function, frame):
    """(the frame's shapes after the driver's checks, the Predictor's result for the frame)."""
    given = _recording(function.predictor)
    shapes = _run(function, frame)
    assert len(given) == 1
    return shapes, given[0]


@pytest.fixture(scope="module")
def truth(detected):
    return detected[1]


class Replay:
    """A predictor that answers every frame with one result the real one gave, so the
    shapes' variants are checked without running the network again."""

    def __init__(self, result):
        self.result, self.labels = result, result.labels

    def predict_classes(self, images, steps=None, keep=()):
        return [self.result for _ in images]


def test_masks_decode_to_the_predictors_mask_in_the_tasks_labels(function, frame, detected):
    assert [(label.id, label.name, label.type) for label in function.spec.labels] == [(1, "dog", "mask"),
                                                                                         (2, "cat", "mask")]
    # Each label's own supports: a folder of two dogs, one cat.
    assert [len(function.predictor.shots(label)) for label in LABELS] == [2, 1]
    shapes, truth = detected
    assert {s.type.value for s in shapes} == {"mask"} and len(shapes) >= 2
    for index, label in enumerate(LABELS, 1):
        pieces = _decoded(shapes, label, frame.size)
        union = np.sum(pieces, axis=0)
        # One shape per connected component: disjoint, together the class's pixels of the indexed mask.
        assert union.max() == 1 and np.array_equal(union.astype(bool), truth.index_mask == index)
        assert all(s.score == pytest.approx(truth[label].score) for s in shapes if s.label_id == TASK_IDS[label])


def test_polygons_rasterise_back_to_the_mask_with_holes_filled(frame, truth):
    polygon_function = cvat.ImrsegFunction(Replay(truth), kind="polygon")
    assert {label.type for label in polygon_function.spec.labels} == {"polygon"}
    as_polygons = _run(polygon_function, frame)
    # The mask kind gives the same polygons when the driver asks it to convert masks.
    converted = _run(cvat.ImrsegFunction(Replay(truth)), frame, conv_mask_to_poly=True)
    assert [s.to_dict() for s in converted] == [s.to_dict() for s in as_polygons]
    assert as_polygons and {s.type.value for s in as_polygons} == {"polygon"}
    for index, label in enumerate(LABELS, 1):
        drawn = _drawn([s for s in as_polygons if s.label_id == TASK_IDS[label]], frame.size)
        assert np.array_equal(drawn, _filled(truth.index_mask == index))


def test_a_polygon_task_takes_the_mask_function_only_when_the_driver_converts(function):
    with pytest.raises(BadFunctionError, match="type 'mask' in the function, but 'polygon' in the dataset"):
        _mapper(function, task_type="polygon")
    _mapper(function, conv_mask_to_poly=True, task_type="polygon")


def test_the_confidence_threshold_keeps_only_classes_that_reach_it(frame, truth):
    function = cvat.ImrsegFunction(Replay(truth))
    low, high = sorted(truth[label].score for label in LABELS)
    assert low < high < 1
    best = [name for name in LABELS if truth[name].score == high]
    for cut, kept in [(None, LABELS), (low, LABELS), ((low + high) / 2, best), (float(np.nextafter(high, 1.0)), [])]:
        shapes = _run(function, frame, conf_threshold=cut)
        assert {s.label_id for s in shapes} == {TASK_IDS[label] for label in kept}


def test_zero_shot_without_supports(recipe_net, recipe_clip, monkeypatch):
    """No `support`: each frame is its own support. (The weights are the recipe's already in
    memory: loading them from files is what the few-shot function above does.)"""
    loaded = {}

    def from_pretrained(weights=None, clip=None, **options):
        loaded.update(options, weights=weights)
        return Predictor(recipe_net, ClipCAM(recipe_clip), steps=options["steps"])

    monkeypatch.setattr(Predictor, "from_pretrained", from_pretrained)
    function = cvat.create(label=" dog ", weights="w.pt", device="cpu", precision="fp32", steps=1)
    assert loaded == {"weights": "w.pt", "device": "cpu", "precision": "fp32", "steps": 1}
    assert function.predictor.labels == ["dog"] and function.predictor.shots("dog") is None
    given = _recording(function.predictor)
    frame = _image(8)
    shapes = _run(function, frame)
    truth = given[0]["dog"].mask
    assert truth.any() and np.array_equal(np.sum(_decoded(shapes, "dog", frame.size), axis=0), truth)


@pytest.mark.parametrize("parameters, message", [
    ({"label": ""}, "-p label ''"),
    ({"label": "dog,"}, "-p label 'dog,'"),
    ({"label": "dog", "kind": "box"}, "-p kind 'box': expected mask or polygon"),
    ({"label": "dog", "steps": 0}, "-p steps must be 1 or more"),
    ({"label": "dog", "steps": "2"}, "-p steps '2': give it as steps=int:VALUE"),
    ({"label": "dog", "support": "/nonexistent/dogs"}, "/nonexistent/dogs: no such"),
    ({"label": "dog,cat", "support": "dog=a.png"}, "-p support: no supports for cat"),
    ({"label": "dog,cat", "support": "bird=a.png"}, "-p support 'bird=a.png'"),
    ({"label": "dog", "shots": 3}, "unknown parameter(s) shots"),
    ({"label": "dog", "support": True}, "-p support True: give it as support=str:VALUE"),
    ({"label": "dog", "device": "gpu"}, "-p device gpu: unknown device"),
])
def test_bad_parameters_end_in_one_line_naming_them(parameters, message, monkeypatch):
    monkeypatch.setattr(Predictor, "from_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    if "device" in parameters:  # checked where the model is built
        monkeypatch.undo()
    with pytest.raises(SystemExit) as caught:
        cvat.create(**parameters)
    text = str(caught.value.code)
    assert text.startswith("imrseg: error: ") and message in text and "\n" not in text
