"""`Predictor`: set the supports once, then segment any number of queries, for one
class or several at a time.

Everything about the supports (backbone features, CAMs) and the labels' text
embeddings is computed once in `set_supports`; `predict_classes` then encodes each
query once, and runs CLIP's image forward once, for every class, support and
refinement step: only the refinement itself is per class. In each class's CLIP-CAM
the other classes asked for are among its competitors, so two classes do not
light up the same object. `Predictor.from_pretrained` goes from weight specs to a
ready predictor in one line.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from .arguments import check_count, check_sequence, check_text, type_error
from .devices import autocast, check_precision, device_of, float32_mode
from .errors import InputError, param
from .images import check_drawn_mask, check_picture, check_size
from .clip.cam import check_cam_mode
from .clip.vocabulary import check_template, class_vocabulary
from .multiclass import check_labels, index_mask
from .models import IMRHSNet
from .scores import query_score
from .transforms import CAM_SIZE, device_batch, mask_to_cam, network_pixels
from .clip.vocabulary import DEFAULT_TEMPLATE


# What `predict_classes` can bring back to the host besides the mask (see its `keep`).
HOST_RESULTS = ("prob", "cam", "steps")


@dataclass(frozen=True)
class QueryPixels:
    """A query resized for the network and for CLIP, as uint8 pixels: `Predictor.prepare`
    makes it without touching a model, so worker threads can prepare the next batch
    while the device runs this one."""

    network: torch.Tensor  # uint8 (3, 400, 400)
    clip: torch.Tensor | None  # uint8 (3, S, S); None without a CLIP model
    size: tuple[int, int]  # (W, H) of the image they were made from


@dataclass(frozen=True)
class SupportSet:
    """Every class's supports, computed once by `Predictor.support_set`: label ->
    K (support features, CAM) pairs of batch 1, or None for a zero-shot class (each
    query is its own support). `predict_classes(..., supports=)` segments against
    it, so a server keeps several sets and switches between them without recomputing."""

    shots: dict[str, list | None]

    @property
    def labels(self) -> list[str]:
        return list(self.shots)


@dataclass
class Prediction:
    """One query's result for one class, at the query's own size (H, W); `prob`,
    `cam` and `step_masks` are None / empty when `predict_classes` was told not to
    keep them."""

    mask: np.ndarray  # (H, W) bool
    prob: np.ndarray | None  # (H, W) float32 foreground probability (mean over the supports)
    cam: np.ndarray | None  # (50, 50) float32 CLIP-CAM of the query
    step_masks: list = field(default_factory=list)  # (H, W) bool after each step
    score: float = 0.0  # confidence in the mask: see imrseg.scores

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass
class ClassPredictions:
    """One query's results for every class, in the classes' order."""

    by_label: dict[str, Prediction]

    def __getitem__(self, label: str) -> Prediction:
        return self.by_label[label]

    @property
    def labels(self) -> list[str]:
        return list(self.by_label)

    @cached_property
    def index_mask(self) -> np.ndarray:
        """(H, W) uint8: 0 background, i the i-th class (see `imrseg.multiclass`)."""
        preds = list(self.by_label.values())
        return index_mask([p.mask for p in preds], [p.prob for p in preds])

    @cached_property
    def fractions(self) -> dict[str, float]:
        """Each class's share of the pixels in the indexed mask (where masks overlap,
        the pixel counts for the class it went to)."""
        counts = np.bincount(self.index_mask.ravel(), minlength=len(self.by_label) + 1)
        total = max(int(self.index_mask.size), 1)
        return {label: float(counts[i]) / total for i, label in enumerate(self.by_label, start=1)}

    @property
    def foreground_fraction(self) -> float:
        """The share of pixels some class has."""
        return sum(self.fractions.values())

    @property
    def score(self) -> float:
        """The query's score: its least confident class present (imrseg.scores)."""
        return query_score((self.fractions[label], p.score) for label, p in self.by_label.items())


