"""`imrseg train`: the paper's training on PASCAL-5i, COCO-20i or a folder of one's
own classes; running the same command again continues it. Options to a
`TrainSettings`, progress on stderr, the best epoch at the end; the run itself is
`imrseg.training.train`. torch and the models are imported inside the command."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import EXIT_INTERRUPTED, app
from .options import (Backbone, ClipWeightsOption, TrainBenchmark, DeviceOption, HubNamespaceOption, Precision, PrecisionOption,
                      QuietOption)


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
        "--out", "-o", metavar="RUN", help="Run folder: run.json (what the run is), last/ (to continue), best/ "
                                           "(Hub layout), metrics.jsonl, curves.png. The same command again "
                                           "continues the run in it; other data or settings are refused.")],
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
    recompute: Annotated[bool, typer.Option(
        "--recompute/--no-recompute", help="Recompute the 4D correlations and their convolutions in the backward "
                                           "pass instead of keeping them: far less memory for about one more "
                                           "forward of the 4D-convolution learner per step; the same step either "
                                           "way, so a run may change it when continued.")] = True,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam's learning rate (default: 4e-4 pascal, "
                                                             "2e-4 coco).")] = None,
    val_episodes: Annotated[int, typer.Option("--val-episodes", help="Validation episodes after each epoch.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the episode draws and of a fresh network.")] = 0,
    clip_weights: ClipWeightsOption = None,
    hub_namespace: HubNamespaceOption = None,
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
    from ..distributed import current_shard
    from ..training import TrainingInterrupted, TrainSettings, train
    from ..training.checkpoints import RunFolder

    settings = TrainSettings(
        benchmark=benchmark.value, fold=fold, backbone=backbone.value if backbone else None, steps=steps,
        epochs=epochs, batch_size=batch_size, lr=lr, val_episodes=val_episodes, seed=seed,
        precision=precision.value, micro_batch=micro_batch, recompute=recompute, init=init, data_root=data_root,
        out=out, splits=splits,
        val_classes=tuple(n.strip() for v in val_classes or [] for n in v.split(",") if n.strip()),
        val_share=val_share, backbone_weights=backbone_weights, clip_weights=clip_weights,
        hub_namespace=hub_namespace, device=device, workers=workers)
    is_main = current_shard().is_main
    try:
        state = train(settings, _Bars(quiet or not is_main))
    except TrainingInterrupted as exc:
        if is_main:
            typer.echo(f"imrseg: interrupted; {out / 'last'} holds the run up to {exc.saved}: run the same command "
                       "again to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if is_main and not quiet and state.best is not None:
        best = state.best
        typer.echo(f"best: epoch {best['epoch']}, validation mIoU {best['val_miou']:.1f}, FB-IoU "
                   f"{best['val_fb_iou']:.1f} -> {RunFolder(out).best} (use it as --weights)", err=True)


class _Bars:
    """A `training.Reporter` as progress bars on stderr: CAMs, each epoch's steps with
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
