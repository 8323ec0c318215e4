"""The loop over a run's queries: decode in the background, predict in batches,
write every output atomically, log one row per query, and stop cleanly on Ctrl-C.

A query whose outputs are all present is skipped, so re-running a command after an
interruption finishes the rest; nothing finished is ever rewritten or lost."""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import outputs
from ..durable import ResultsLog
from ..errors import ImrsegError, InputError
from ..images import LoadedImage, load_image
from .results import Outcome, Summary

PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class OutputOptions:
    save_prob: bool = False
    save_cam: bool = False
    save_steps: bool = False

    def suffixes(self, steps: int) -> list[str]:
        """Every file a finished query has, the mask last (it is written last)."""
        out = [outputs.OVERLAY_SUFFIX]
        out += [outputs.PROB_SUFFIX] if self.save_prob else []
        out += [outputs.CAM_SUFFIX] if self.save_cam else []
        out += [outputs.step_suffix(t) for t in range(1, steps + 1)] if self.save_steps else []
        return out + [outputs.MASK_SUFFIX]


class StopOnInterrupt:
    """First Ctrl-C: finish the image at hand, then stop. Second: stop at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def write_outputs(stem: Path, loaded: LoadedImage, prediction, options: OutputOptions) -> None:
    if options.save_steps:
        for t, mask in enumerate(prediction.step_masks, start=1):
            outputs.save_mask_png(outputs.output_path(stem, outputs.step_suffix(t)), mask)
    if options.save_cam:
        outputs.save_heatmap_png(outputs.output_path(stem, outputs.CAM_SUFFIX), prediction.cam, loaded.size)
    if options.save_prob:
        outputs.save_gray_png(outputs.output_path(stem, outputs.PROB_SUFFIX), prediction.prob)
    outputs.save_overlay_jpg(outputs.output_path(stem, outputs.OVERLAY_SUFFIX), loaded.image, prediction.mask)
    outputs.save_mask_png(outputs.output_path(stem, outputs.MASK_SUFFIX), prediction.mask)


def _decoded(paths: Sequence[Path], max_pixels: int | None, lookahead: int) -> Iterator:
    """(path, LoadedImage or InputError) in order, decoded ahead on a thread pool."""
    def load(path):
        try:
            return load_image(path, max_pixels=max_pixels)
        except InputError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="imrseg-decode") as pool:
        pending = [pool.submit(load, p) for p in paths[:lookahead]]
        for i, path in enumerate(paths):
            result = pending[i].result()
            if i + lookahead < len(paths):
                pending.append(pool.submit(load, paths[i + lookahead]))
            pending[i] = None  # drop the decoded image once handed over
            yield path, result


def _is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def predict_with_backoff(predict: Callable, images: list, sizes: list, device_name: str) -> list:
    """Run a batch; on GPU out-of-memory retry in halves down to single images."""
    try:
        return predict(images, sizes)
    except (RuntimeError, MemoryError) as exc:
        if not _is_out_of_memory(exc):
            raise
        _free_cached_memory()
        if len(images) == 1:
            raise ImrsegError(f"out of memory on {device_name} even for one image; "
                              "try --device cpu or a smaller --batch-size") from None
        half = len(images) // 2
        return (predict_with_backoff(predict, images[:half], sizes[:half], device_name)
                + predict_with_backoff(predict, images[half:], sizes[half:], device_name))


def _free_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def segment_queries(predict: Callable, plan: dict[Path, Path], *, steps: int, options: OutputOptions,
                   batch_size: int, overwrite: bool, max_pixels: int | None, log: ResultsLog,
                   device_name: str = "cpu", on_outcome: Callable[[Outcome], None] = lambda o: None,
                   stop: StopOnInterrupt | None = None) -> Summary:
    """Segment every query in `plan` (query path -> output stem).

    `predict(images, sizes)` returns one Prediction per loaded image. Finished
    queries (all outputs present) are skipped unless `overwrite`."""
    summary = Summary()
    suffixes = options.suffixes(steps)

    def record(outcome: Outcome) -> None:
        log.write(outcome.row(steps))
        summary.add(outcome)
        on_outcome(outcome)

    todo = []
    for query, stem in plan.items():
        if not overwrite and outputs.completed_outputs(stem, suffixes):
            record(Outcome(query, "skipped", mask=outputs.output_path(stem, outputs.MASK_SUFFIX)))
        else:
            todo.append(query)

    batch: list[tuple[Path, LoadedImage]] = []

    def flush() -> None:
        if not batch:
            return
        started = time.perf_counter()
        predictions = predict_with_backoff(predict, [loaded.image for _, loaded in batch],
                                           [loaded.size for _, loaded in batch], device_name)
        each = (time.perf_counter() - started) / len(batch)
        for (query, loaded), prediction in zip(batch, predictions):
            stem = plan[query]
            try:
                write_outputs(stem, loaded, prediction, options)
            except ImrsegError as exc:
                record(Outcome(query, "failed", error=str(exc)))
                continue
            record(Outcome(query, "done", outputs.output_path(stem, outputs.MASK_SUFFIX),
                           prediction.foreground_fraction, round(each, 4)))
        batch.clear()

    for query, loaded in _decoded(todo, max_pixels, lookahead=PREFETCH_BATCHES * batch_size):
        if stop is not None and stop.requested:
            summary.interrupted = True
            break
        if isinstance(loaded, InputError):
            record(Outcome(query, "failed", error=str(loaded)))
            continue
        batch.append((query, loaded))
        if len(batch) >= batch_size:
            flush()
    else:
        flush()
    # On interrupt, images decoded but not yet predicted are left for the next run.
    return summary
