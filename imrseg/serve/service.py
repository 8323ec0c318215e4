"""The warm model behind the server: one `Segmenter` owns the `Predictor` and one worker
thread, the only one that touches the model. Requests wait in a bounded queue; the
worker takes whatever arrived within `max_wait_ms` (up to `batch_size` queries) and runs
one forward per support set among them. Support sets are cached by content (a bounded
LRU of `Predictor.support_set`s), the labels' text embeddings by ClipCAM per vocabulary.
A request that fails answers with its own error; the worker goes on with the others."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .. import __version__
from ..errors import InputError, one_line, param
from ..images import LoadedImage, check_drawn_mask, load_image_bytes
from ..predictor import ClassPredictions, Predictor, SupportSet, check_keep
from .limits import Limits


class Busy(Exception):
    """The queue is full (or the server is stopping): try again in `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ClassRequest:
    """One class to segment: `name` is reported back, `prompt` is the text CLIP reads
    (default: the name); `supports` empty means zero-shot (each query is its own
    support); `masks`, one drawn 0/1 (H, W) mask per support (or None: that support's
    CAM), replace the supports' CAMs."""

    name: str
    prompt: str = ""
    supports: tuple[Image.Image, ...] = ()
    masks: tuple[np.ndarray | None, ...] | None = None

    def __post_init__(self):
        if not self.prompt:
            object.__setattr__(self, "prompt", self.name)


def decode_image(data: bytes, field: str, limits: Limits, full_size: bool = False) -> LoadedImage:
    """An uploaded image, decoded as `imrseg segment` reads a file (EXIF orientation,
    alpha on white, the pixel limit checked before decoding); `field` names it in errors.
    Queries are drawn at the usual reduced size (`full_size` False), supports at full size."""
    return load_image_bytes(data, field, max_pixels=limits.max_pixels, draft_size=0 if full_size else None)


def support_key(classes: Sequence[ClassRequest]) -> str:
    """What a support set depends on: every class's prompt, supports' pixels and masks,
    in order (each class's CAM is computed against the others)."""
    digest = hashlib.blake2b(digest_size=20)
    for c in classes:
        digest.update(c.prompt.encode() + b"\0")
        for image in c.supports:
            digest.update(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
        for mask in c.masks or ():
            if mask is None:  # that support keeps its CAM
                digest.update(b"cam")
                continue
            digest.update(f"mask{mask.shape}".encode())
            digest.update(np.ascontiguousarray(mask, dtype=bool).tobytes())
        digest.update(b"\1")
    return digest.hexdigest()


@dataclass(eq=False)
class _Job:
    queries: list[tuple[Image.Image, tuple[int, int]]]
    classes: tuple[ClassRequest, ...]
    key: str
    steps: int
    keep: frozenset[str]
    future: Future = field(default_factory=Future)


class Segmenter:
    """Batches requests for one warm `Predictor` on one worker thread.

    batch_size: most queries per forward; max_wait_ms: how long the worker waits for more
    requests to join a batch; max_queue: queries waiting at most (more: `Busy`);
    timeout_s: a request's time limit (`TimeoutError`); max_steps: most refinement steps
    a request may ask for; cache_size: support sets kept; warm_up: run one zero-shot
    forward of a blank picture first, so the first request does not pay for the first
    forward's set-up (on a CPU several times a later forward's time)."""

    def __init__(self, predictor: Predictor, batch_size: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64,
                 timeout_s: float = 90.0, max_steps: int = 10, cache_size: int = 16, warm_up: bool = False):
        for name, value in (("batch_size", batch_size), ("max_queue", max_queue), ("timeout_s", timeout_s),
                            ("max_steps", max_steps), ("cache_size", cache_size)):
            if not value > 0:
                raise InputError(f"{param(name)} must be more than 0, not {value}")
        self.predictor = predictor
        self.batch_size, self.max_wait = batch_size, max(max_wait_ms, 0) / 1000
        self.max_queue, self.timeout_s, self.max_steps, self.cache_size = max_queue, timeout_s, max_steps, cache_size
        self.forwards = 0  # forwards the worker has run (a batch of several requests is one)
        self.requests = 0  # requests answered
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting = 0  # queries in the queue
        self._lock = threading.Lock()
        self._closed = False
        self._seconds_per_query = 0.0  # running mean, for Retry-After
        self._cache: OrderedDict[str, SupportSet] = OrderedDict()
        self.warm_up = warm_up
        self._worker = threading.Thread(target=self._work, name="imrseg-serve", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- callers
    async def segment(self, images: Sequence[Image.Image | LoadedImage], classes: Sequence[ClassRequest], *,
                      steps: int | None = None, keep: Sequence[str] = ()) -> list[ClassPredictions]:
        """Segment `images` for every class of `classes`: one `ClassPredictions` per image,
        keyed by the classes' names in their order. A `LoadedImage`'s masks come at its full
        size. `keep`: which of HOST_RESULTS to bring back besides the mask. Raises
        InputError naming the field, `Busy`, or TimeoutError after `timeout_s`."""
        job = self._submit(images, classes, steps, keep)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), self.timeout_s)
        except asyncio.TimeoutError:
            job.future.cancel()
            raise TimeoutError(f"no answer within {self.timeout_s:g} s") from None

    def segment_sync(self, images: Sequence[Image.Image | LoadedImage], classes: Sequence[ClassRequest], *,
                     steps: int | None = None, keep: Sequence[str] = ()) -> list[ClassPredictions]:
        """`segment` for callers without an event loop (blocks)."""
        job = self._submit(images, classes, steps, keep)
        try:
            return job.future.result(self.timeout_s)
        except TimeoutError:
            job.future.cancel()
            raise TimeoutError(f"no answer within {self.timeout_s:g} s") from None

    def info(self) -> dict:
        """What the server runs (weights, CLIP, device, precision, steps, version) and
        how much it has done (forwards run, requests answered)."""
        p = self.predictor
        weights = p.weights_info.to_dict() if p.weights_info is not None else None
        clip = p.clip_info.to_dict() if p.clip_info is not None else None
        sha = (weights or {}).get("sha256") or ""
        return {"version": __version__, "weights": weights, "clip": clip, "device": str(p.device),
                "precision": p.precision, "steps": p.steps, "batch_size": self.batch_size,
                "forwards": self.forwards, "requests": self.requests,
                "model_version": f"imrseg-{__version__}" + (f"-{sha[:12]}" if sha else "")}

    @property
    def waiting(self) -> int:
        """Queries in the queue now."""
        return self._waiting

    def close(self) -> None:
        """Refuse new requests, finish those the worker has taken, refuse the rest."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._worker.join()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(Busy("the server is stopping", retry_after=1))

    # ---------------------------------------------------------------- checks
    def _submit(self, images, classes, steps, keep) -> _Job:
        job = self._job(images, classes, steps, keep)
        with self._lock:
            if self._closed:
                raise Busy("the server is stopping", retry_after=1)
            if self._waiting + len(job.queries) > self.max_queue:
                batches = math.ceil((self._waiting + len(job.queries)) / self.batch_size)
                wait = max(1, math.ceil(batches * self.batch_size * self._seconds_per_query))
                raise Busy(f"{self._waiting} queries are waiting, the most is {self.max_queue}", retry_after=wait)
            self._waiting += len(job.queries)
        self._queue.put(job)
        return job

    def _job(self, images, classes, steps, keep) -> _Job:
        if not images:
            raise InputError(f"{param('images')}: give at least one query image")
        if not classes:
            raise InputError(f"{param('classes')}: give at least one class")
        names = [c.name for c in classes]
        prompts = [c.prompt for c in classes]
        for what, values in (("name", names), ("prompt", prompts)):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise InputError(f"{param('classes')}: the {what} {twice[0]!r} is given twice")
        for i, c in enumerate(classes):
            if c.masks is not None:
                if len(c.masks) != len(c.supports):
                    raise InputError(f"{param('classes')}[{i}] {c.name!r}: {len(c.supports)} supports "
                                     f"but {len(c.masks)} masks")
                for k, (image, mask) in enumerate(zip(c.supports, c.masks)):
                    if mask is not None:
                            check_drawn_mask(f"{param('classes')}[{i}] {c.name!r} mask {k}", mask, image.size,
                                         f"image {k}")
            if self.predictor.cam is not None:
                self.predictor.cam.check_label(c.prompt)
        keep = check_keep(keep)
        steps = self.predictor.steps if steps is None else steps
        if not 1 <= steps <= self.max_steps:
            raise InputError(f"{param('steps')} must be 1 to {self.max_steps}, not {steps}")
        queries = [(im.image, im.size) if isinstance(im, LoadedImage) else (im, im.size) for im in images]
        return _Job(queries, tuple(classes), support_key(classes), steps, frozenset(keep))

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        if self.warm_up:  # before any request: those that come meanwhile wait in the queue
            blank = Image.new("RGB", (64, 64), (128, 128, 128))
            with contextlib.suppress(Exception):  # a model that cannot run fails each request on its own
                self.predictor.predict_classes([blank], keep=[], supports=self.predictor.support_set({"object": None}))
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stop = self._gather(job)
            with self._lock:
                self._waiting -= sum(len(j.queries) for j in jobs)
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            for group in _groups(live, self.batch_size):
                self._answer(group)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and whatever joins it within max_wait, up to batch_size queries; and
        whether the stop sign came meanwhile."""
        jobs, count = [first], len(first.queries)
        deadline = time.monotonic() + self.max_wait
        while count < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.queries)
        return jobs, False

    def _answer(self, jobs: list[_Job]) -> None:
        """One forward for `jobs` (same support set and steps); if it fails and there were
        several, each again alone, so only the request at fault gets the error."""
        try:
            self._forward(jobs)
        except Exception as exc:
            if len(jobs) > 1:
                for job in jobs:
                    self._answer([job])
            else:
                jobs[0].future.set_exception(exc if isinstance(exc, InputError) else
                                             RuntimeError(f"segmentation failed: {one_line(exc)}"))

    def _forward(self, jobs: list[_Job]) -> None:
        start = time.monotonic()
        head = jobs[0]
        supports = self._support_set(head.classes, head.key)
        keep = set().union(*(j.keep for j in jobs))
        queries = [q for j in jobs for q in j.queries]
        results: list[ClassPredictions] = []
        for i in range(0, len(queries), self.batch_size):
            chunk = queries[i:i + self.batch_size]
            results += self.predictor.predict_classes([im for im, _ in chunk], head.steps, [s for _, s in chunk],
                                                      keep=sorted(keep), supports=supports)
            self.forwards += 1
        elapsed = time.monotonic() - start
        self._seconds_per_query = 0.8 * self._seconds_per_query + 0.2 * elapsed / len(queries) \
            if self._seconds_per_query else elapsed / len(queries)
        for job in jobs:
            mine, results = results[:len(job.queries)], results[len(job.queries):]
            self.requests += 1
            job.future.set_result([_named(r, job) for r in mine])

    def _support_set(self, classes: tuple[ClassRequest, ...], key: str) -> SupportSet:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        made = self.predictor.support_set({c.prompt: (list(c.supports), list(c.masks) if c.masks is not None
                                                      else None) if c.supports else None for c in classes})
        self._cache[key] = made
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return made


def _groups(jobs: list[_Job], batch_size: int) -> list[list[_Job]]:
    """Jobs sharing a support set and steps, in arrival order, at most batch_size queries
    a group (a job larger than that is a group of its own)."""
    groups: list[list[_Job]] = []
    open_groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        group = open_groups.get((job.key, job.steps))
        if group is None or sum(len(j.queries) for j in group) + len(job.queries) > batch_size:
            group = []
            groups.append(group)
            open_groups[(job.key, job.steps)] = group
        group.append(job)
    return groups


def _named(result: ClassPredictions, job: _Job) -> ClassPredictions:
    """The result keyed by the classes' names, with only what the job asked to keep
    (and the probabilities with several classes: they decide where masks overlap)."""
    out = {}
    keep_prob = "prob" in job.keep or len(job.classes) > 1
    for c in job.classes:
        pred = result[c.prompt]
        out[c.name] = replace(pred, prob=pred.prob if keep_prob else None,
                              cam=pred.cam if "cam" in job.keep else None,
                              step_masks=pred.step_masks if "steps" in job.keep else [])
    return ClassPredictions(out)
