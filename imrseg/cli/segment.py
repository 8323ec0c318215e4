"""`imrseg segment` and `imrseg zero-shot`: options to a `RunSettings`, progress on
stderr, the summary at the end; the run itself is `imrseg.runner.run_folder`."""
from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..clip.vocabulary import DEFAULT_TEMPLATE
from ..errors import InputError, in_terms_of, show_path
from . import EXIT_INPUT_FAILED, EXIT_INTERRUPTED, app, parameter_flags
from .options import (BatchSizeOption, CamMode, CamModeOption, ClipWeightsOption, CocoOption, CocoPolygonsOption,
                      DeviceOption, GalleryOption, HubNamespaceOption, MaxPixelsOption, MinAreaOption, Precision,
                      PrecisionOption, PromptOption, QuietOption, StepsOption, WeightsOption, flag)

SEGMENT_EXAMPLES = """Examples:

  imrseg segment --label cat --support examples/cat.jpg --query examples/ --out masks/

  imrseg segment -l "traffic cone" -s cones/ -q photos/ -o masks/ --save-steps --save-cam

  imrseg segment -l cat -s cat.jpg --support-mask cat_mask.png -q photos/ -o masks/ --device cuda

  imrseg segment --class dog=dogs/ --class cat=cat.jpg -q photos/ -o labels/ --coco --gallery
"""

ZERO_SHOT_EXAMPLES = """Examples:

  imrseg zero-shot examples/cat.jpg --label cat

  imrseg zero-shot photos/ --label "red car" --out masks/ --save-steps

  imrseg zero-shot photos/ --label dog --label cat --out labels/ --coco
"""

LabelOption = Annotated[Optional[str], typer.Option(
    "--label", "-l", help="What to segment, in words (e.g. dog), with --support: one class.")]
ClassOption = Annotated[Optional[list[str]], typer.Option(
    "--class", metavar="LABEL=SUPPORT",
    help="A class and a support image or folder of it, instead of --label/--support (repeatable: several "
         "classes in one run, numbered in this order in the indexed mask; repeat a label for more supports).")]
ClassMaskOption = Annotated[Optional[list[str]], typer.Option(
    "--class-mask", metavar="LABEL=MASK",
    help="Drawn mask of one of LABEL's supports, given in the order of its supports (nonzero = object); "
         "replaces their CLIP-CAMs.")]
ZeroShotLabelOption = Annotated[list[str], typer.Option(
    "--label", "-l", help="What to segment, in words (repeatable: several classes in one run).")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors the query folders).")]
VocabOption = Annotated[Optional[list[str]], typer.Option(
    "--vocab", help="A background class the label competes with in CLIP (repeatable; "
                    "default: the PASCAL and COCO class names).")]
SaveProbOption = Annotated[bool, flag("--save-prob", "Also write <name>_prob.png (8-bit probability).")]
SaveCamOption = Annotated[bool, flag("--save-cam", "Also write <name>_cam.png (the CLIP-CAM heat map).")]
SaveStepsOption = Annotated[bool, flag(
    "--save-steps", "Also write <name>_step{t}.png, the mask after each refinement step.")]
OverwriteOption = Annotated[bool, flag(
    "--overwrite", "Redo every query, even finished ones, let these settings replace those the output folder "
                   "was made with, and let outputs replace files there that imrseg did not write.")]
SummaryJsonOption = Annotated[bool, flag("--json", "Print a JSON summary on stdout.")]
WorstOption = Annotated[int, typer.Option(
    "--worst", metavar="N", help="List the N finished queries lowest by --sort-by under the summary (0: none).")]


class SortBy(str, Enum):
    score = "score"
    foreground = "foreground"


SortByOption = Annotated[SortBy, typer.Option(
    "--sort-by", help="What --worst ranks by: score (the confidence, see README) or foreground (the mask's share).")]


