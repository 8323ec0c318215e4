"""`imrseg eval`: the paper's PASCAL-5i / COCO-20i evaluation, one command per fold
(or all four), and HSNet's FSS-1000 test. torch and the models are imported inside the command."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from . import app
from ..data.classes import BENCHMARK_TITLES, NUM_FOLDS
from .options import Backbone, BatchSizeOption, EvalBenchmark, ClipWeightsOption, DeviceOption, HubNamespaceOption, StepsOption, WeightsOption

FOLDS = tuple(str(f) for f in range(NUM_FOLDS)) + ("all",)


class Method(str, Enum):
    imr = "imr"
    cam = "cam"


def _folds(fold: str | None, benchmark: str) -> list:
    if benchmark == "fss":  # one test split, no folds
        if fold is not None:
            raise InputError("--fold is for pascal and coco; FSS-1000 has one test split")
        return [None]
    if fold is None:
        raise InputError(f"--fold is needed for {benchmark}: one of {', '.join(FOLDS)}")
    if fold not in FOLDS:
        raise InputError(f"--fold must be one of {', '.join(FOLDS)}, not {fold!r}")
    return list(range(NUM_FOLDS)) if fold == "all" else [int(fold)]


def _paper_miou(backbone: str, settings) -> float | None:
    """The paper's 1-shot figure for this fold and backbone, from the weights
    registry; None for settings it records no figure for (other shots, methods,
    steps or resolution)."""
    from ..hub import load_registry

    if settings.shots != 1 or settings.method != "imr" or settings.zero_shot or settings.original_size:
        return None
    entry = load_registry().find(backbone, settings.benchmark, settings.fold)
    return entry.paper_miou if entry and entry.steps == settings.steps else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@app.command("eval", epilog="""Examples:

  imrseg eval --benchmark pascal --fold 0 --data-root DATA --weights best_model.pt

  imrseg eval --benchmark pascal --fold all --data-root DATA --shots 5 --report pascal-5shot.json

  imrseg eval --benchmark coco --fold 2 --data-root DATA --zero-shot --splits hsnet/data/splits
