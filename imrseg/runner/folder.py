"""A folder run from start to end, ordered so that everything that can go wrong
without a model does so before one loads:

1. check the arguments; open the output folder through the guard (`OwnedFolder`: its
   lock, one run at a time; the files imrseg wrote there, which it may replace; no
   link below it followed) and fold in the rows of a distributed run that was killed;
2. read results.jsonl (`History`): the folder's fingerprint, the finished queries,
   and the files imrseg wrote there, which (with the manifest's) are never read back
   as inputs, while any other image in the folder is one;
3. find and check the supports and queries, fingerprint the run (hashing the weight
   files, not loading them) and stop if the folder holds another run's outputs;
4. plan the outputs (never over an input), keep what is finished, stop if one would
   replace a file imrseg did not write or lies behind a link, remove the temporary
   files a killed run left;
5. only if something is left to do, build the predictor; write the header, segment
   in batches, and merge a distributed run's ranks.
The commands only parse options and show progress."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

from .. import __version__
from ..distributed import Shard, barrier, current_shard, start, stop
from ..arguments import type_error
from ..errors import InputError, Note, param, show_path
from ..guard import Fields, OwnedFolder
from ..images import check_drawn_mask, find_images, load_image, load_mask
from ..outputs.naming import file_tags, plan_outputs
from ..interrupts import StopOnInterrupt
from .batches import Job, segment_queries
from .identity import check_loaded, differences, fingerprint_of, run_identity
from ..outputs.results import (RESULTS_FILE, History, Outcome, Summary, merge_ranks, query_file, rank_log,
                               relative_outputs)
from .settings import ClassSpec, RunSettings

# progress(total) opens a context that yields the callback each finished query is reported to.
ProgressFactory = Callable[[int], ContextManager[Callable[[Outcome], None]]]
# Header fields that come from the loaded model; a run that loads none repeats its predecessor's.
MODEL_FIELDS = ("weights", "clip", "precision", "steps")


def _no_progress(_total: int):
    return contextlib.nullcontext(lambda outcome: None)


def load_supports(spec: ClassSpec, files: list[Path], max_pixels: int | None):
    """A class's supports (every failure is fatal: they define the task) and their drawn masks."""
    masks = spec.support_masks
    if masks and len(masks) != len(files):
        raise InputError(f"{spec.label!r}: {len(files)} support images but {len(masks)} drawn masks; "
                         "give one mask per support, in the same order")
    images = [load_image(p, max_pixels=max_pixels, draft_size=0) for p in files]
    drawn = None
    if masks:
        drawn = []
        for image, mask_path in zip(images, masks):
            mask = check_drawn_mask(show_path(mask_path), load_mask(mask_path, max_pixels=max_pixels), image.size,
                                    show_path(image.path))
            # Legal, but likely a mistake (an inverted or blank drawing): the support then shows
            # the network no object, or no background.
            if not mask.any() or mask.all():
                what = "no pixel as object" if not mask.any() else "every pixel as object"
                warnings.warn(Note(f"{show_path(mask_path)}: the drawn mask marks {what} (object = nonzero "
                                   "and not transparent)"), stacklevel=2)
            drawn.append(mask)
    return [image.image for image in images], drawn


def _check_label_fits(label: str, template: str) -> None:
    import open_clip

    from ..clip.cam import check_label
    from ..hub import DEFAULT_CLIP_MODEL

    check_label(open_clip.get_tokenizer(DEFAULT_CLIP_MODEL), template, label)


@dataclass
class RunPlan:
    """A run worked out before any model loads."""

    supports: list[list[Path]]  # each class's support files found
    loaded_supports: dict  # label -> load_supports' (images, drawn masks); empty for zero-shot
    identity: dict
    fingerprint: str
    previous: Fields | None  # the folder's latest header with this fingerprint
    jobs: list[Job]


