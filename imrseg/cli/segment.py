"""`imrseg segment`, `imrseg zero-shot` and `imrseg info`."""
from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import InputError
from . import EXIT_INPUT_FAILED, EXIT_INTERRUPTED, app
from .options import (BatchSizeOption, CamMode, CamModeOption, ClipWeightsOption, DeviceOption,
                      HubNamespaceOption, MaxPixelsOption, Precision, PrecisionOption, PromptOption,
                      QuietOption, StepsOption, WeightsOption)

RESULTS_FILE = "results.jsonl"

SEGMENT_EXAMPLES = """Examples:

  imrseg segment --label dog --support examples/dog_support.jpg --query examples/ --out out/

  imrseg segment -l "traffic cone" -s cones/ -q photos/ -o masks/ --save-steps --save-cam

  imrseg segment -l cat -s cat.jpg --support-mask cat_mask.png -q photos/ -o masks/ --device cuda
"""

ZERO_SHOT_EXAMPLES = """Examples:

  imrseg zero-shot examples/cat.jpg --label cat

  imrseg zero-shot photos/ --label "red car" --out masks/ --save-steps
"""

LabelOption = Annotated[str, typer.Option("--label", "-l", help="What to segment, in words (e.g. dog).")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors the query folders).")]
VocabOption = Annotated[Optional[list[str]], typer.Option(
    "--vocab", help="A background class the label competes with in CLIP (repeatable; "
                    "default: the PASCAL and COCO class names).")]
SaveProbOption = Annotated[bool, typer.Option("--save-prob", help="Also write <name>_prob.png (8-bit probability).")]
SaveCamOption = Annotated[bool, typer.Option("--save-cam", help="Also write <name>_cam.png (the CLIP-CAM heat map).")]
SaveStepsOption = Annotated[bool, typer.Option(
    "--save-steps", help="Also write <name>_step{t}.png, the mask after each refinement step.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Redo queries whose outputs exist.")]
SummaryJsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


@app.command(epilog=SEGMENT_EXAMPLES)
def segment(
    label: LabelOption,
    support: Annotated[list[Path], typer.Option(
        "--support", "-s", help="Support image or folder (repeatable; K supports = K-shot vote).")],
    query: Annotated[list[Path], typer.Option("--query", "-q", help="Query image or folder (repeatable).")],
    out: OutOption = Path("imrseg-out"),
    support_mask: Annotated[Optional[list[Path]], typer.Option(
        "--support-mask", help="Drawn mask per support, in the same order (nonzero = object); "
                               "replaces the supports' CLIP-CAMs.")] = None,
    steps: StepsOption = None, weights: WeightsOption = None, clip_weights: ClipWeightsOption = None,
    hub_namespace: HubNamespaceOption = None, device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32, batch_size: BatchSizeOption = None,
    prompt_template: PromptOption = "a photo of a {c}", vocab: VocabOption = None,
    cam_mode: CamModeOption = CamMode.official, save_prob: SaveProbOption = False,
    save_cam: SaveCamOption = False, save_steps: SaveStepsOption = False,
    overwrite: OverwriteOption = False, max_pixels: MaxPixelsOption = None,
    quiet: QuietOption = False, as_json: SummaryJsonOption = False,
) -> None:
    """Segment LABEL in every query, using the supports as examples (no masks needed)."""
    _run(locals(), zero_shot=False)


def zero_shot(images: list[Path], **options) -> None:
    """Segment LABEL in each image with no support: each image is its own (the paper's zero-shot mode)."""
    _run({**options, "query": images, "support": [], "support_mask": None}, zero_shot=True)


def _zero_shot_signature() -> None:
    """zero-shot takes segment's options, less the supports, with the images as arguments."""
    hints = typing.get_type_hints(segment, include_extras=True)
    images = inspect.Parameter("images", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
        list[Path], typer.Argument(help="Image files or folders.")])
    shared = [p.replace(annotation=hints[name]) for name, p in inspect.signature(segment).parameters.items()
              if name not in ("support", "query", "support_mask")]
    zero_shot.__signature__ = inspect.Signature([images, *shared])
    zero_shot.__annotations__ = {p.name: p.annotation for p in zero_shot.__signature__.parameters.values()}


_zero_shot_signature()
app.command("zero-shot", epilog=ZERO_SHOT_EXAMPLES)(zero_shot)