""")
def eval_command(
    benchmark: Annotated[EvalBenchmark, typer.Option(
        "--benchmark", help="pascal (PASCAL-5i), coco (COCO-20i) or fss (FSS-1000's test classes, as HSNet).")],
    data_root: Annotated[Path, typer.Option(
        "--data-root", metavar="DIR",
        help="Folder holding VOC2012/ (JPEGImages, SegmentationClassAug), COCO2014/ (train2014, val2014, "
             "annotations/) or FSS-1000/ in HSNet's layout.")],
    fold: Annotated[Optional[str], typer.Option(
        "--fold", metavar="0|1|2|3|all", help="Test fold, or all four (pascal and coco).")] = None,
    splits: Annotated[Optional[Path], typer.Option(
        "--splits", metavar="DIR",
        help="HSNet's data/splits folder; default: the official lists, downloaded once (pinned by sha256).")] = None,
    shots: Annotated[int, typer.Option("--shots", min=1, help="Supports per episode (the paper: 1 or 5).")] = 1,
    episodes: Annotated[Optional[int], typer.Option(
        "--episodes", min=1, help="Episodes per fold (default 1000; fss: one per test image, as HSNet).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="numpy seed of the episode draw.")] = 0,
    steps: StepsOption = None,
    weights: WeightsOption = None,
    clip_weights: ClipWeightsOption = None,
    namespace: HubNamespaceOption = None,
    backbone: Annotated[Backbone, typer.Option(
        "--backbone", help="Backbone of the registry checkpoints (when --weights is not given).")] = Backbone.resnet50,
    method: Annotated[Method, typer.Option(
        "--method", help="imr: the network; cam: the CLIP-CAM alone thresholded at 0.5.")] = Method.imr,
    zero_shot: Annotated[bool, typer.Option(
        "--zero-shot", help="Each query is its own support (no support images).")] = False,
    original_size: Annotated[bool, typer.Option(
        "--original-size", help="Score at each query's original resolution instead of 400x400.")] = False,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = None,
    report: Annotated[Optional[Path], typer.Option(
        "--report", metavar="FILE.json", help="Write the results as JSON.")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the CLIP-CAM disk cache.")] = False,
) -> None:
    """Evaluate on PASCAL-5i or COCO-20i as the authors' test script does.

    Same episodes, metrics and resolution; an interrupted run resumes when
    started again with the same arguments. Without --weights each fold uses
    its own registry checkpoint; with it, every fold uses those weights."""
    from ..data.datasets import BenchmarkData
    from ..data.splits import load_split
    from ..hub import locate_weights
    from ..paths import cache_root

    folds = _folds(fold, benchmark.value)
    if zero_shot and method is Method.cam:
        raise InputError("--zero-shot and --method cam exclude each other (cam uses no network)")
    if report is not None:
        _check_report(report)
    if benchmark is EvalBenchmark.fss:
        from ..data.folder import open_fss

        data, fss_split = open_fss(data_root, splits)
    else:
        data = BenchmarkData.open(benchmark.value, data_root)
    # Every fold's weights spec is read now, so a wrong or unpublished one fails before anything loads.
    specs = {f: _weights_spec(weights, backbone.value, benchmark.value, f) for f in folds if method is Method.imr}
    for spec in set(specs.values()):
        locate_weights(spec, namespace)
    split_list = [fss_split] if benchmark is EvalBenchmark.fss else [load_split(benchmark.value, f, splits)
                                                                     for f in folds]
    for split in split_list:
        if not split.official:
            typer.echo(f"imrseg: note: {split.path} is not HSNet's official {benchmark.value} fold {split.fold} "
                       "list, so the episodes differ from the authors'", err=True)

    from rich.console import Console

    from ..clip.cam import ClipCAM
    from ..devices import default_batch_size, resolve_device
    from ..distributed import current_shard, start, stop
    from ..durable import file_sha256
    from ..clip.cache import CamSource
    from ..clip.vocabulary import folder_vocabulary
    from ..data.classes import BENCHMARK_CLASSES, paper_steps
    from ..evaluation.loop import EvalSettings
    from ..evaluation.state import RunState
    from ..hub import resolve_clip, resolve_steps, resolve_weights

    shard = current_shard()
    torch_device = start(shard, resolve_device(device))
    console = Console(quiet=not shard.is_main)
    clip_model, tokenizer, clip_info = resolve_clip(clip_weights, device=torch_device)
    clip_id = f"{clip_info.model_name}:{file_sha256(clip_info.path)}"
    cam = ClipCAM(clip_model, tokenizer, mode="official", device=torch_device)
    # The authors' vocabulary: the benchmark's own class list, "a photo of a {c}".
    vocabulary = folder_vocabulary(fss_split.class_names) if benchmark is EvalBenchmark.fss else BENCHMARK_CLASSES[benchmark.value]
    cams = CamSource(cam, vocabulary, clip_id, None if no_cache else cache_root())

    model = info = None
    results = []
    for split in split_list:
        if method is Method.imr and (info is None or weights is None):
            model, info = resolve_weights(specs[split.fold], namespace, device=torch_device)
        trained_for = (info.benchmark, info.fold) if info is not None and info.benchmark is not None else None
        # (FSS-1000's classes are no checkpoint's test classes: nothing to warn about.)
        if trained_for is not None and split.fold is not None and trained_for != (benchmark.value, split.fold):
            typer.echo(f"imrseg: warning: {info.spec} was trained for {info.benchmark} fold {info.fold}; "
                       f"its test classes are not {benchmark.value} fold {split.fold}'s", err=True)
        run_steps = resolve_steps(info, steps, benchmark.value) if info is not None else steps or paper_steps(benchmark.value)
        count = episodes or (len(split.entries) if benchmark is EvalBenchmark.fss else 1000)
        settings = EvalSettings(benchmark.value, split.fold, shots, count, seed, run_steps, method.value,
                                zero_shot, original_size, batch_size or default_batch_size(torch_device))
        setting = settings.state_setting(split, data.root, info.sha256 if info else None, clip_id, cam.mode)
        # Ranks of a distributed run share no state file: such a run is not resumable.
        state = None if shard.distributed else RunState(cache_root() / "eval" / f"{RunState.key(setting)}.jsonl",
                                                        setting)
        try:
            result = _run_fold(settings, split, data, model, cams, state, torch_device, shard)
        except KeyboardInterrupt:
            if state is not None:
                typer.echo(f"imrseg: {len(state.rows)} episodes of fold {split.fold} are saved; "
                           "run the same command again to continue", err=True)
            raise
        finally:
            if state is not None:
                state.close()
        paper = _paper_miou(info.backbone if info else backbone.value, settings)
        result.extra.update({
            "weights": {"name": info.name or info.spec, "sha256": info.sha256} if info else None,
            "clip_weights": {"name": clip_info.spec, "id": clip_id},
            "split": {"path": str(split.path), "sha256": split.sha256, "official": split.official},
            "paper_miou": paper})
        results.append(result)
        _print_fold(console, result, paper)
    stop(shard)
    if len(results) > 1:
        _print_row(console, results)
    if report is not None and shard.is_main:
        _write_report(report, results)


def _check_report(path: Path) -> None:
    """Find an unwritable --report before the evaluation, not after it: by writing there."""
    import tempfile

    if path.is_dir():
        raise InputError(f"{path}: --report is a folder; give a file name, e.g. {path / 'report.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.check-"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: --report cannot be written there ({exc.strerror or exc})") from None


def _weights_spec(weights: str | None, backbone: str, benchmark: str, fold: int | None) -> str:
    """--weights, else the registry's checkpoint for the backbone, benchmark and fold."""
    from ..hub import load_registry

    if weights is not None:
        return weights
    entry = load_registry().find(backbone, benchmark, fold)
    if entry is None:
        where = benchmark if fold is None else f"{benchmark} fold {fold}"
        raise InputError(f"no registry checkpoint for {backbone} {where}; pass --weights")
    return entry.name


