"""`Predictor`: set the supports once, then segment any number of queries.

Everything about the supports (backbone features, CAMs) and the label's text
embeddings is computed once in `set_support`; `predict_batch` then encodes each
query once and reuses its features for every support and every refinement step.
`Predictor.from_pretrained` goes from weight specs to a ready predictor in one line.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .devices import autocast, check_precision, resolve_device
from .errors import InputError
from .models import IMRHSNet, ImageFeatures
from .transforms import CAM_SIZE, mask_to_cam, network_input
from .vocabulary import DEFAULT_TEMPLATE, background_vocabulary


@dataclass
class Prediction:
    """One query's result, at the query's own size (H, W)."""

    mask: np.ndarray  # (H, W) bool
    prob: np.ndarray  # (H, W) float32 foreground probability (mean over the supports)
    cam: np.ndarray  # (50, 50) float32 CLIP-CAM of the query
    step_masks: list = field(default_factory=list)  # (H, W) bool after each step

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


class Predictor:
    """Segments queries against a cached support set.

    `cam` is a `ClipCAM` (needed unless every image comes with a drawn mask);
    `device` is where the network and CAM run; `steps` defaults to the model's;
    `precision` ("fp32", "fp16", "bf16") is the network's autocast precision (the
    CAM always runs in fp32: its gradients need it).
    """

    def __init__(self, model: IMRHSNet, cam=None, device: str | torch.device = "cpu",
                 steps: int | None = None, vocabulary: Sequence[str] | None = None,
                 precision: str = "fp32"):
        self.device = torch.device(device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.cam = cam
        self.steps = steps or model.steps
        self.extra_vocabulary = list(vocabulary) if vocabulary else None
        self.label: str | None = None
        self.weights_info = self.clip_info = None  # where the weights came from, when built from specs
        self._support: ImageFeatures | None = None
        self._support_cams: torch.Tensor | None = None

    @classmethod
    def from_pretrained(cls, weights: str | None = None, clip: str | None = None, device: str = "auto",
                        precision: str = "fp32", steps: int | None = None, vocabulary: Sequence[str] | None = None,
                        template: str | None = None, cam_mode: str = "official",
                        hub_namespace: str | None = None) -> "Predictor":
        """A ready predictor from weight specs (see `imrseg.hub`): `weights` any
        `--weights` spec (default: the registry's default checkpoint), `clip` any
        `--clip-weights` spec (default: OpenAI's RN50). `steps` None: the checkpoint's."""
        from .cam import ClipCAM
        from .hub import resolve_clip, resolve_steps, resolve_weights

        torch_device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        precision = check_precision(precision, torch_device)
        model, weights_info = resolve_weights(weights, hub_namespace, device=torch_device)
        clip_model, tokenizer, clip_info = resolve_clip(clip, device=torch_device)
        cam = ClipCAM(clip_model, tokenizer, template=template or DEFAULT_TEMPLATE, mode=cam_mode,
                      device=torch_device)
        predictor = cls(model, cam, device=torch_device, steps=resolve_steps(weights_info, steps),
                        vocabulary=vocabulary, precision=precision)
        predictor.weights_info, predictor.clip_info = weights_info, clip_info
        return predictor

    # ----------------------------------------------------------------- support
    @property
    def vocabulary(self) -> list[str]:
        """The label first, then the competitors its CAM is computed against."""
        if self.label is None:
            raise InputError("no support set: call set_support first")
        return background_vocabulary(self.label, self.extra_vocabulary)

    def set_support(self, images: Sequence[Image.Image], label: str,
                    masks: Sequence[np.ndarray] | None = None) -> None:
        """Cache the supports' features and coarse masks. `masks`, when given, are
        drawn 0/1 masks (one per image, same size) that replace the CAM."""
        if not images:
            raise InputError("no support images: pass at least one --support")
        if masks is not None and len(masks) != len(images):
            raise InputError(f"{len(images)} support images but {len(masks)} support masks")
        self.label = label
        if masks is not None:
            cams = torch.stack([mask_to_cam(m) for m in masks])
        else:
            cams = self.query_cams(images)
        with self._network():
            self._support = self.model.encode(self._inputs(images))
        self._support_cams = cams.to(self.device)

    @property
    def num_supports(self) -> int:
        return 0 if self._support is None else self._support.batch_size

    def query_cams(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.cam is None:
            raise InputError("no CLIP model to compute coarse masks: give the Predictor a ClipCAM")
        self.cam.check_label(self.label)
        return self.cam(list(images), self.vocabulary, [0] * len(images), size=CAM_SIZE).to(self.device)

    def _network(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.precision))
        return stack

    def _inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([network_input(im) for im in images]).to(self.device)

    # ----------------------------------------------------------------- queries
    def predict(self, image: Image.Image, steps: int | None = None, size=None) -> Prediction:
        return self.predict_batch([image], steps, [size] if size else None)[0]

    def predict_batch(self, images: Sequence[Image.Image], steps: int | None = None,
                      sizes: Sequence[tuple] | None = None) -> list[Prediction]:
        """Segment a batch of queries. `sizes` are the (W, H) to return each mask at
        (default: each image's size, e.g. the full size when `images` were reduced)."""
        if self._support is None:
            raise InputError("no support set: call set_support first")
        shots = [(self._support.index(slice(k, k + 1)), self._support_cams[k:k + 1])
                 for k in range(self.num_supports)]
        return self._segment(images, shots, steps, sizes)

    def predict_zero_shot(self, images: Sequence[Image.Image], label: str, steps: int | None = None,
                          sizes: Sequence[tuple] | None = None) -> list[Prediction]:
        """The paper's zero-shot mode: each query is its own support."""
        self.label = label
        return self._segment(images, None, steps, sizes)

    def _segment(self, images, shots, steps, sizes) -> list[Prediction]:
        cams = self.query_cams(images)
        out_sizes = [(h, w) for w, h in (sizes or [im.size for im in images])]
        with self._network():
            query = self.model.encode(self._inputs(images))
            results = self.model.segment(query, cams, shots, steps or self.steps, out_sizes, every_step=True)
        return [Prediction(r.mask.cpu().numpy(), r.prob.float().cpu().numpy(), cams[b].float().cpu().numpy(),
                           [m.cpu().numpy() for m in r.step_masks]) for b, r in enumerate(results)]
