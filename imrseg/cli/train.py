"""`imrseg train`: the paper's training on PASCAL-5i, COCO-20i or a folder of one's
own classes; running the same command again continues it. torch and the models
are imported inside the command."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from . import EXIT_INTERRUPTED, app
from .options import (Backbone, ClipWeightsOption, TrainBenchmark, DeviceOption, HubNamespaceOption, Precision, PrecisionOption,
                      QuietOption)


def _positive(value, name: str):
    if value is not None and value < 1:
        raise InputError(f"{name} must be 1 or more, not {value}")
    return value


@app.command("train", epilog="""Examples:

  imrseg train --benchmark pascal --fold 0 --data-root DATA --out runs/pascal-f0

  torchrun --nproc-per-node 4 -m imrseg train --benchmark coco --fold 0 --data-root DATA --out runs/coco-f0

  imrseg train --benchmark folder --data-root my_classes/ --val-classes cup --init runs/pascal-f0/best \\
      --epochs 20 --batch-size 8 --out runs/mine
""")
def train_command(
    benchmark: Annotated[TrainBenchmark, typer.Option(
        "--benchmark", help="pascal (PASCAL-5i), coco (COCO-20i) or folder (one subfolder per class of N.jpg + "
                            "N.png pairs, as FSS-1000).")],
    data_root: Annotated[Path, typer.Option(
        "--data-root", metavar="DIR", help="HSNet's layout (VOC2012/ or COCO2014/), or the folder of classes.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", metavar="RUN", help="Run folder: last/ (to continue), best/ (Hub layout), metrics.jsonl, "
                                           "curves.png. The same command again continues the run in it.")],
    fold: Annotated[Optional[int], typer.Option(
        "--fold", min=0, max=3, help="Test fold (pascal, coco): trained on the other classes, validated on these.")]
    = None,
    splits: Annotated[Optional[Path], typer.Option(
        "--splits", metavar="DIR", help="HSNet's data/splits folder; default: the official lists, downloaded once "
                                        "(pinned by sha256).")] = None,
    val_classes: Annotated[Optional[list[str]], typer.Option(
        "--val-classes", metavar="NAME", help="folder: a class held out for validation (repeatable, or "
                                              "comma-separated).")] = None,
    val_share: Annotated[Optional[float], typer.Option(
        "--val-share", help="folder: the share of classes held out, picked with seed 0 (default 0.2).")] = None,
    backbone: Annotated[Optional[Backbone], typer.Option(
        "--backbone", help="resnet50 or vgg16 (default: --init's, else resnet50).")] = None,
    init: Annotated[Optional[str], typer.Option(
        "--init", metavar="WEIGHTS", help="Fine-tune these weights (any --weights spec: a registry name, a Hub repo, "
                                          "a run's best/, an authors' best_model.pt); the backbone comes with them.")]
    = None,
    backbone_weights: Annotated[Optional[Path], typer.Option(
        "--backbone-weights", metavar="PATH", help="ImageNet backbone weights without --init (default: torchvision's "
                                                   "IMAGENET1K_V1, downloaded once).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", "-n", help="Refinement steps (default: 2 for pascal and folder, 3 for coco).")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", help="Epochs in all (default 400, the authors'); a larger number continues a finished run.")]
    = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", "-b", help="Episodes per optimiser step over all GPUs (default: 40 pascal, 20 coco).")] = None,
    micro_batch: Annotated[Optional[int], typer.Option(
        "--micro-batch", help="Episodes per forward pass on one GPU; smaller than its share of --batch-size "
                              "accumulates gradients (the same step, less memory).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam's learning rate (default: 4e-4 pascal, "
                                                             "2e-4 coco).")] = None,
    val_episodes: Annotated[int, typer.Option("--val-episodes", help="Validation episodes after each epoch.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the episode draws and of a fresh network.")] = 0,
    clip_weights: ClipWeightsOption = None,
    namespace: HubNamespaceOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.fp32,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Image-decoding threads (default: up to 8).")]
    = None,
    quiet: QuietOption = False,
) -> None:
    """Train IMR-HSNet as the authors do: Adam, the loss of every refinement step,
    validation mIoU after every epoch (exactly `imrseg eval`'s episodes and metric),
    the best epoch kept in RUN/best. Ctrl-C saves RUN/last and exits 130; the same
    command again continues from there."""
    a = dict(locals())
    for value, name in ((steps, "--steps"), (epochs, "--epochs"), (batch_size, "--batch-size"),
                        (micro_batch, "--micro-batch"), (val_episodes, "--val-episodes"), (workers, "--workers")):
        _positive(value, name)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; --out names the run folder")
    a.update(zip(("data", "split", "val_split", "vocabulary", "class_names"),
                 _open_data(benchmark.value, fold, data_root, splits, val_classes, val_share)))
    from ..devices import check_precision, default_batch_size, resolve_device
    from ..distributed import current_shard, start, stop
    from ..durable import FolderLock

    shard = current_shard()
    torch_device = start(shard, resolve_device(device))
    check_precision(precision.value, torch_device)
    # Rank 0 writes the run folder, and keeps other runs out of it meanwhile.
    with FolderLock(out) if shard.is_main else contextlib.nullcontext():
        _train(a, shard, torch_device, default_batch_size(torch_device))
    stop(shard)


def _open_data(benchmark: str, fold: int | None, data_root: Path, splits: Path | None, val_classes, val_share):
    """(data, training split, validation split, CLIP vocabulary, validation class names)."""
    if benchmark == "folder":
        if fold is not None:
            raise InputError("--fold is for pascal and coco; a folder's validation classes are --val-classes "
                             "or --val-share")
        from ..clip.vocabulary import folder_vocabulary
        from ..data.folder import open_folder

        names = [n.strip() for v in val_classes or [] for n in v.split(",") if n.strip()]
        data, split, val = open_folder(data_root, names or None, val_share)
        return data, split, val, folder_vocabulary(data.class_names), [data.class_names[c] for c in val.class_ids]
    if fold is None:
        raise InputError(f"--fold is needed for {benchmark}: 0, 1, 2 or 3 (the test fold)")
    if val_classes or val_share is not None:
        raise InputError("--val-classes and --val-share are for --benchmark folder; pascal and coco validate on "
                         "the test fold")
    from ..data.classes import BENCHMARK_CLASSES, fold_class_names
    from ..data.datasets import BenchmarkData
    from ..data.splits import load_split
    from ..data.training_episodes import load_training_split

    data = BenchmarkData.open(benchmark, data_root)
    split, val = load_training_split(benchmark, fold, splits), load_split(benchmark, fold, splits)
    if not (split.official and val.official):
        typer.echo(f"imrseg: note: the split lists are not HSNet's official {benchmark} fold {fold} lists, so the "
                   "episodes differ from the authors'", err=True)
    return data, split, val, BENCHMARK_CLASSES[benchmark], fold_class_names(benchmark, fold)


def _train(a: dict, shard, device, eval_batch: int) -> None:
    from ..clip.cam import ClipCAM
    from ..durable import file_sha256
    from ..clip.cache import CamSource
    from ..hub import resolve_clip
    from ..models import IMRHSNet
    from ..paths import cache_root
    from ..interrupts import StopOnInterrupt
    from ..training.checkpoints import RunFolder
    from ..training.data import EpisodeLoader
    from ..training.loop import TrainingInterrupted, Validation, fit
    from ..training.model import initial_model
    from ..training.settings import RECIPES, TrainSettings

    benchmark, out = a["benchmark"].value, a["out"]
    backbone = a["backbone"].value if a["backbone"] else None
    steps = a["steps"] or RECIPES[benchmark]["steps"]
    run = RunFolder(out)
    if shard.is_main:
        run.clean()
    saved = run.saved_backbone()
    if saved is not None:
        if backbone is not None and backbone != saved:
            raise InputError(f"{out}: a {saved} run; --backbone {backbone} cannot continue it")
        net, origin = IMRHSNet(saved, benchmark, a["fold"], steps, a["class_names"]), ""
    else:
        net, origin = initial_model(backbone, benchmark, a["fold"], steps, a["class_names"], a["init"],
                                    a["backbone_weights"], a["seed"], a["namespace"])
    settings = TrainSettings.paper(
        benchmark, a["fold"], net.backbone_name, steps=steps, epochs=a["epochs"], batch_size=a["batch_size"],
        lr=a["lr"], val_episodes=a["val_episodes"], seed=a["seed"], precision=a["precision"].value,
        micro_batch=a["micro_batch"], init=a["init"] or "imagenet")
    if settings.batch_size < shard.world:
        raise InputError(f"--batch-size {settings.batch_size} is smaller than the {shard.world} processes")
    clip_model, tokenizer, clip_info = resolve_clip(a["clip_weights"], device=device)
    cam = ClipCAM(clip_model, tokenizer, mode="official", device=device)
    cams = CamSource(cam, a["vocabulary"], f"{clip_info.model_name}:{file_sha256(clip_info.path)}", cache_root())
    loader = EpisodeLoader(a["data"], benchmark, cams, a["workers"])
    validation = Validation(a["val_split"], a["data"], eval_batch)
    reporter = _Bars(a["quiet"] or not shard.is_main)
    try:
        with reporter, StopOnInterrupt() as stopper:
            state = fit(settings, net, a["split"], loader, validation, run, device, shard, reporter,
                        lambda: stopper.requested, origin)
    except TrainingInterrupted as exc:
        if shard.is_main:
            typer.echo(f"imrseg: interrupted; {out / 'last'} holds the run up to {exc.saved}: run the same command "
                       "again to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if shard.is_main and not a["quiet"] and state.best is not None:
        best = state.best
        typer.echo(f"best: epoch {best['epoch']}, validation mIoU {best['val_miou']:.1f}, FB-IoU "
                   f"{best['val_fb_iou']:.1f} -> {run.best} (use it as --weights)", err=True)


class _Bars:
    """Progress bars on stderr for the loop's reports: CAMs, each epoch's steps with
    the loss and the speed, validation; one line per finished epoch."""

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), disable=quiet)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def _task(self, description: str, total: int, done: int = 0):
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, completed=done, status="")

    def cams(self, done: int, total: int) -> None:
        if self.task is None or self.progress.tasks[-1].description != "CLIP-CAMs":
            self._task("CLIP-CAMs", total)
        self.progress.update(self.task, completed=done)

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self._task(f"epoch {epoch + 1}/{epochs}", steps, done)

    def step(self, loss: float) -> None:
        self.progress.update(self.task, advance=1)
        speed = self.progress.tasks[-1].speed
        self.progress.update(self.task, status=f"loss {loss:.4f}" + (f"  {speed:.2f} it/s" if speed else ""))

    def validation(self, done: int, total: int, miou: float) -> None:
        if self.progress.tasks[-1].description != "validation":
            self._task("validation", total)
        self.progress.update(self.task, completed=done, status=f"mIoU {miou:.1f}")

    def epoch_end(self, row: dict) -> None:
        if not self.quiet:
            self.progress.console.print(
                f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, validation mIoU {row['val_miou']:.1f}, "
                f"FB-IoU {row['val_fb_iou']:.1f}, {row['seconds']:.0f} s", highlight=False)
