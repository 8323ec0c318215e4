"""What a folder run is asked to do, as one typed object: the commands build it
from their options, and everything that can be checked without a model is checked
here, so bad arguments stop before anything loads.

A run segments one class or several (`classes`, numbered 1, 2, ... in the indexed
mask in their order); `label`, `supports` and `support_masks` are the one-class
form and become `classes` as the settings are made."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..multiclass import check_class_count, check_distinct_labels
from ..clip.vocabulary import DEFAULT_TEMPLATE, check_template
from .writing import OutputOptions


@dataclass(frozen=True)
class ClassSpec:
    label: str
    supports: tuple[Path, ...] = ()  # empty for zero-shot: each query is its own support
    support_masks: tuple[Path, ...] = ()  # drawn masks, one per support, replacing their CAMs


def parse_classes(pairs: Sequence[str], masks: Sequence[str] = ()) -> tuple[ClassSpec, ...]:
    """`--class LABEL=SUPPORT` and `--class-mask LABEL=MASK` options as classes, in the
    order each label first appears; a repeated label adds supports (and masks, in the
    same order) to its class. Each is split at its first `=`."""
    supports: dict[str, list[Path]] = {}
    for item in pairs:
        label, sep, path = item.partition("=")
        label = label.strip()
        if not (sep and label and path):
            raise InputError(f"--class {item!r}: expected LABEL=SUPPORT, an image or folder of that class")
        supports.setdefault(label, []).append(Path(path))
    drawn: dict[str, list[Path]] = {}
    for item in masks:
        label, sep, path = item.partition("=")
        label = label.strip()
        if not (sep and path) or label not in supports:
            raise InputError(f"--class-mask {item!r}: expected LABEL=MASK with a LABEL given by --class")
        drawn.setdefault(label, []).append(Path(path))
    return tuple(ClassSpec(label, tuple(files), tuple(drawn.get(label, ()))) for label, files in supports.items())


@dataclass(frozen=True)
class RunSettings:
    queries: tuple[Path, ...] = ()
    out: Path = Path("imrseg-out")
    label: str | None = None  # the one-class form: label, supports, support_masks
    supports: tuple[Path, ...] = ()
    support_masks: tuple[Path, ...] = ()
    classes: tuple[ClassSpec, ...] = ()
    zero_shot: bool = False
    weights: str | None = None
    clip_weights: str | None = None
    hub_namespace: str | None = None
    steps: int | None = None  # None: the checkpoint's
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None  # None: devices.default_batch_size
    prompt_template: str = DEFAULT_TEMPLATE
    vocab: tuple[str, ...] | None = None
    cam_mode: str = "official"
    outputs: OutputOptions = field(default_factory=OutputOptions)
    overwrite: bool = False
    max_pixels: int | None = None
    coco: bool = False  # write annotations.json at the end
    coco_polygons: bool = False
    min_area: int = 0
    gallery: bool = False  # write gallery.html at the end

    def __post_init__(self):
        if self.label is not None:
            if self.classes:
                raise InputError("give --label (with --support) or --class, not both")
            spec = ClassSpec(self.label, tuple(self.supports), tuple(self.support_masks))
            object.__setattr__(self, "classes", (spec,))
        elif self.supports or self.support_masks:
            raise InputError("--support and --support-mask go with --label; with --class give "
                             "LABEL=SUPPORT and --class-mask LABEL=MASK")

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.classes]

    def check(self) -> None:
        """Everything that can be checked before a model loads."""
        if not self.classes:
            raise InputError("no class: pass --label (or --class LABEL=SUPPORT) with the name of the object")
        for spec in self.classes:
            if not spec.label.strip():
                raise InputError("the label is empty; pass --label with the name of the object to segment")
            if not self.zero_shot and not spec.supports:
                raise InputError(f"no supports for {spec.label!r}: pass at least one --support image")
        check_class_count(len(self.classes))
        check_distinct_labels(self.labels)
        check_template(self.prompt_template)
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be 1 or more, not {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be 1 or more, not {self.batch_size}")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: --out is a file; give a folder for the outputs")
        if not self.queries:
            raise InputError("no queries: pass at least one --query image or folder")
        if self.min_area < 0:
            raise InputError(f"--min-area must be 0 or more, not {self.min_area}")
        if (self.coco_polygons or self.min_area) and not self.coco:
            raise InputError("--coco-polygons and --min-area shape the COCO annotations: add --coco")