def _check_arguments(a: dict, zero_shot: bool) -> None:
    """Everything that can be checked before a model loads."""
    if not a["label"].strip():
        raise InputError("the label is empty; pass --label with the name of the object to segment")
    if "{c}" not in a["prompt_template"]:
        raise InputError(f"--prompt-template {a['prompt_template']!r} has no {{c}} for the class name")
    if a["steps"] is not None and a["steps"] < 1:
        raise InputError(f"--steps must be 1 or more, not {a['steps']}")
    if a["batch_size"] is not None and a["batch_size"] < 1:
        raise InputError(f"--batch-size must be 1 or more, not {a['batch_size']}")
    if a["out"].exists() and not a["out"].is_dir():
        raise InputError(f"{a['out']}: --out is a file; give a folder for the outputs")
    if not zero_shot and not a["support"]:
        raise InputError("no supports: pass at least one --support image")
    if not a["query"]:
        raise InputError("no queries: pass at least one --query image or folder")


def _check_label_fits(label: str, template: str) -> None:
    import open_clip

    from ..cam import check_label
    from ..hub import DEFAULT_CLIP_MODEL

    check_label(open_clip.get_tokenizer(DEFAULT_CLIP_MODEL), template, label)


def _supports(paths: list[Path], masks: list[Path] | None, max_pixels):
    """Load the supports (every failure is fatal: they define the task) and their masks."""
    import numpy as np

    from .. import io

    files = [image for image, _ in io.find_images(paths)]
    if masks and len(masks) != len(files):
        raise InputError(f"{len(files)} support images but {len(masks)} --support-mask files; "
                         "give one mask per support, in the same order")
    images = [io.load_image(p, max_pixels=max_pixels, draft_size=0) for p in files]
    drawn = None
    if masks:
        drawn = []
        for image, mask_path in zip(images, masks):
            mask = io.load_image(mask_path, max_pixels=max_pixels, draft_size=0)
            if mask.size != image.size:
                raise InputError(f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]} but its support "
                                 f"{image.path} is {image.size[0]}x{image.size[1]}")
            drawn.append(np.asarray(mask.image).max(axis=2) > 0)
    return images, drawn


