"""What a folder run is asked to do, as one typed object: the commands build it
from their options, and everything that can be checked without a model is checked
here, so bad arguments stop before anything loads.

A run segments one class or several (`classes`, numbered 1, 2, ... in the indexed
mask in their order); `label`, `supports` and `support_masks` are the one-class
form and become `classes` as the settings are made."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import check_count, check_fields
from ..devices import check_precision, resolve_device
from ..errors import InputError, param
from ..multiclass import check_labels
from ..clip.vocabulary import DEFAULT_TEMPLATE, check_template
from .writing import OutputOptions


@dataclass(frozen=True)
class ClassSpec:
    label: str
    supports: tuple[Path, ...] = ()  # empty for zero-shot: each query is its own support
    support_masks: tuple[Path, ...] = ()  # drawn masks, one per support, replacing their CAMs

    def __post_init__(self):
        check_fields(self)


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
    overwrite: bool = False  # redo every query, and let outputs replace files imrseg did not write
    max_pixels: int | None = None
    coco: bool = False  # write annotations.json at the end
    coco_polygons: bool = False
    min_area: int = 0
    gallery: bool = False  # write gallery.html at the end

    def __post_init__(self):
        check_fields(self)
        if self.label is not None:
            if self.classes:
                raise InputError(f"give {param('label')} (with {param('supports')}) or {param('classes')}, not both")
            spec = ClassSpec(self.label, tuple(self.supports), tuple(self.support_masks))
            object.__setattr__(self, "classes", (spec,))
        elif self.supports or self.support_masks:
            raise InputError(f"{param('supports')} and {param('support_masks')} go with {param('label')}; with "
                             f"{param('classes')}, each class brings its own supports and masks")

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.classes]

    def check(self) -> None:
        """Everything that can be checked before a model loads."""
        if not self.classes:
            raise InputError(f"no class: pass {param('label')} (or {param('classes')}) with the name of the object")
        check_labels(self.labels)
        for spec in self.classes:
            if not self.zero_shot and not spec.supports:
                raise InputError(f"no supports for {spec.label!r}: pass at least one {param('supports')} image")
        check_template(self.prompt_template)
        for name in ("steps", "batch_size"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        if self.max_pixels is not None:
            check_count("max_pixels", self.max_pixels, minimum=0)
        check_precision(self.precision, resolve_device(self.device))
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: {param('out')} is a file; give a folder for the outputs")
        if not self.queries:
            raise InputError(f"no queries: pass at least one {param('queries')} image or folder")
        if self.min_area < 0:
            raise InputError(f"{param('min_area')} must be 0 or more, not {self.min_area}")
        if (self.coco_polygons or self.min_area) and not self.coco:
            raise InputError(f"{param('coco_polygons')} and {param('min_area')} shape the COCO annotations: add "
                             f"{param('coco')}")
