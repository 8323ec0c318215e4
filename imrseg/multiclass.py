"""Several classes in one run: the rules a run's classes follow and the one mask
that holds them all.

A labelled query has one indexed mask: 0 is background and i the i-th class in
the order the classes were given. Where the classes' masks overlap, the pixel
goes to the class with the highest foreground probability; where none says
foreground it is background."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .arguments import check_sequence, check_text
from .errors import InputError, param

# 0 is background and 255 is VOC's "void" colour, so 254 classes fit in one mask.
MAX_CLASSES = 254
BACKGROUND = 0


def check_class_count(count: int) -> None:
    if count > MAX_CLASSES:
        raise InputError(f"{count} classes: one indexed mask holds at most {MAX_CLASSES}")


def check_distinct_labels(labels: Sequence[str]) -> None:
    """Two labels that differ only in case or spacing would be two classes of one thing."""
    seen: dict[str, str] = {}
    for label in labels:
        key = " ".join(label.split()).casefold()
        if key in seen:
            raise InputError(f"the labels {seen[key]!r} and {label!r} name the same class; give it once")
        seen[key] = label


def check_labels(labels) -> list[str]:
    """The classes of a run or a predictor, as a list: at least one, each a name that is
    not blank, no two the same class, as many as one indexed mask holds."""
    labels = check_sequence("labels", labels)
    if not labels:
        raise InputError("no classes: give at least one label")
    for label in labels:
        check_text("label", label)
        if not label.strip():
            raise InputError(f"the label is empty; pass {param('label')} with the name of the object to segment")
    check_class_count(len(labels))
    check_distinct_labels(labels)
    return labels


def index_mask(masks: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W) uint8: 0 where no class's mask is set, else 1 + the index of the class
    with the highest probability among those whose mask is set there."""
    check_class_count(len(masks))
    chosen = np.stack([np.asarray(m, bool) for m in masks])
    competing = np.where(chosen, np.stack(probs).astype(np.float32), -1.0)
    return np.where(chosen.any(axis=0), competing.argmax(axis=0) + 1, BACKGROUND).astype(np.uint8)