@app.command(epilog=SEGMENT_EXAMPLES)
def segment(
    query: Annotated[list[Path], typer.Option("--query", "-q", help="Query image or folder (repeatable).")],
    label: LabelOption = None,
    support: Annotated[Optional[list[Path]], typer.Option(
        "--support", "-s", help="Support image or folder (repeatable; K supports = K-shot vote).")] = None,
    out: OutOption = Path("imrseg-out"),
    support_mask: Annotated[Optional[list[Path]], typer.Option(
        "--support-mask", help="Drawn mask per support, in the same order (nonzero = object); "
                               "replaces the supports' CLIP-CAMs.")] = None,
    classes: ClassOption = None, class_mask: ClassMaskOption = None,
    steps: StepsOption = None, weights: WeightsOption = None, clip_weights: ClipWeightsOption = None,
    hub_namespace: HubNamespaceOption = None, device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32, batch_size: BatchSizeOption = None,
    prompt_template: PromptOption = DEFAULT_TEMPLATE, vocab: VocabOption = None,
    cam_mode: CamModeOption = CamMode.official, save_prob: SaveProbOption = False,
    save_cam: SaveCamOption = False, save_steps: SaveStepsOption = False,
    overwrite: OverwriteOption = False, max_pixels: MaxPixelsOption = None,
    coco: CocoOption = False, coco_polygons: CocoPolygonsOption = False, min_area: MinAreaOption = 0,
    gallery: GalleryOption = False, quiet: QuietOption = False, as_json: SummaryJsonOption = False,
    worst: WorstOption = 5, sort_by: SortByOption = SortBy.score,
) -> None:
    """Segment LABEL (or each --class) in every query, using the supports as examples (no masks needed)."""
    _run(query, _parse_classes(classes or (), class_mask or ()), label=label, support=support,
         support_mask=support_mask, out=out, steps=steps, weights=weights, clip_weights=clip_weights,
         hub_namespace=hub_namespace, device=device, precision=precision, batch_size=batch_size,
         prompt_template=prompt_template, vocab=vocab, cam_mode=cam_mode, save_prob=save_prob, save_cam=save_cam,
         save_steps=save_steps, overwrite=overwrite, max_pixels=max_pixels, coco=coco, coco_polygons=coco_polygons,
         min_area=min_area, gallery=gallery, quiet=quiet, as_json=as_json, worst=worst, sort_by=sort_by)


def zero_shot(images: list[Path], label: ZeroShotLabelOption, **options) -> None:
    """Segment each LABEL in each image with no support: each image is its own (the paper's zero-shot mode)."""
    from ..runner import ClassSpec

    _run(images, tuple(ClassSpec(name) for name in label), zero_shot=True, **options)


def _zero_shot_signature() -> None:
    """zero-shot takes segment's options, less the supports, with the images as arguments."""
    hints = typing.get_type_hints(segment, include_extras=True)
    images = inspect.Parameter("images", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        list[Path], typer.Argument(help="Image files or folders.")])
    label = inspect.Parameter("label", inspect.Parameter.KEYWORD_ONLY, annotation=ZeroShotLabelOption)
    shared = [p.replace(annotation=hints[name], kind=inspect.Parameter.KEYWORD_ONLY)
              for name, p in inspect.signature(segment).parameters.items()
              if name not in ("support", "query", "support_mask", "label", "classes", "class_mask")]
    zero_shot.__signature__ = inspect.Signature([images, label, *shared])
    zero_shot.__annotations__ = {p.name: p.annotation for p in zero_shot.__signature__.parameters.values()}


_zero_shot_signature()
app.command("zero-shot", epilog=ZERO_SHOT_EXAMPLES)(zero_shot)


def _parse_classes(pairs: Sequence[str], masks: Sequence[str] = ()) -> tuple:
    """`--class LABEL=SUPPORT` and `--class-mask LABEL=MASK` options as classes, in the
    order each label first appears; a repeated label adds supports (and masks, in the
    same order) to its class. Each is split at its first `=`."""
    from ..runner import ClassSpec

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


