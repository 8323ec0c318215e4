"""The loop over a run's queries: decode and prepare (the predictor's resizes) in the
background on a pool of threads, predict in batches,
write every output atomically through the folder's guard (a batch's files claimed
with one manifest write, then named in a "writing" row, before any is written; the
files written in parallel, then the batch's rows, one per query in query order,
appended with one fsync), and stop cleanly on Ctrl-C.

A query an earlier run finished (as results.jsonl proves, see `History.finished`)
is skipped, so re-running a command after an interruption finishes the rest;
nothing finished is ever rewritten or lost."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..devices import free_cached_memory, is_out_of_memory
from ..durable import ResultsLog
from ..errors import ImrsegError, InputError, param
from ..guard import OwnedFolder
from ..images import LoadedImage, load_image
from ..interrupts import StopOnInterrupt
from ..outputs import naming as outputs
from ..outputs.results import Outcome, QueryRow, Summary, relative_outputs
from ..prefetch import ahead
from .writing import OutputOptions, write_outputs

PREFETCH_BATCHES = 2
# Threads decoding and resizing queries ahead, and writing a batch's files: decoding,
# resizing, encoding and fsync release the GIL, so they overlap, up to one per core.
DECODERS = WRITERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class Job:
    """One query of a run: its output stem, its size and mtime when planned, and the
    row of an earlier run that finished it (then it is skipped)."""

    query: Path
    stem: Path
    file: dict | None
    finished: QueryRow | None = None
    file_name: str | None = None  # the query relative to the folder it was found in


def _decoded(paths: Sequence[Path], max_pixels: int | None, lookahead: int, prepare: Callable | None) -> Iterator:
    """(path, (LoadedImage, prepare(its image), or the image without `prepare`) or
    InputError) in order, made ahead on a thread pool."""
    def load(path):
        try:
            loaded = load_image(path, max_pixels=max_pixels)
        except InputError as exc:
            return exc
        return loaded, prepare(loaded.image) if prepare is not None else loaded.image

    with ThreadPoolExecutor(max_workers=DECODERS, thread_name_prefix="imrseg-decode") as pool:
        for path, future in ahead(paths, lambda p: pool.submit(load, p), lookahead):
            yield path, future.result()


def predict_with_backoff(predict: Callable, images: list, sizes: list, device_name: str) -> list:
    """Run a batch; on GPU out-of-memory retry in halves down to single images."""
    try:
        return predict(images, sizes)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        free_cached_memory()
        if len(images) == 1:
            raise ImrsegError(f"out of memory on {device_name} even for one image; "
                              f"try {param('device')} cpu or a smaller {param('batch_size')}") from None
        half = len(images) // 2
        return (predict_with_backoff(predict, images[:half], sizes[:half], device_name)
                + predict_with_backoff(predict, images[half:], sizes[half:], device_name))


def segment_queries(predict: Callable | None, jobs: Sequence[Job], *, folder: OwnedFolder, steps: int,
                    options: OutputOptions, labels: Sequence[str], batch_size: int, max_pixels: int | None,
                    log: ResultsLog, device_name: str = "cpu", prepare: Callable | None = None,
                    on_outcome: Callable[[Outcome], None] = lambda o: None,
                    stop: StopOnInterrupt | None = None, review: str | None = None) -> Summary:
    """Segment every job not yet finished, writing its outputs into `folder` (the
    jobs' stems lie under the folder as it was given); log one row per job, in the
    jobs' order. `predict(prepared, sizes)` returns one ClassPredictions (of `labels`)
    per loaded image, given what `prepare(image)` made of each on the decoding threads
    (without `prepare`, the images themselves; `predict` is None when every job is finished).
    `review`: the word each new row carries (`outputs.results.REVIEWS`; None: none)."""
    summary = Summary()
    out = folder.given
    suffixes = options.suffixes(steps, labels)
    # This batch's jobs in order: (job, LoadedImage, prepared) to predict, or an Outcome already known.
    pending: list = []

    def written(job: Job, loaded: LoadedImage, result, seconds: float, stem: Path) -> Outcome:
        try:  # `stem`: the job's, as the guard's claimed paths give it (no link on the way)
            write_outputs(stem, loaded, result, options, labels)
        except ImrsegError as exc:
            return Outcome(job.query, "failed", error=str(exc), steps=steps, query_file=job.file,
                           file_name=job.file_name)
        classes = {label: {"fraction": result.fractions[label], "score": result[label].score} for label in labels}
        return Outcome(job.query, "done", outputs.output_path(job.stem, outputs.MASK_SUFFIX),
                       result.foreground_fraction, seconds, steps=steps, query_file=job.file,
                       outputs=relative_outputs(job.stem, suffixes, out), file_name=job.file_name,
                       score=result.score, classes=classes, review=review)

    def flush() -> None:
        batch = [item for item in pending if not isinstance(item, Outcome)]
        work = list(pending)
        if batch:
            started = time.perf_counter()
            predictions = iter(predict_with_backoff(predict, [prepared for _, _, prepared in batch],
                                                    [loaded.size for _, loaded, _ in batch], device_name))
            each = round((time.perf_counter() - started) / len(batch), 4)
            names = [f for job, _, _ in batch for f in relative_outputs(job.stem, suffixes, out)]
            masks = folder.claim(names)[len(suffixes) - 1::len(suffixes)]  # each job's mask: its last file
            stems = iter(outputs.stem_of(mask) for mask in masks)
            log.write({"type": "writing", "outputs": names})
            work = [item if isinstance(item, Outcome) else (*item[:2], next(predictions), each, next(stems))
                    for item in pending]
        # Group commit: the batch's files are written (each fsynced) in parallel, then
        # its rows appended with one fsync, so a row still means its files are complete.
        done = list(writers.map(lambda item: item if isinstance(item, Outcome) else written(*item), work))
        log.write_many(outcome.row() for outcome in done)
        for outcome in done:
            summary.add(outcome)
            on_outcome(outcome)
        pending.clear()

    todo = [job.query for job in jobs if job.finished is None]
    images = 0
    with contextlib.closing(_decoded(todo, max_pixels, PREFETCH_BATCHES * batch_size, prepare)) as decoded, \
            ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="imrseg-write") as writers:
        for job in jobs:
            if job.finished is not None:
                pending.append(Outcome.skipped(job.query, outputs.output_path(job.stem, outputs.MASK_SUFFIX),
                                               job.finished))
            elif stop is not None and stop.requested:
                summary.interrupted = True
                break
            else:
                _, made = next(decoded)
                if isinstance(made, InputError):
                    pending.append(Outcome(job.query, "failed", error=str(made), steps=steps, query_file=job.file,
                                           file_name=job.file_name))
                else:
                    pending.append((job, *made))
                    images += 1
            if images in (0, batch_size):
                flush()
                images = 0
        else:
            flush()
    # On interrupt, images decoded but not yet predicted are left for the next run.
    return summary