class Predictor:
    """Segments queries against cached support sets, one per class.

    `cam` is a `ClipCAM` (needed unless every image comes with a drawn mask);
    `device` is where the network and CAM run; `steps` defaults to the model's;
    `precision` ("fp32", "tf32", "fp16", "bf16", see `imrseg.devices`) is the network's
    precision; the CAM runs in fp32 storage always (its gradients need it), in IEEE
    fp32 when `precision` is "fp32" and with TF32 otherwise.
    """

    def __init__(self, model: IMRHSNet, cam=None, device: str | torch.device = "cpu",
                 steps: int | None = None, vocabulary: Sequence[str] | None = None,
                 precision: str = "fp32"):
        if not isinstance(model, torch.nn.Module):
            raise type_error("model", model, "an IMRHSNet")
        _check_options(steps, vocabulary)
        self.device = device_of(device)
        self.precision = check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.cam = cam
        self.steps = model.steps if steps is None else steps
        self.extra_vocabulary = list(vocabulary) if vocabulary else None
        self.weights_info = self.clip_info = None  # where the weights came from, when built from specs
        # label -> K (support features, CAM) pairs of batch 1, or None: the query is its own support.
        self._shots: dict[str, list | None] = {}

    @classmethod
    def from_pretrained(cls, weights: str | None = None, clip: str | None = None, device: str = "auto",
                        precision: str = "fp32", steps: int | None = None, vocabulary: Sequence[str] | None = None,
                        template: str | None = None, cam_mode: str = "official",
                        hub_namespace: str | None = None) -> "Predictor":
        """A ready predictor from weight specs (see `imrseg.hub`): `weights` any network
        weights spec (default: the registry's default checkpoint), `clip` any CLIP
        weights spec (default: OpenAI's RN50). `steps` None: the checkpoint's."""
        from .clip.cam import ClipCAM
        from .hub import resolve_clip, resolve_steps, resolve_weights

        for name, spec in (("weights", weights), ("clip", clip), ("template", template),
                           ("hub_namespace", hub_namespace)):
            if spec is not None:
                check_text(name, spec)
        _check_options(steps, vocabulary)
        check_template(template or DEFAULT_TEMPLATE)
        check_cam_mode(cam_mode, "cam_mode")
        torch_device = device_of(device)
        precision = check_precision(precision, torch_device)
        model, weights_info = resolve_weights(weights, hub_namespace, device=torch_device)
        clip_model, tokenizer, clip_info = resolve_clip(clip, device=torch_device)
        cam = ClipCAM(clip_model, tokenizer, template=template or DEFAULT_TEMPLATE, mode=cam_mode,
                      device=torch_device)
        predictor = cls(model, cam, device=torch_device, steps=resolve_steps(weights_info, steps),
                        vocabulary=vocabulary, precision=precision)
        predictor.weights_info, predictor.clip_info = weights_info, clip_info
        return predictor

    # ----------------------------------------------------------------- classes
    @property
    def labels(self) -> list[str]:
        return list(self._shots)

    def shots(self, label: str) -> list | None:
        """A class's cached (support features, CAM) pairs, one per support, each of
        batch 1; None for a zero-shot class (each query is its own support)."""
        return self._shots[label]

    def vocabulary(self, label: str) -> list[str]:
        """The label first, then the competitors its CAM is computed against."""
        return class_vocabulary(label, self.labels, self.extra_vocabulary)

    def set_supports(self, classes: Mapping[str, tuple[Sequence[Image.Image], Sequence[np.ndarray] | None]]) -> None:
        """Cache each class's supports: `{label: (images, masks)}`, in the order the
        classes are numbered in the indexed mask. `masks`, when not None, are drawn
        0/1 masks (one per image, same size) that replace the supports' CAMs; a None
        among them leaves that support its CAM."""
        self._shots = self.support_set(classes).shots

    def support_set(self, classes: Mapping[str, tuple[Sequence[Image.Image], Sequence[np.ndarray] | None] | None]
                    ) -> SupportSet:
        """Each class's supports computed once, as `set_supports` caches them, but
        handed back instead of becoming the predictor's classes: `{label: (images,
        masks)}`, or `{label: None}` for a zero-shot class."""
        classes = _checked_supports(classes)
        labels = list(classes)
        self._check_labels(labels)
        shots: dict[str, list | None] = dict.fromkeys(labels)
        for label, given in classes.items():
            if given is None:
                continue
            images, masks = given
            masks = masks if masks is not None else [None] * len(images)
            # A drawn mask replaces its support's CAM; the others get theirs, in one CLIP forward.
            undrawn = [k for k, m in enumerate(masks) if m is None]
            computed = iter(self.cams([images[k] for k in undrawn], [label], among=labels)[0] if undrawn else ())
            cams = torch.stack([mask_to_cam(m) if m is not None else next(computed).cpu() for m in masks])
            with self.inference():
                features = self.model.encode(self.network_inputs(images))
            cams = cams.to(self.device)
            shots[label] = [(features.index(slice(k, k + 1)), cams[k:k + 1]) for k in range(len(images))]
        return SupportSet(shots)

    def set_support(self, images: Sequence[Image.Image], label: str,
                    masks: Sequence[np.ndarray] | None = None) -> None:
        """One class: `set_supports({label: (images, masks)})`."""
        check_text("label", label)
        self.set_supports({label: (images, masks)})

    def set_zero_shot(self, labels: Sequence[str]) -> None:
        """Classes with no supports: each query is its own (the paper's zero-shot mode)."""
        self._shots = self.support_set(dict.fromkeys(check_labels(labels))).shots

    def _check_labels(self, labels: list[str]) -> None:
        labels = check_labels(labels)
        if self.cam is not None:
            for label in labels:
                self.cam.check_label(label)

    # ----------------------------------------------------------------- queries
    def prepare(self, image: Image.Image) -> QueryPixels:
        """The query's resizes (PIL, exact as the authors'), ready for `predict_classes`:
        thread-safe, so a run prepares queries on its decoding workers."""
        check_picture("image", image)
        clip = self.cam.pixels(image) if self.cam is not None else None
        return QueryPixels(network_pixels(image), clip, image.size)

    def predict(self, image: Image.Image, steps: int | None = None, size=None) -> Prediction:
        check_picture("image", image)
        return self.predict_batch([image], steps, None if size is None else [check_size("size", size)])[0]

    def predict_batch(self, images: Sequence[Image.Image], steps: int | None = None,
                      sizes: Sequence[tuple] | None = None) -> list[Prediction]:
        """One class: segment a batch of queries. `sizes` are the (W, H) to return each
        mask at (default: each image's size, e.g. the full size when `images` were reduced)."""
        if len(self._shots) > 1:
            raise InputError(f"predict_batch is for one class and there are {len(self._shots)}: "
                             "use predict_classes")
        return [result.by_label[self.labels[0]] for result in self.predict_classes(images, steps, sizes)]

    def predict_classes(self, images: Sequence[Image.Image | QueryPixels], steps: int | None = None,
                        sizes: Sequence[tuple] | None = None,
                        keep: Sequence[str] = HOST_RESULTS,
                        supports: SupportSet | None = None) -> list[ClassPredictions]:
        """Segment a batch of queries (PIL images, or what `prepare` made of them) for
        every class; `sizes` as in `predict_batch` (default: each image's size).
        `keep`: which of HOST_RESULTS come back from the device besides the mask (a run
        keeps only what it writes); with several classes the probabilities always do,
        since they decide where masks overlap. `supports`: a `support_set` to segment
        against instead of the predictor's own classes."""
        if supports is not None and not isinstance(supports, SupportSet):
            raise type_error("supports", supports, "a SupportSet made by support_set")
        shots = supports.shots if supports is not None else self._shots
        if not shots:
            raise InputError("no classes: call set_supports (or set_zero_shot) first")
        images = _checked_queries(images, steps, sizes)
        keep = check_keep(keep)
        labels = list(shots)
        keep = set(keep) | ({"prob"} if len(labels) > 1 else set())
        prepared = [im if isinstance(im, QueryPixels) else self.prepare(im) for im in images]
        cams = self.cams([p.clip for p in prepared], labels, among=labels)
        out_sizes = [(h, w) for w, h in (sizes or [p.size for p in prepared])]
        with self.inference():
            query = self.model.encode(self.network_inputs([p.network for p in prepared]))
            per_class = [self.model.segment(query, cams[v], shots[label], steps or self.steps, out_sizes,
                                            every_step="steps" in keep) for v, label in enumerate(labels)]
        return [ClassPredictions({label: _prediction(per_class[v][b], cams[v][b], keep)
                                  for v, label in enumerate(labels)}) for b in range(len(images))]

    def predict_zero_shot(self, images: Sequence[Image.Image], label: str, steps: int | None = None,
                          sizes: Sequence[tuple] | None = None) -> list[Prediction]:
        """The paper's zero-shot mode for one class: each query is its own support."""
        check_text("label", label)
        _checked_queries(images, steps, sizes)
        self.set_zero_shot([label])
        return self.predict_batch(images, steps, sizes)

    # ------------------------------------------------------------------ shared
    def cams(self, images: Sequence[Image.Image | torch.Tensor], labels: Sequence[str],
             among: Sequence[str] | None = None) -> torch.Tensor:
        """(V, N, 50, 50) coarse masks of the images (or their CLIP pixels) for each
        label, one CLIP forward; `among`: the classes competing in each label's CAM
        (default: the predictor's own)."""
        if self.cam is None:
            raise InputError("no CLIP model to compute coarse masks: give the Predictor a ClipCAM as `cam`")
        vocabularies = [class_vocabulary(label, self.labels if among is None else among, self.extra_vocabulary)
                        for label in labels]
        with float32_mode(self.precision):
            return self.cam.cams_for_labels(list(images), vocabularies, size=CAM_SIZE).to(self.device)

    def inference(self):
        """The context the network runs in: no autograd, the predictor's precision."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(float32_mode(self.precision))
        stack.enter_context(autocast(self.device, self.precision))
        return stack

    def network_inputs(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """The images (or their `network_pixels`) as the network's normalised
        (N, 3, 400, 400) batch on the predictor's device: uint8 crosses to the device,
        normalised there."""
        return device_batch(images, network_pixels, self.device)


def _check_options(steps, vocabulary) -> None:
    if steps is not None:
        check_count("steps", steps)
    if vocabulary is not None:
        for name in check_sequence("vocabulary", vocabulary):
            check_text("vocabulary", name)


def _checked_supports(classes) -> dict:
    """`support_set`'s classes checked before any is computed: each a label, and None
    (zero-shot) or one or more PIL images and None or one drawn mask (or None) per
    image, of its size (as bool)."""
    if not isinstance(classes, Mapping):
        raise type_error("classes", classes, "a dict of label: (images, masks)")
    checked = {}
    for label, pair in classes.items():
        check_text("label", label)
        if pair is None:  # zero-shot: the query is its own support
            checked[label] = None
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise type_error("classes", pair, "(images, masks) for each label")
        images, masks = check_sequence("images", pair[0]), pair[1]
        if not images:
            raise InputError(f"no support images for {label!r}: pass at least one support")
        for image in images:
            check_picture("images", image)
        if masks is not None:
            masks = check_sequence("masks", masks)
            if len(masks) != len(images):
                raise InputError(f"{label!r}: {len(images)} support images but {len(masks)} support masks")
            masks = [None if mask is None else
                     check_drawn_mask(f"{param('masks')}[{k}] of {label!r}", mask, image.size, f"image {k}")
                     for k, (image, mask) in enumerate(zip(images, masks))]
        checked[label] = (images, masks)
    return checked


def _checked_queries(images, steps, sizes) -> list:
    """The queries (PIL images or QueryPixels), refinement steps and output sizes of a
    prediction, checked before anything runs."""
    images = check_sequence("images", images)
    if not images:
        raise InputError(f"{param('images')} is empty: give at least one query")
    for image in images:
        if not isinstance(image, QueryPixels):
            check_picture("images", image)
    if steps is not None:
        check_count("steps", steps)
    if sizes is not None:
        sizes = check_sequence("sizes", sizes)
        if len(sizes) != len(images):
            raise InputError(f"{param('sizes')}: {len(sizes)} sizes for {len(images)} images; give one (W, H) each")
        for size in sizes:
            check_size("sizes", size)
    return images


def check_keep(keep) -> list:
    """`predict_classes`' `keep`: some of HOST_RESULTS."""
    keep = check_sequence("keep", keep)
    unknown = set(map(str, keep)) - set(HOST_RESULTS)
    if unknown:
        raise InputError(f"`keep` {sorted(unknown)}: expected some of {', '.join(HOST_RESULTS)}")
    return keep


def _prediction(result, cam: torch.Tensor, keep: set[str]) -> Prediction:
    return Prediction(result.mask.cpu().numpy(), result.prob.float().cpu().numpy() if "prob" in keep else None,
                      cam.float().cpu().numpy() if "cam" in keep else None,
                      [m.cpu().numpy() for m in result.step_masks] if "steps" in keep else [], result.score)