def _progress(quiet: bool, command: str):
    """The progress factory run_folder calls with the number of queries. A query's error
    is shown as any error of the command is, with its flags for the parameters it names."""
    import contextlib

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    flags = parameter_flags(typer.main.get_command(app), command)

    @contextlib.contextmanager
    def bar(total: int):
        console = Console(stderr=True)
        with Progress(TextColumn("[bold]segmenting"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
                      disable=quiet or not console.is_terminal, transient=False) as progress:
            task = progress.add_task("segment", total=total, rate="")

            def report(outcome):
                if outcome.status == "failed":
                    progress.console.print(f"imrseg: error: {in_terms_of(outcome.error, flags)}", markup=False,
                                           highlight=False, soft_wrap=True)
                rate = f"{1 / outcome.seconds:.2f} img/s" if outcome.seconds else ""
                progress.update(task, advance=1, rate=rate)

            yield report

    return bar


def _run(queries: list[Path], classes: tuple, *, zero_shot: bool = False, label: str | None = None,
         support: list[Path] | None = None, support_mask: list[Path] | None = None, out: Path,
         steps: int | None, weights: str | None, clip_weights: str | None, hub_namespace: str | None, device: str,
         precision: Precision, batch_size: int | None, prompt_template: str, vocab: list[str] | None,
         cam_mode: CamMode, save_prob: bool, save_cam: bool, save_steps: bool, overwrite: bool,
         max_pixels: int | None, coco: bool, coco_polygons: bool, min_area: int, gallery: bool, quiet: bool,
         as_json: bool, worst: int, sort_by: SortBy) -> None:
    """Both commands: their options as a `RunSettings`, the run, its summary."""
    from ..distributed import current_shard
    from ..runner import RESULTS_FILE, OutputOptions, RunSettings, run_folder

    settings = RunSettings(
        label=label, queries=tuple(queries), out=out, supports=tuple(support or ()),
        support_masks=tuple(support_mask or ()), classes=classes, zero_shot=zero_shot, weights=weights,
        clip_weights=clip_weights, hub_namespace=hub_namespace, steps=steps, device=device,
        precision=precision.value, batch_size=batch_size, prompt_template=prompt_template,
        vocab=tuple(vocab) if vocab else None, cam_mode=cam_mode.value,
        outputs=OutputOptions(save_prob, save_cam, save_steps), overwrite=overwrite, max_pixels=max_pixels,
        coco=coco, coco_polygons=coco_polygons, min_area=min_area, gallery=gallery)
    summary = run_folder(settings, _progress(quiet, "zero-shot" if zero_shot else "segment"))
    if current_shard().is_main:
        _report(summary, settings.out, settings.out / RESULTS_FILE, quiet=quiet, as_json=as_json, worst=worst,
                sort_by=sort_by.value)
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(EXIT_INPUT_FAILED)


def _report(summary, out: Path, results: Path, *, quiet: bool, as_json: bool, worst: int, sort_by: str) -> None:
    worst = summary.worst(max(worst, 0), sort_by)
    data = {**summary.to_dict(), "out": str(out), "results": str(results),
            "worst": [{"query": q, "score": score, "foreground_fraction": fg} for q, score, fg in worst]}
    if as_json:
        typer.echo(json.dumps(data))
    if summary.interrupted:  # said even with --quiet: the run is not finished
        typer.echo("imrseg: interrupted: run the same command again to finish the rest", err=True)
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="imrseg", show_header=True)
    for column in ("done", "skipped", "failed", "mean foreground", "s / image"):
        table.add_column(column, justify="right")
    fg, sec = data["mean_foreground_fraction"], data["seconds_per_image"]
    table.add_row(str(summary.done), str(summary.skipped), str(summary.failed),
                  "-" if fg is None else f"{fg:.1%}", "-" if sec is None else f"{sec:.2f}")
    console = Console(stderr=True)
    console.print(table)
    if worst:
        lowest = Table(title=f"lowest {sort_by}", show_header=True)
        for column in ("score", "foreground", "query"):
            lowest.add_column(column, justify="left" if column == "query" else "right")
        for query, score, fg in worst:
            # A Text, not a string: a query's name is never read as Rich markup (`[bold]x[/bold].jpg`).
            lowest.add_row("-" if score is None else f"{score:.3f}", "-" if fg is None else f"{fg:.1%}",
                           Text(show_path(query)))
        console.print(lowest)
    console.print(f"outputs in {out}, recorded in {results}", markup=False, highlight=False, soft_wrap=True)
    if summary.failed:
        console.print(f"{summary.failed} input(s) failed; see the errors above and {results}", markup=False,
                      highlight=False, soft_wrap=True)