def _run_fold(settings, split, data, model, cams, state, device, shard):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from ..evaluation.loop import evaluate

    label = f"{settings.benchmark} fold {settings.fold}"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("mIoU {task.fields[miou]:5.1f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=not shard.is_main) as progress:
        task = progress.add_task(label, total=settings.episodes, miou=0.0)

        def on_episode(done: int, total: int, meter) -> None:
            progress.update(task, completed=done, miou=meter.miou)

        result = evaluate(settings, split, data, model, cams, state, device, on_episode, shard)
    if result.resumed:
        typer.echo(f"imrseg: {result.resumed} of {result.episodes} episodes taken from the saved state "
                   f"{state.path}", err=True)
    return result


def _print_fold(console, result, paper: float | None) -> None:
    from rich.table import Table

    s = result.settings
    mode = "zero-shot" if s.zero_shot else f"{s.shots}-shot"
    what = "CLIP-CAM >= 0.5" if s.method == "cam" else f"IMR-HSNet, {s.steps} steps"
    where = BENCHMARK_TITLES[s.benchmark] + (f" fold {s.fold}" if s.fold is not None else "")
    console.print(f"[bold]{where}[/bold]: {mode}, {what}, "
                  f"{result.episodes} episode{'s' if result.episodes != 1 else ''}, {result.seconds:.0f} s")
    table = Table()
    table.add_column("class")
    table.add_column("IoU (%)", justify="right")
    for name, iou in result.per_class.items():
        table.add_row(name, "not evaluated" if name in result.unevaluated else f"{iou:.1f}")
    table.add_section()
    table.add_row("mIoU", f"[bold]{result.miou:.1f}[/bold]")
    table.add_row("FB-IoU", f"{result.fb_iou:.1f}")
    if paper is not None:
        table.add_row("paper mIoU", f"{paper:.1f} ({result.miou - paper:+.1f})")
    console.print(table)
    if result.unevaluated:
        console.print(f"not evaluated: {', '.join(result.unevaluated)} (no episode drew them); as in the "
                      f"authors' evaluation they count as 0 IoU in the mIoU; run more episodes to cover every "
                      "class", markup=False)


def _print_row(console, results) -> None:
    from rich.table import Table

    ours = [r.miou for r in results]
    papers = [r.extra["paper_miou"] for r in results]
    known = all(p is not None for p in papers)
    console.print("[bold]mIoU (%) per fold[/bold], as in the paper's tables")
    table = Table()
    table.add_column("")
    for r in results:
        table.add_column(f"fold {r.settings.fold}", justify="right")
    table.add_column("mean", justify="right")
    table.add_row("imrseg", *[_fmt(v) for v in ours], _fmt(sum(ours) / len(ours)))
    table.add_row("paper", *[_fmt(p) for p in papers], _fmt(sum(papers) / len(papers) if known else None))
    if any(p is not None for p in papers):
        diffs = [None if p is None else o - p for o, p in zip(ours, papers)]
        mean_diff = sum(ours) / len(ours) - sum(papers) / len(papers) if known else None
        table.add_row("difference", *[f"{d:+.1f}" if d is not None else "-" for d in diffs],
                      f"{mean_diff:+.1f}" if mean_diff is not None else "-")
    fb = [r.fb_iou for r in results]
    table.add_row("FB-IoU", *[_fmt(v) for v in fb], _fmt(sum(fb) / len(fb)))
    console.print(table)


def _write_report(path: Path, results) -> None:
    from ..durable import atomic_write_bytes

    if len(results) == 1:
        doc = results[0].to_dict()
    else:
        first = results[0].to_dict()
        papers = [r.extra["paper_miou"] for r in results]
        doc = {key: first[key] for key in ("benchmark", "shots", "steps", "episodes", "seed", "method",
                                           "zero_shot", "original_size", "clip_weights")}
        doc.update({
            "fold": "all", "folds": [r.settings.fold for r in results],
            "weights": [r.extra["weights"] for r in results],
            "miou": sum(r.miou for r in results) / len(results),
            "fb_iou": sum(r.fb_iou for r in results) / len(results),
            "per_class": {name: iou for r in results for name, iou in r.per_class.items()},
            "unevaluated_classes": [name for r in results for name in r.unevaluated],
            "seconds": sum(r.seconds for r in results),
            "paper_miou": sum(papers) / len(papers) if all(p is not None for p in papers) else None,
            "per_fold": [r.to_dict() for r in results]})
    atomic_write_bytes(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    typer.echo(f"report: {path}", err=True)