def _progress(total: int, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("[bold]segmenting"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
                    disable=quiet or not console.is_terminal, transient=False)


def _run(a: dict, zero_shot: bool) -> None:
    from .. import io
    from ..devices import check_precision, resolve_device
    from ..distributed import barrier, current_shard, start, stop

    _check_arguments(a, zero_shot)
    device = resolve_device(a["device"])
    precision = check_precision(a["precision"].value, device)
    _check_label_fits(a["label"], a["prompt_template"])
    out = a["out"]
    found = io.find_images(a["query"], exclude=[out])
    plan = io.plan_outputs(found, out)
    supports, drawn = ([], None) if zero_shot else _supports(a["support"], a["support_mask"], a["max_pixels"])

    shard = current_shard()
    if shard.is_main:
        io.remove_stale_temporaries(out)
    device = start(shard, device)
    predictor, header = _load(a, device, precision, supports, drawn)
    steps = predictor.steps
    mine = {q: plan[q] for q in shard.take(list(plan))}
    log_path = _rank_log(out, shard.rank) if shard.distributed else out / RESULTS_FILE

    from ..runner import OutputOptions, StopOnInterrupt, segment_folder

    options = OutputOptions(a["save_prob"], a["save_cam"], a["save_steps"])
    batch_size = a["batch_size"] or (8 if device.type == "cuda" else 2)
    if zero_shot:
        def predict(images, sizes):
            return predictor.predict_zero_shot(images, a["label"], sizes=sizes)
    else:
        def predict(images, sizes):
            return predictor.predict_batch(images, sizes=sizes)

    with _progress(len(mine), a["quiet"]) as progress, StopOnInterrupt() as stopper, \
            io.ResultsLog(log_path) as log:
        log.write({**header, "steps": steps, "rank": shard.rank, "world": shard.world})
        task = progress.add_task("segment", total=len(mine), rate="")

        def report(outcome):
            if outcome.status == "failed":
                progress.console.print(f"imrseg: error: {outcome.error}", markup=False, highlight=False,
                                       soft_wrap=True)
            rate = f"{1 / outcome.seconds:.2f} img/s" if outcome.seconds else ""
            progress.update(task, advance=1, rate=rate)

        summary = segment_folder(predict, mine, steps=steps, options=options, batch_size=batch_size,
                                 overwrite=a["overwrite"], max_pixels=a["max_pixels"], log=log,
                                 device_name=str(device), on_outcome=report, stop=stopper)
    barrier(shard)
    if shard.distributed:
        summary = _merge_ranks(out, shard.world, summary) if shard.is_main else summary
    stop(shard)
    if shard.is_main:
        _report(summary, a["quiet"], a["as_json"], out)
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(EXIT_INPUT_FAILED)


def _load(a: dict, device, precision: str, supports, drawn):
    """Models, the predictor with its supports set, and the run header for results.jsonl."""
    from ..cam import ClipCAM
    from ..hub import resolve_clip, resolve_weights
    from ..predictor import Predictor

    model, info = resolve_weights(a["weights"], a["hub_namespace"], device=device)
    clip, tokenizer, clip_info = resolve_clip(a["clip_weights"], device=device)
    cam = ClipCAM(clip, tokenizer, template=a["prompt_template"], mode=a["cam_mode"].value, device=device)
    predictor = Predictor(model, cam, device=device, steps=a["steps"], vocabulary=a["vocab"],
                          precision=precision)
    if supports:
        predictor.set_support([s.image for s in supports], a["label"], masks=drawn)
    header = {"type": "run", "imrseg": __version__, "label": a["label"],
              "supports": [str(s.path) for s in supports], "support_masks": [str(p) for p in a["support_mask"] or []],
              "zero_shot": not supports, "weights": {"spec": info.spec, "name": info.name, "sha256": info.sha256},
              "clip": clip_info.model_name, "cam_mode": a["cam_mode"].value, "device": str(device),
              "precision": precision}
    return predictor, header


def _merge_ranks(out: Path, world: int, summary):
    """Rank 0: gather every rank's rows into results.jsonl, in query order, and total them."""
    from .. import io
    from ..runner import Outcome, Summary

    rows = [io.read_results(_rank_log(out, rank)) for rank in range(world)]
    merged = Summary(interrupted=summary.interrupted)
    with io.ResultsLog(out / RESULTS_FILE) as log:
        log.write({**rows[0][0], "rank": 0, "world": world})
        queries = [[r for r in part if r.get("type") == "query"] for part in rows]
        for i in range(max(map(len, queries))):  # rank r took items r, r + world, ...
            for part in queries:
                if i < len(part):
                    log.write(part[i])
                    merged.add(Outcome(Path(part[i]["query"]), part[i]["status"],
                                       foreground_fraction=part[i]["foreground_fraction"],
                                       seconds=part[i]["seconds"]))
    for rank in range(world):
        _rank_log(out, rank).unlink()
    return merged


def _rank_log(out: Path, rank: int) -> Path:
    """One rank's rows of a distributed run, merged into results.jsonl at the end."""
    return out / f".results.rank{rank}.jsonl"


def _report(summary, quiet: bool, as_json: bool, out: Path) -> None:
    data = {**summary.to_dict(), "results": str(out / RESULTS_FILE)}
    if as_json:
        typer.echo(json.dumps(data))
    if summary.interrupted:  # said even with --quiet: the run is not finished
        typer.echo("imrseg: interrupted: run the same command again to finish the rest", err=True)
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="imrseg", show_header=True)
    for column in ("done", "skipped", "failed", "mean foreground", "s / image"):
        table.add_column(column, justify="right")
    fg, sec = data["mean_foreground_fraction"], data["seconds_per_image"]
    table.add_row(str(summary.done), str(summary.skipped), str(summary.failed),
                  "-" if fg is None else f"{fg:.1%}", "-" if sec is None else f"{sec:.2f}")
    console = Console(stderr=True)
    console.print(table)
    if summary.failed:
        console.print(f"{summary.failed} input(s) failed; see the errors above and {out / RESULTS_FILE}",
                      markup=False)


@app.command(epilog="Examples:\n\n  imrseg info\n\n  imrseg info --json")
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Version, torch/CUDA/MPS availability, the cache location and cached weights."""
    import torch

    from ..hub import hf_cache_dir, is_cached, load_registry

    mps = getattr(torch.backends, "mps", None)
    data = {
        "imrseg": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps": bool(mps and mps.is_available()), "cache": hf_cache_dir(),
        "cached_weights": [name for name, entry in load_registry().entries.items() if is_cached(entry)],
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        typer.echo(f"{key:15s} {', '.join(value) if isinstance(value, list) else value}")
