"""A CVAT auto-annotation function, so a CVAT task is pre-labelled from a few example
images and its label names:

    cvat-cli task auto-annotate TASK --function-module imrseg.cvat -p label=str:dog -p support=str:dogs/

cvat-cli imports this module and calls `create` once with the `-p` parameters; the
function it returns holds one warm `Predictor` with its supports set, and the driver
calls `detect` for each frame. Each class present becomes one shape per connected
component (as the COCO export splits it, `imrseg.outputs.coco`): a CVAT mask, or the
component's traced polygons. A bad parameter ends cvat-cli with one line naming it."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cvat_sdk.auto_annotation as cvataa
from cvat_sdk.masks import encode_mask
from PIL import Image

from .errors import ImrsegError, InputError, in_terms_of, param
from .images import find_images
from .outputs.coco import components, polygons
from .predictor import Predictor
from .runner.folder import load_supports
from .runner.settings import ClassSpec

KINDS = ("mask", "polygon")
# The parameters `create` takes, as cvat-cli spells them: `-p NAME=TYPE:VALUE`.
PARAMETER_TYPES = {"label": str, "support": str, "weights": str, "clip": str, "device": str, "precision": str,
                   "kind": str, "steps": int}
FLAGS = {name: f"-p {name}" for name in PARAMETER_TYPES}


class ImrsegFunction:
    """A CVAT detection function around a ready `Predictor` (its classes set): `spec`
    declares the predictor's labels, numbered as in its indexed mask, with shapes of
    `kind` ("mask" or "polygon"); `steps` None: the predictor's."""

    def __init__(self, predictor: Predictor, kind: str = "mask", steps: int | None = None):
        check_kind(kind)
        if not predictor.labels:
            raise InputError("no classes: call set_supports (or set_zero_shot) on the predictor first")
        self.predictor, self.kind, self.steps = predictor, kind, steps
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(label, index, type=kind) for index, label in enumerate(predictor.labels, 1)])

    def detect(self, context: cvataa.DetectionFunctionContext, image: Image.Image) -> list:
        """The frame's shapes: for each class whose score (`imrseg.scores`) reaches the
        context's confidence threshold, one shape per connected component of its pixels
        in the indexed mask, with that score; polygons when the function's kind is
        "polygon" or the driver asks to convert masks."""
        # The indexed mask needs the probabilities (kept anyway with several classes).
        result = self.predictor.predict_classes([image], self.steps, keep=("prob",))[0]
        index = result.index_mask
        as_polygons = self.kind == "polygon" or context.conv_mask_to_poly
        threshold = context.conf_threshold
        shapes = []
        for class_index, label in enumerate(result.labels, 1):
            score = result[label].score
            if threshold is not None and score < threshold:
                continue
            for component in components(index, class_index):
                if as_polygons:
                    shapes += [cvataa.polygon(class_index, points, score=score) for points in polygons(component)]
                else:
                    height, width = component.crop.shape
                    box = [component.left, component.top, component.left + width, component.top + height]
                    shapes.append(cvataa.mask(class_index, encode_mask(component.full().astype(bool), box),
                                              score=score))
        return shapes


def create(**parameters) -> ImrsegFunction:
    """cvat-cli's factory: the function for its `-p` parameters (see `build`). A bad one
    ends the command with one line naming it as `-p NAME`: cvat-cli shows a traceback for
    any error its function loader raises but its own (server, login), so this exits."""
    try:
        return build(**parameters)
    except ImrsegError as exc:
        raise SystemExit(f"imrseg: error: {in_terms_of(str(exc), FLAGS)}") from None


def build(label: str = "", support: str = "", weights: str | None = None, clip: str | None = None,
          device: str = "auto", precision: str = "fp32", kind: str = "mask", steps: int | None = None,
          **unknown) -> ImrsegFunction:
    """The function for these parameters. `label`: one label, or several separated by
    commas. `support`: with one label, an image or a folder of images of it; with
    several, `LABEL=PATH` for each label, separated by `os.pathsep`; empty: zero-shot
    (each frame is its own support). `weights`, `clip`: weight specs (`imrseg.hub`);
    `kind`: "mask" or "polygon"; `steps`: refinement steps (None: the checkpoint's).
    Everything that can be checked without the model is, before it loads."""
    if unknown:
        raise InputError(f"unknown parameter(s) {', '.join(sorted(unknown))}: expected some of "
                         f"{', '.join(PARAMETER_TYPES)}")
    given = {"label": label, "support": support, "weights": weights, "clip": clip, "device": device,
             "precision": precision, "kind": kind, "steps": steps}
    for name, value in given.items():
        if value is not None and (not isinstance(value, PARAMETER_TYPES[name]) or isinstance(value, bool)):
            raise InputError(f"{param(name)} {value!r}: give it as {name}={PARAMETER_TYPES[name].__name__}:VALUE")
    check_kind(kind)
    if steps is not None and steps < 1:
        raise InputError(f"{param('steps')} must be 1 or more, not {steps}")
    labels = parse_labels(label)
    supports = {name: load_supports(ClassSpec(name, tuple(files)), files, None)
                for name, files in support_files(labels, support).items()}
    predictor = Predictor.from_pretrained(weights, clip, device=device, precision=precision, steps=steps)
    if supports:
        predictor.set_supports(supports)
    else:
        predictor.set_zero_shot(labels)
    return ImrsegFunction(predictor, kind, steps)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InputError(f"{param('kind')} {kind!r}: expected {' or '.join(KINDS)}")


def parse_labels(text: str) -> list[str]:
    """`label`'s comma-separated labels, each stripped."""
    labels = [name.strip() for name in text.split(",")]
    if not text.strip() or not all(labels):
        raise InputError(f"{param('label')} {text!r}: give a label, or several separated by commas")
    return labels


def support_files(labels: Sequence[str], text: str) -> dict[str, list[Path]]:
    """Each label's support images found from `support` (see `build`); {} for zero-shot."""
    if not text:
        return {}
    if len(labels) == 1:
        return {labels[0]: [image for image, _ in find_images([text])]}
    paths: dict[str, str] = {}
    for item in text.split(os.pathsep):
        name, sep, path = item.partition("=")
        name = name.strip()
        if not (sep and path) or name not in labels or name in paths:
            raise InputError(f"{param('support')} {item!r}: with several labels, give LABEL=PATH once for each "
                             f"of {', '.join(labels)}, separated by {os.pathsep!r}")
        paths[name] = path
    missing = [name for name in labels if name not in paths]
    if missing:
        raise InputError(f"{param('support')}: no supports for {', '.join(missing)}: give LABEL=PATH for each "
                         "label, or no supports at all (zero-shot)")
    return {name: [image for image, _ in find_images([paths[name]])] for name in labels}
