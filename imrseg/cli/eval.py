"""`imrseg eval`: the paper's PASCAL-5i / COCO-20i evaluation, one command per fold
(or all four), and HSNet's FSS-1000 test: options to a `BenchmarkSettings`, progress
on stderr, each fold's table as it finishes; the evaluation itself is
`imrseg.evaluation.run_benchmark`. torch and the models are imported inside the command."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from ..data.classes import BENCHMARK_TITLES
from ..evaluation.progress import BenchmarkProgress
from ..evaluation.settings import METHODS, BenchmarkSettings
from .options import (Backbone, BatchSizeOption, ClipWeightsOption, DeviceOption, EvalBenchmark, HubNamespaceOption,
                      StepsOption, WeightsOption, choices)

Method = choices("Method", METHODS)


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
    hub_namespace: HubNamespaceOption = None,
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
        "--report", metavar="FILE.json",
        help="Write the results as JSON (a report imrseg wrote there is replaced; any other file is refused).")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Neither read nor write the CLIP-CAM disk cache.")] = False,
) -> None:
    """Evaluate on PASCAL-5i or COCO-20i as the authors' test script does.

    Same episodes, metrics and resolution; an interrupted run resumes when
    started again with the same arguments (one such run at a time: a second is
    refused while the first runs; runs of other arguments go on side by side).
    Without --weights each fold uses its own registry checkpoint; with it, every
    fold uses those weights."""
    from rich.console import Console

    from ..distributed import current_shard
    from ..evaluation import run_benchmark

    settings = BenchmarkSettings(
        benchmark=benchmark.value, data_root=data_root, fold=fold, splits=splits, shots=shots, episodes=episodes,
        seed=seed, steps=steps, weights=weights, clip_weights=clip_weights, hub_namespace=hub_namespace,
        backbone=backbone.value, method=method.value, zero_shot=zero_shot, original_size=original_size,
        device=device, batch_size=batch_size, report=report, no_cache=no_cache)
    shard = current_shard()
    console = Console(quiet=not shard.is_main)
    results = run_benchmark(settings, _Terminal(console, shard.is_main))
    if len(results) > 1:
        _print_row(console, results)
    if report is not None and shard.is_main:
        typer.echo(f"report: {report}", err=True)


class _Terminal(BenchmarkProgress):
    """Each fold's progress bar on stderr and its table on `console` (rank 0's);
    warnings and what is saved or resumed on stderr."""

    def __init__(self, console, is_main: bool):
        self.console, self.is_main = console, is_main

    def warn(self, message: str) -> None:
        typer.echo(f"imrseg: warning: {message}", err=True)

    @contextlib.contextmanager
    def fold(self, settings):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        label = f"{settings.benchmark} fold {settings.fold}"
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("mIoU {task.fields[miou]:5.1f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), disable=not self.is_main) as progress:
            task = progress.add_task(label, total=settings.episodes, miou=0.0)

            def on_episode(done: int, total: int, meter) -> None:
                progress.update(task, completed=done, miou=meter.miou)

            yield on_episode

    def interrupted(self, fold: int | None, saved: int) -> None:
        typer.echo(f"imrseg: {saved} episodes of fold {fold} are saved; run the same command again to continue",
                   err=True)

    def finished(self, result) -> None:
        if result.resumed:
            typer.echo(f"imrseg: {result.resumed} of {result.episodes} episodes taken from the saved state "
                       f"{result.state_path}", err=True)
        _print_fold(self.console, result, result.extra["paper_miou"])


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


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
