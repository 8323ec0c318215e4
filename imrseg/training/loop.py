"""The training loop: the authors' train.py (Adam on every parameter outside the
frozen backbone, the loss of Eq. 7 averaged over a batch of 1-shot episodes,
validation after every epoch, the best validation mIoU kept), made resumable
and distributed.

Resumable: `RUN/last/` is saved at the end of an epoch's steps, after its
validation, on Ctrl-C and every half hour; a run started again continues from
the step it saved, with the same episodes (`training_episodes` draws epoch e from
a generator seeded with (seed, e)), so on the CPU an interrupted run ends with
the weights of an uninterrupted one. Only the same run continues: what defines it
(`identity.run_identity`) is checked against the folder's.

A loss that turns NaN or infinite, or weights that do, stop the run with one line
before anything is saved from them: RUN/last keeps the last good state.

Distributed (torchrun): a batch of B episodes is dealt round-robin to the ranks;
each rank's loss is weighted by its share of the batch, and DistributedDataParallel
averages the gradients, so every step is the step of one process on the whole
batch. A rank's share may be split into micro-batches (gradient accumulation,
the same step again), and by default the 4D correlations and learner are
recomputed in the backward pass rather than kept (`TrainSettings.recompute`, the
same step again). Validation is sharded as `imrseg eval` shards it; rank 0
writes.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..devices import autocast, float32_mode, free_cached_memory
from ..distributed import Shard, all_sum
from ..errors import ImrsegError, Note, param, show_path
from ..data.episodes import sample_episodes
from ..evaluation.loop import EvalSettings, evaluate
from ..data.splits import Split
from ..data.training_episodes import training_episodes
from ..hub.card import trained_card
from .checkpoints import RunFolder, TrainState
from .data import EpisodeLoader, precompute_cams
from .identity import run_identity
from .settings import TrainSettings

SAVE_EVERY_S = 1800


class TrainingInterrupted(KeyboardInterrupt):
    """Stopped on request; what was done is in RUN/last (`saved`: at which epoch and step)."""

    def __init__(self, saved: str):
        super().__init__(saved)
        self.saved = saved


@dataclass
class Validation:
    """The test fold's episodes (or the held-out classes'): an `evaluate` split and its data."""

    split: object
    data: object
    batch_size: int = 2

    def cam_pairs(self, episodes: int) -> list[tuple[str, int]]:
        pairs = []
        for e in sample_episodes(self.split, 1, episodes, 0):
            pairs += [(e.query, e.class_id), (e.supports[0], e.class_id)]
        return list(dict.fromkeys(pairs))


class Reporter:
    """What the loop tells its caller (the CLI draws progress bars); does nothing here.
    `train` opens it (`with`) around the training, so a subclass can show it meanwhile."""

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None: ...

    def cams(self, done: int, total: int) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...

    def step(self, loss: float) -> None: ...

    def validation(self, done: int, total: int, miou: float) -> None: ...

    def epoch_end(self, row: dict) -> None: ...


class _Objective(nn.Module):
    """The loss as a module's forward: DistributedDataParallel synchronises what goes
    through its wrapped forward. `recompute`: `IMRHSNet.refine`'s."""

    def __init__(self, net, recompute: bool = True):
        super().__init__()
        self.net, self.recompute = net, recompute

    def forward(self, *batch):
        return self.net.loss(*batch, recompute=self.recompute)


def step_groups(settings: TrainSettings, split: Split, epoch: int, world: int) -> list[list]:
    """Epoch `epoch`'s batches of episodes, one per optimiser step. Under torchrun a
    last batch smaller than the number of ranks is left out (a rank without an
    episode has no forward pass to take part in)."""
    episodes = training_episodes(split, epoch, settings.seed)
    groups = [episodes[i:i + settings.batch_size] for i in range(0, len(episodes), settings.batch_size)]
    return [g for g in groups if len(g) >= world]


def fit(settings: TrainSettings, net, split: Split, loader: EpisodeLoader, validation: Validation,
        run: RunFolder, device, shard: Shard = Shard(), reporter: Reporter = Reporter(),
        stop: Callable[[], bool] = lambda: False, origin: str = "", weights: dict | None = None) -> TrainState:
    """Train `net` up to `settings.epochs` epochs in `run`, continuing what is saved there
    if it is the same run (settings left None take the paper's recipe, and the backbone
    is `net`'s). `weights`: `identity.weights_identity`'s, for the run's identity (else
    `init` counts by its name). `run` is opened here unless the caller holds it."""
    settings = settings.resolved(net.backbone_name)
    # fp32 is IEEE fp32 on every device (TF32 off), the fast modes allow TF32: see `devices`.
    with run.opened(shard.is_main), float32_mode(settings.precision):
        return _fit(settings, net, split, loader, validation, run, torch.device(device), shard, reporter, stop,
                    origin, run_identity(settings, split, validation.split, loader.data, weights))