def _open(settings: RunSettings, shard: Shard) -> OwnedFolder:
    """The output folder through the guard: rank 0 holds its lock for every rank."""
    return OwnedFolder(settings.out, parameter="out", overwrite=settings.overwrite,
                       known=History(settings.out).written, lock=shard.is_main)


def _plan(settings: RunSettings, folder: OwnedFolder) -> RunPlan:
    out = settings.out
    history = History(out)
    # `out` may be, or lie inside, an input folder: what imrseg wrote there (by the folder's
    # manifest and results.jsonl) is never an input; the user's own images there are.
    exclude = [folder.root / name for name in folder.owned]
    supports = [[] if settings.zero_shot else [image for image, _ in find_images(spec.supports, exclude=exclude)]
                for spec in settings.classes]
    # load_supports checks them (and their masks) now, before the weights are even read.
    loaded = {spec.label: load_supports(spec, files, settings.max_pixels)
              for spec, files in zip(settings.classes, supports) if files}
    queries = find_images(settings.queries, exclude=exclude)
    identity = run_identity(settings, supports)
    fingerprint = fingerprint_of(identity)
    if history.headers and history.fingerprint != fingerprint and not settings.overwrite:
        before = history.headers[-1].fields("identity", optional=True)
        what = (f"other {', '.join(differences(before.row, identity))}" if before
                else "an imrseg that did not record its settings")
        raise InputError(f"{show_path(out)}: holds outputs made with {what}; pass {param('overwrite')} to redo "
                         f"them with these settings, or choose another {param('out')}")
    previous = None if settings.overwrite else history.header(fingerprint)
    # Only a run with this fingerprint can have finished a query, with its steps (the same).
    steps = previous.integer("steps", 1) if previous else settings.steps
    suffixes = settings.outputs.suffixes(steps or 0, settings.labels)  # without step files while steps are unknown
    roots = dict(queries)
    protect = [p for files in supports for p in files] + [p for spec in settings.classes for p in spec.support_masks]
    jobs, names = [], [RESULTS_FILE]
    for query, stem in plan_outputs(queries, out, protect=protect, tags=file_tags(settings.labels)).items():
        file = query_file(query)
        finished = history.finished(query, file, stem, suffixes, out, fingerprint) if previous else None
        jobs.append(Job(query, stem, file, finished, query.relative_to(roots[query]).as_posix()))
        names += relative_outputs(stem, suffixes, out)
    if settings.coco:
        from ..outputs.coco import ANNOTATIONS_FILE

        names.append(ANNOTATIONS_FILE)
    if settings.gallery:
        from ..outputs.gallery import GALLERY_FILE

        names.append(GALLERY_FILE)
    folder.check(names)  # before any model loads: what the batches would claim
    return RunPlan(supports, loaded, identity, fingerprint, previous, jobs)


def _predictor(settings: RunSettings, plan: RunPlan, device):
    """(predictor, predict(prepared, sizes)) for the run (`predictor.prepare` makes the
    prepared queries)."""
    from ..predictor import Predictor

    predictor = Predictor.from_pretrained(
        settings.weights, settings.clip_weights, device=device, precision=settings.precision,
        steps=settings.steps, vocabulary=settings.vocab, template=settings.prompt_template,
        cam_mode=settings.cam_mode, hub_namespace=settings.hub_namespace)
    check_loaded(plan.identity, predictor)
    if settings.zero_shot:
        predictor.set_zero_shot(settings.labels)
    else:
        predictor.set_supports(plan.loaded_supports)
    keep = settings.outputs.kept
    return predictor, lambda prepared, sizes: predictor.predict_classes(prepared, sizes=sizes, keep=keep)


