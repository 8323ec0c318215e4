"""Options shared by several commands, defined once."""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Annotated, Optional

import typer

from ..data.classes import BACKBONE_TITLES, FOLD_BENCHMARKS, TEST_BENCHMARKS, TRAIN_BENCHMARKS
from ..devices import PRECISIONS


def choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A command-line choice whose values are the library's own list of them."""
    return Enum(name, {value: value for value in values}, type=str)


# Library parameters whose flag is not their name with dashes (the rest are read off the commands).
PARAMETER_FLAGS = {
    "background": "--vocab",
    "template": "--prompt-template",
    "queries": "--query",
    "supports": "--support",
    "support_masks": "--support-mask",
    "mode": "--cam-mode",
    "splits_dir": "--splits",
}

Benchmark = choices("Benchmark", FOLD_BENCHMARKS)
EvalBenchmark = choices("EvalBenchmark", TEST_BENCHMARKS)
TrainBenchmark = choices("TrainBenchmark", TRAIN_BENCHMARKS)


Backbone = choices("Backbone", BACKBONE_TITLES)


class Origin(str, Enum):
    """Where a registry entry comes from (the library's `hub.ORIGINS`)."""

    auto = "auto"
    hub = "hub"
    authors = "authors"


class CamMode(str, Enum):
    official = "official"
    full = "full"


Precision = choices("Precision", PRECISIONS)


def flag(name: str, text: str):
    """A boolean option: present or absent, so help shows it without a value placeholder."""
    return typer.Option(name, metavar="", help=text)


WeightsOption = Annotated[Optional[str], typer.Option(
    "--weights", "-w", metavar="SPEC",
    help="IMR-HSNet weights: a registry name (see `imrseg weights list`), a Hub repo id (owner/name, @revision optional), "
         "a local folder in the Hub layout, or an authors' best_model.pt.")]
ClipWeightsOption = Annotated[Optional[str], typer.Option(
    "--clip-weights", metavar="SPEC",
    help="CLIP weights: open_clip MODEL:PRETRAINED (default RN50-quickgelu:openai, from the Hub), "
         "a Hub repo id (owner/name, @revision optional) or a local file.")]
HubNamespaceOption = Annotated[Optional[str], typer.Option(
    "--hub-namespace", metavar="OWNER",
    help="Hub user or organisation hosting the registry's checkpoints (default: $IMRSEG_HUB_NAMESPACE, "
         "else the registry's own).")]
DeviceOption = Annotated[str, typer.Option(
    "--device", "-d", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")]
PrecisionOption = Annotated[Precision, typer.Option(
    "--precision", help="fp32 (default): IEEE fp32 on every device, the authors' numbers; tf32: fp32 with "
                        "TensorFloat-32 matmuls and convolutions on CUDA GPUs (faster, about 1e-3 off); bf16/fp16: "
                        "the network under autocast (fp16 on a GPU only).")]
StepsOption = Annotated[Optional[int], typer.Option(
    "--steps", "-n", help="Refinement steps (default: the checkpoint's, 2 for PASCAL, 3 for COCO).")]
BatchSizeOption = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", help="Queries per forward pass (default: on a CUDA GPU as many as half its memory holds, at most 64; "
                          "2 on CPU or MPS).")]
CamModeOption = Annotated[CamMode, typer.Option(
    "--cam-mode", help="CLIP-CAM preprocessing: official (centre crop, as the authors) or full "
                       "(whole image, aligned with what the network sees).")]
PromptOption = Annotated[str, typer.Option(
    "--prompt-template", help="CLIP prompt, with {c} for the class name.")]
JsonOption = Annotated[bool, flag("--json", "Print JSON instead of a table.")]
QuietOption = Annotated[bool, flag("--quiet", "No progress bar or summary table.")]
MaxPixelsOption = Annotated[Optional[int], typer.Option(
    "--max-pixels", help="Largest image accepted, in pixels (decompression-bomb guard; default 178956970).")]
CocoOption = Annotated[bool, flag(
    "--coco", "Write OUT/annotations.json: COCO instances, one annotation per connected component of each class.")]
CocoPolygonsOption = Annotated[bool, flag(
    "--coco-polygons", "COCO segmentations as polygons (holes filled) instead of exact RLE.")]
MinAreaOption = Annotated[int, typer.Option(
    "--min-area", metavar="PIXELS", help="Leave components of fewer pixels out of the COCO annotations.")]
GalleryOption = Annotated[bool, flag(
    "--gallery", "Write OUT/gallery.html: every result's overlay, classes and score, worst first.")]
