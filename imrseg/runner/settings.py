"""What a folder run is asked to do, as one typed object: the commands build it
from their options, and everything that can be checked without a model is checked
here, so bad arguments stop before anything loads."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..vocabulary import DEFAULT_TEMPLATE
from .batches import OutputOptions


@dataclass(frozen=True)
class RunSettings:
    label: str
    queries: tuple[Path, ...]
    out: Path = Path("imrseg-out")
    supports: tuple[Path, ...] = ()  # empty for zero-shot: each query is its own support
    support_masks: tuple[Path, ...] = ()  # drawn masks, one per support, replacing their CAMs
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

    def check(self) -> None:
        """Everything that can be checked before a model loads."""
        if not self.label.strip():
            raise InputError("the label is empty; pass --label with the name of the object to segment")
        if "{c}" not in self.prompt_template:
            raise InputError(f"--prompt-template {self.prompt_template!r} has no {{c}} for the class name")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be 1 or more, not {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be 1 or more, not {self.batch_size}")
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out}: --out is a file; give a folder for the outputs")
        if not self.zero_shot and not self.supports:
            raise InputError("no supports: pass at least one --support image")
        if not self.queries:
            raise InputError("no queries: pass at least one --query image or folder")