def _fit(settings: TrainSettings, net, split: Split, loader: EpisodeLoader, validation: Validation,
         run: RunFolder, device: torch.device, shard: Shard, reporter: Reporter, stop: Callable[[], bool],
         origin: str, identity: dict) -> TrainState:
    run.begin(identity)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=settings.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    state = run.resume(identity, net, optimizer, scaler)
    state.origin = state.origin or origin
    if shard.is_main:
        run.record(state.history)  # a run killed after saving last/ and before these
    objective = _Objective(net, settings.recompute)
    if shard.distributed:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)

    if state.epoch < settings.epochs:
        pairs = list(dict.fromkeys(split.cam_pairs() + validation.cam_pairs(settings.val_episodes)))
        if not precompute_cams(loader, pairs, shard, reporter.cams, stop):
            raise TrainingInterrupted("nothing trained yet (the CLIP-CAMs computed so far are cached)")

    def diverged(what: str) -> ImrsegError:
        return ImrsegError(f"{what}: the training diverged; {show_path(run.last)} keeps the run as last saved "
                           f"(try a smaller {param('lr')})")

    def save() -> None:
        # Every rank checks (their weights are the same), so all stop together.
        if not torch.stack([p.detach().isfinite().all() for p in net.trainable_parameters()]).all():
            raise diverged(f"the weights are no longer finite after optimiser step {state.optimizer_steps}")
        if shard.is_main:
            run.save_last(identity, net, optimizer, scaler, state)

    last_save, micro = time.monotonic(), settings.micro_batch
    while state.epoch < settings.epochs:
        groups = step_groups(settings, split, state.epoch, shard.world)
        reporter.epoch_start(state.epoch, settings.epochs, len(groups), state.position)
        started = time.perf_counter() - state.seconds
        todo = groups[state.position:]
        batches = loader.stream([shard.take(g) for g in todo])
        for group in todo:
            batch = next(batches).to(device)
            while True:
                optimizer.zero_grad(set_to_none=True)
                try:
                    loss_sum = _accumulate(objective, batch, micro or len(batch), len(group), scaler, settings, shard)
                    break
                except torch.cuda.OutOfMemoryError:
                    # Alone, a process can redo the step in smaller forward passes (the same
                    # gradients); under torchrun the other ranks are already waiting for it.
                    if shard.distributed or (micro or len(batch)) == 1:
                        raise
                    micro = max(1, (micro or len(batch)) // 2)
                    free_cached_memory()
                    warnings.warn(Note(f"out of GPU memory: continuing with {micro} episodes a forward pass "
                                       f"(the same steps; {param('micro_batch')} {micro} starts so)"))
            batch_loss = all_sum(shard, loss_sum).item() / len(group)
            if not math.isfinite(batch_loss):
                raise diverged(f"the training loss is {batch_loss} at epoch {state.epoch + 1}, step "
                               f"{state.position + 1}")
            scaler.step(optimizer)
            scaler.update()
            state.position += 1
            state.optimizer_steps += 1
            state.loss_sum += batch_loss
            state.seconds = time.perf_counter() - started
            reporter.step(batch_loss)
            # Every rank stops, or saves, at the same step.
            due = time.monotonic() - last_save > SAVE_EVERY_S
            flags = all_sum(shard, torch.tensor([float(stop()), float(due and shard.is_main)], device=device))
            if flags[0] > 0 or flags[1] > 0:
                save()
                last_save = time.monotonic()
                if flags[0] > 0:
                    raise TrainingInterrupted(f"epoch {state.epoch + 1}, step {state.position} of {len(groups)}")
        batches.close()
        if todo:
            save()  # the steps are safe while validation runs

        def on_episode(done: int, total: int, meter) -> None:
            reporter.validation(done, total, meter.miou)
            if stop():
                raise TrainingInterrupted(f"epoch {state.epoch + 1}'s steps; its validation is redone")

        result = evaluate(EvalSettings(settings.benchmark, settings.fold, 1, settings.val_episodes, 0,
                                       settings.steps, "imr", batch_size=validation.batch_size),
                          validation.split, validation.data, net, loader.cams, None, device, on_episode, shard)
        net.train()
        row = {"epoch": state.epoch + 1, "train_loss": state.loss_sum / max(len(groups), 1),
               "val_miou": float(result.miou), "val_fb_iou": float(result.fb_iou), "episodes": result.episodes,
               "seconds": time.perf_counter() - started, "optimizer_steps": state.optimizer_steps}
        if not all(math.isfinite(row[k]) for k in ("train_loss", "val_miou", "val_fb_iou")):
            raise diverged(f"epoch {row['epoch']} ends with loss {row['train_loss']}, validation mIoU "
                           f"{row['val_miou']} and FB-IoU {row['val_fb_iou']}")
        if state.best is None or row["val_miou"] > state.best["val_miou"]:  # as the authors: strictly better
            state.best = row
            if shard.is_main:
                run.save_best(net, lambda sha: trained_card(net, settings, row, state.origin, sha))
        state.history.append(row)
        state.epoch, state.position, state.loss_sum, state.seconds = state.epoch + 1, 0, 0.0, 0.0
        save()
        if shard.is_main:
            run.record(state.history)
        last_save = time.monotonic()
        reporter.epoch_end(row)
    return state


def _accumulate(objective, batch, size: int, batch_size: int, scaler, settings: TrainSettings,
                shard: Shard) -> torch.Tensor:
    """Gradients of one step from a rank's share of the batch, `size` episodes a forward
    pass; returns the share's summed loss. DDP synchronises at the last backward."""
    parts = batch.split(size)
    loss_sum = torch.zeros((), device=batch.query_img.device)
    for i, part in enumerate(parts):
        sync = i == len(parts) - 1 or not shard.distributed
        with contextlib.nullcontext() if sync else objective.no_sync():
            with autocast(batch.query_img.device, settings.precision):
                loss = objective(*part.tensors())
            # The share of the batch's mean loss, times the ranks DDP averages over.
            scaler.scale(loss * (len(part) * shard.world / batch_size)).backward()
        loss_sum += loss.detach().float() * len(part)
    return loss_sum
