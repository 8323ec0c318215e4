"""The words CLIP sees: the prompt template, and the competitors a free-text
label's CLIP softmax is taken against.

Grad-CAM differentiates the label's softmax probability, which needs other
classes to compete with. By default these are the PASCAL VOC and COCO class
names, without the label itself and its exact synonyms (a synonym would split
the label's own probability)."""
from __future__ import annotations

from collections.abc import Sequence

DEFAULT_TEMPLATE = "a photo of a {c}"  # the authors' prompt

SYNONYMS = [
    {"aeroplane", "airplane", "plane", "aircraft"},
    {"bicycle", "bike"},
    {"car", "automobile"},
    {"diningtable", "table"},
    {"motorbike", "motorcycle"},
    {"person", "people", "human", "man", "woman"},
    {"pottedplant", "plant", "houseplant"},
    {"sofa", "couch"},
    {"tvmonitor", "tv", "television", "monitor"},
    {"cow", "cattle"},
]


def _norm(name: str) -> str:
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return key[:-1] if key.endswith("s") and len(key) > 3 else key


def _same_thing(a: str, b: str) -> bool:
    na, nb = _norm(a), _norm(b)
    return na == nb or any(na in group and nb in group for group in SYNONYMS)


def background_vocabulary(label: str, background: Sequence[str] | None = None) -> list[str]:
    """[label, competitors...]: `background` replaces the default PASCAL + COCO names."""
    from .evaluation.classes import COCO_CLASSES, PASCAL_CLASSES

    names = list(background) if background is not None else list(PASCAL_CLASSES) + list(COCO_CLASSES)
    out, seen = [label], {_norm(label)}
    for name in names:
        if not _same_thing(name, label) and _norm(name) not in seen:
            out.append(name)
            seen.add(_norm(name))
    return out
