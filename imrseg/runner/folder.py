"""A folder run from start to end: find and plan the queries, load the supports,
build the predictor, write the run header, segment in batches, merge the ranks of
a distributed run. The commands only parse options and show progress."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ContextManager

import numpy as np

from .. import __version__
from ..distributed import barrier, current_shard, start, stop
from ..durable import ResultsLog, remove_stale_temporaries
from ..errors import InputError
from ..images import find_images, load_image
from ..outputs import plan_outputs
from .batches import StopOnInterrupt, segment_queries
from .results import RESULTS_FILE, Outcome, Summary, merge_ranks, rank_log
from .settings import RunSettings

# progress(total) opens a context that yields the callback each finished query is reported to.
ProgressFactory = Callable[[int], ContextManager[Callable[[Outcome], None]]]


def _no_progress(_total: int):
    return contextlib.nullcontext(lambda outcome: None)


def load_supports(settings: RunSettings):
    """The supports (every failure is fatal: they define the task) and their drawn masks."""
    files = [image for image, _ in find_images(settings.supports)]
    masks = settings.support_masks
    if masks and len(masks) != len(files):
        raise InputError(f"{len(files)} support images but {len(masks)} --support-mask files; "
                         "give one mask per support, in the same order")
    images = [load_image(p, max_pixels=settings.max_pixels, draft_size=0) for p in files]
    drawn = None
    if masks:
        drawn = []
        for image, mask_path in zip(images, masks):
            mask = load_image(mask_path, max_pixels=settings.max_pixels, draft_size=0)
            if mask.size != image.size:
                raise InputError(f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]} but its support "
                                 f"{image.path} is {image.size[0]}x{image.size[1]}")
            drawn.append(np.asarray(mask.image).max(axis=2) > 0)
    return images, drawn


def _check_label_fits(label: str, template: str) -> None:
    import open_clip

    from ..cam import check_label
    from ..hub import DEFAULT_CLIP_MODEL

    check_label(open_clip.get_tokenizer(DEFAULT_CLIP_MODEL), template, label)


def _header(settings: RunSettings, predictor, supports) -> dict:
    weights, clip = predictor.weights_info, predictor.clip_info
    return {"type": "run", "imrseg": __version__, "label": settings.label,
            "supports": [str(s.path) for s in supports],
            "support_masks": [str(p) for p in settings.support_masks],
            "zero_shot": settings.zero_shot,
            "weights": {"spec": weights.spec, "name": weights.name, "sha256": weights.sha256},
            "clip": clip.model_name, "cam_mode": settings.cam_mode, "device": str(predictor.device),
            "precision": predictor.precision, "steps": predictor.steps}


def run_folder(settings: RunSettings, progress: ProgressFactory = _no_progress) -> Summary:
    """Segment every query of `settings` into `settings.out`; returns the totals
    (on rank 0 of a distributed run, those of every rank)."""
    from ..devices import default_batch_size, resolve_device
    from ..predictor import Predictor

    settings.check()
    device = resolve_device(settings.device)
    _check_label_fits(settings.label, settings.prompt_template)
    out = settings.out
    plan = plan_outputs(find_images(settings.queries, exclude=[out]), out)
    supports, drawn = ([], None) if settings.zero_shot else load_supports(settings)

    shard = current_shard()
    if shard.is_main:
        remove_stale_temporaries(out)
    device = start(shard, device)
    predictor = Predictor.from_pretrained(
        settings.weights, settings.clip_weights, device=device, precision=settings.precision,
        steps=settings.steps, vocabulary=settings.vocab, template=settings.prompt_template,
        cam_mode=settings.cam_mode, hub_namespace=settings.hub_namespace)
    if supports:
        predictor.set_support([s.image for s in supports], settings.label, masks=drawn)
        predict = predictor.predict_batch
    else:
        def predict(images, sizes):
            return predictor.predict_zero_shot(images, settings.label, sizes=sizes)

    mine = {q: plan[q] for q in shard.take(list(plan))}
    log_path = rank_log(out, shard.rank) if shard.distributed else out / RESULTS_FILE
    with progress(len(mine)) as report, StopOnInterrupt() as stopper, ResultsLog(log_path) as log:
        log.write({**_header(settings, predictor, supports), "rank": shard.rank, "world": shard.world})
        summary = segment_queries(
            lambda images, sizes: predict(images, sizes=sizes), mine, steps=predictor.steps,
            options=settings.outputs, batch_size=settings.batch_size or default_batch_size(device),
            overwrite=settings.overwrite, max_pixels=settings.max_pixels, log=log, device_name=str(device),
            on_outcome=report, stop=stopper)
    barrier(shard)
    if shard.distributed and shard.is_main:
        summary = merge_ranks(out, shard.world, summary.interrupted)
    stop(shard)
    return summary

