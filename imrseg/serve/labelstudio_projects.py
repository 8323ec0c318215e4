"""What the server remembers of each Label Studio project: its labelling config, the
connection's extra parameters, and the drawn masks of its annotated tasks, which become
supports (the regular few-shot mode: a person's mask replaces the support's CAM).

The extra parameters (a JSON object in the connection's "Extra params"):
  {"supports": {"Cat": ["https://.../cat.jpg", "/data/upload/1/cat2.png", "cats/3.jpg"]},
   "prompts": {"Cat": "tabby cat"},
   "annotations": true,
   "steps": 2}
`supports` lists support images per label (URLs, Label Studio paths, or paths inside the
server's --root); `prompts` maps label names to the words CLIP reads; `annotations`
false ignores the project's own annotations; `steps` sets refinement steps.

Everything is bounded: at most PROJECTS projects (the least recently used forgotten),
SUPPORTS_PER_LABEL annotated supports per label (the latest kept), masks stored as bits."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..errors import InputError, param
from .labelstudio_config import Control
from .labelstudio_results import brush_mask

PROJECTS = 32
SUPPORTS_PER_LABEL = 5
SUPPORT_IMAGES_PER_LABEL = 8
EXTRA_KEYS = ("supports", "prompts", "annotations", "steps")


@dataclass(frozen=True)
class ExtraParams:
    supports: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=dict)
    annotations: bool = True
    steps: int | None = None


def parse_extra_params(value: object, field_name: str = "extra_params") -> ExtraParams:
    """The connection's extra parameters (a JSON object, or text holding one; None: none)."""
    where = param(field_name)
    if value is None or value == "":
        return ExtraParams()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InputError(f"{where}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object like {{\"supports\": {{\"cat\": [\"URL\"]}}}}")
    unknown = sorted(set(value) - set(EXTRA_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; expected some of {', '.join(EXTRA_KEYS)}")
    supports = value.get("supports") or {}
    if not isinstance(supports, dict) or not all(
            isinstance(refs, list) and all(isinstance(r, str) and r for r in refs) for refs in supports.values()):
        raise InputError(f"{where}.supports: expected {{\"label\": [\"image URL or path\", ...]}}")
    for label, refs in supports.items():
        if len(refs) > SUPPORT_IMAGES_PER_LABEL:
            raise InputError(f"{where}.supports: {label!r} has {len(refs)} images, the most is "
                             f"{SUPPORT_IMAGES_PER_LABEL}")
    prompts = value.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(p, str) and p.strip() for p in prompts.values()):
        raise InputError(f"{where}.prompts: expected {{\"label\": \"prompt words\"}}")
    annotations = value.get("annotations", True)
    if not isinstance(annotations, bool):
        raise InputError(f"{where}.annotations: expected true or false")
    steps = value.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise InputError(f"{where}.steps: expected a whole number of 1 or more")
    return ExtraParams({k: tuple(v) for k, v in supports.items()}, dict(prompts), annotations, steps)


@dataclass(frozen=True)
class DrawnSupport:
    """A task a person annotated: its image (the task data's value and task id) and the
    mask drawn for one label, as bits."""

    task_id: object
    image: str
    label: str
    shape: tuple[int, int]  # (H, W)
    bits: bytes

    def mask(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(np.frombuffer(self.bits, np.uint8), count=count).reshape(self.shape).astype(bool)


def drawn_supports(annotation: Mapping, task: Mapping, controls: tuple[Control, ...], max_pixels: int,
                   field_name: str) -> list[DrawnSupport]:
    """A person's annotation of `task` as supports: one per label it draws (brush
    regions, and polygons filled), the label's regions merged."""
    if not isinstance(annotation, Mapping) or annotation.get("was_cancelled"):
        return []
    data = task.get("data") if isinstance(task, Mapping) else None
    results = annotation.get("result")
    if not isinstance(data, Mapping) or not isinstance(results, list):
        return []
    masks: dict[tuple[str, str], np.ndarray] = {}
    for i, result in enumerate(results):
        if not isinstance(result, Mapping):
            continue
        control = next((c for c in controls if c.from_name == result.get("from_name")
                        and c.to_name == result.get("to_name")), None)
        value = result.get("value")
        width, height = result.get("original_width"), result.get("original_height")
        if control is None or not isinstance(value, Mapping) or not isinstance(data.get(control.field), str):
            continue
        if not (isinstance(width, int) and isinstance(height, int) and 0 < width * height <= max_pixels):
            raise InputError(f"{param(f'{field_name}.result[{i}]')}: original_width and original_height must be "
                             f"a size of at most {max_pixels} pixels")
        drawn = _drawn(value, width, height, f"{field_name}.result[{i}].value")
        if drawn is None:
            continue
        for label in value.get("brushlabels") or value.get("polygonlabels") or ():
            if isinstance(label, str):
                key = (label, control.field)
                masks[key] = masks[key] | drawn if key in masks and masks[key].shape == drawn.shape else drawn
    return [DrawnSupport(task.get("id"), data[f], label, mask.shape, np.packbits(mask).tobytes())
            for (label, f), mask in masks.items() if mask.any()]


def _drawn(value: Mapping, width: int, height: int, where: str) -> np.ndarray | None:
    if value.get("format") == "rle" and "rle" in value:
        return brush_mask(value["rle"], width, height, where)
    points = value.get("points")
    if isinstance(points, list) and len(points) >= 3:
        try:
            xy = np.array(points, np.float64).reshape(-1, 2) / 100.0 * (width, height)
        except (TypeError, ValueError):
            raise InputError(f"{param(where)}.points: expected [[x, y], ...] in percent") from None
        canvas = np.zeros((height, width), np.uint8)
        cv2.fillPoly(canvas, [np.round(xy - 0.5).astype(np.int32)], 1)
        return canvas.astype(bool)
    return None


@dataclass
class Project:
    """One project's state; `config` is the labelling config /setup or /predict gave."""

    config: str | None = None
    params: ExtraParams = field(default_factory=ExtraParams)
    hostname: str | None = None
    access_token: str | None = None
    drawn: OrderedDict = field(default_factory=OrderedDict)  # annotation id -> [DrawnSupport]
    scanned: bool = False  # the project's annotated tasks were read from Label Studio

    def supports_by_label(self) -> dict[str, list[DrawnSupport]]:
        """The latest SUPPORTS_PER_LABEL drawn supports of each label, oldest first."""
        out: dict[str, list[DrawnSupport]] = {}
        for supports in reversed(self.drawn.values()):
            for s in supports:
                if len(out.setdefault(s.label, [])) < SUPPORTS_PER_LABEL:
                    out[s.label].append(s)
        return {label: s[::-1] for label, s in out.items()}

    def digest(self) -> str:
        """What the project's supports are, in short: part of its model version."""
        h = hashlib.blake2b(digest_size=4)
        h.update(json.dumps(sorted(self.params.supports.items())).encode())
        for label, supports in sorted(self.supports_by_label().items()):
            for s in supports:
                h.update(f"{label}\0{s.image}\0".encode() + hashlib.blake2b(s.bits, digest_size=8).digest())
        return h.hexdigest()

    def annotated(self, annotation_id: object, supports: list[DrawnSupport]) -> None:
        """An annotation made or changed: its supports replace what it drew before."""
        self.drawn.pop(annotation_id, None)
        if supports:
            self.drawn[annotation_id] = supports
        per_label = self.supports_by_label()
        kept = {id(s) for supports in per_label.values() for s in supports}
        for key in [k for k, v in self.drawn.items() if not any(id(s) in kept for s in v)]:
            del self.drawn[key]


class Projects:
    """The projects the server has heard of, least recently used forgotten past PROJECTS."""

    def __init__(self):
        self._projects: OrderedDict[str, Project] = OrderedDict()
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._projects)

    def get(self, project_id: str) -> Project:
        with self.lock:
            project = self._projects.pop(project_id, None) or Project()
            self._projects[project_id] = project
            while len(self._projects) > PROJECTS:
                self._projects.popitem(last=False)
            return project