def _header(settings: RunSettings, plan: RunPlan, model: dict, device, shard: Shard) -> dict:
    classes = [{"label": spec.label, "supports": [str(p) for p in files],
                "support_masks": [str(p) for p in spec.support_masks]}
               for spec, files in zip(settings.classes, plan.supports)]
    # A one-class run's header keeps its class at the top level, as before classes could be several.
    one = classes[0] if len(classes) == 1 else {"label": None, "supports": [], "support_masks": []}
    return {"type": "run", "imrseg": __version__, "fingerprint": plan.fingerprint, "identity": plan.identity,
            **one, "classes": classes, "zero_shot": settings.zero_shot, **model, "cam_mode": settings.cam_mode,
            "device": str(device), "rank": shard.rank, "world": shard.world}


def _segment(settings: RunSettings, plan: RunPlan, jobs: list[Job], device, shard: Shard,
             progress: ProgressFactory, folder: OwnedFolder) -> Summary:
    """This process's share of the jobs; the model loads only if one of them is not finished."""
    from ..devices import default_batch_size

    if not jobs:
        return Summary()
    with folder.log(rank_log(shard.rank) if shard.distributed else RESULTS_FILE) as log:
        # opened first: a log that cannot be written stops the run now
        prepare = None
        if any(job.finished is None for job in jobs):
            predictor, predict = _predictor(settings, plan, device)
            prepare = predictor.prepare
            weights = predictor.weights_info
            model = {"weights": {"spec": weights.spec, "name": weights.name, "sha256": weights.sha256},
                     "clip": predictor.clip_info.model_name, "precision": predictor.precision,
                     "steps": predictor.steps}
        else:
            predict, model = None, {name: plan.previous.raw(name) for name in MODEL_FIELDS}
            model["steps"] = plan.previous.integer("steps", 1)
        log.write(_header(settings, plan, model, device, shard))
        with progress(len(jobs)) as report, StopOnInterrupt() as stopper:
            return segment_queries(
                predict, jobs, folder=folder, steps=model["steps"], options=settings.outputs, labels=settings.labels,
                batch_size=settings.batch_size or default_batch_size(device), max_pixels=settings.max_pixels,
                log=log, device_name=str(device), on_outcome=report, stop=stopper, prepare=prepare)


def run_folder(settings: RunSettings, progress: ProgressFactory = _no_progress) -> Summary:
    """Segment every query of `settings` into `settings.out`; returns the totals
    (on rank 0 of a distributed run, those of every rank)."""
    from ..devices import resolve_device

    if not isinstance(settings, RunSettings):
        raise type_error("settings", settings, "a RunSettings")
    settings.check()
    device = resolve_device(settings.device)
    for label in settings.labels:
        _check_label_fits(label, settings.prompt_template)
    shard = current_shard()
    device = start(shard, device)
    with contextlib.ExitStack() as held:
        if shard.is_main:  # rank 0 holds the folder for every rank, from here to the merge
            folder = held.enter_context(_open(settings, shard))
            merge_ranks(folder)  # rows of a distributed run that was killed
        barrier(shard)
        if not shard.is_main:  # after the merge: every rank knows the same files as imrseg's
            folder = held.enter_context(_open(settings, shard))
        plan = _plan(settings, folder)
        if shard.is_main:  # under the lock, so no live run's temporary file is among them
            folder.clean({".", *(job.stem.parent.relative_to(settings.out).as_posix() for job in plan.jobs)})
        barrier(shard)  # no rank writes before that
        summary = _segment(settings, plan, shard.take(plan.jobs), device, shard, progress, folder)
        barrier(shard)
        if shard.distributed and shard.is_main:
            interrupted, summary = summary.interrupted, merge_ranks(folder)
            summary.interrupted = interrupted
        if shard.is_main:
            _export(settings, folder)
    stop(shard)
    return summary


def _export(settings: RunSettings, folder: OwnedFolder) -> None:
    """What the folder holds now, every run's finished queries included, as annotations
    and as a page; under the folder's lock, so no run changes it meanwhile."""
    if settings.coco:
        from ..outputs.coco import export_coco

        export_coco(folder, settings.min_area, settings.coco_polygons)
    if settings.gallery:
        from ..outputs.gallery import build_gallery

        build_gallery(folder)
