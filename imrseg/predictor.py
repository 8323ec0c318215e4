"""`Predictor`: set the supports once, then segment any number of queries.

Everything about the supports (backbone features, CAMs) and the label's text
embeddings is computed once in `set_support`; `predict_batch` then encodes each
query once and reuses its features for every support and every refinement step.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from .devices import autocast
from .errors import InputError
from .models import IMRHSNet, ImageFeatures, upsample_logits, vote
from .models.imr_hsnet import INPUT_SIZE
from .vocabulary import background_vocabulary

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAM_SIZE = 50


def network_input(image: Image.Image) -> torch.Tensor:
    """PIL image -> normalised (3, 400, 400), as the authors' test transform
    (PIL bilinear resize, ToTensor, ImageNet mean/std)."""
    image = image.convert("RGB").resize(INPUT_SIZE[::-1], Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def mask_to_cam(mask: np.ndarray, size: int = CAM_SIZE) -> torch.Tensor:
    """A drawn 0/1 mask as a (size, size) coarse mask (area-averaged)."""
    return torch.from_numpy(cv2.resize(np.asarray(mask, dtype=np.float32), (size, size),
                                       interpolation=cv2.INTER_AREA))


@dataclass
class Prediction:
    """One query's result, at the query's own size (H, W)."""

    mask: np.ndarray  # (H, W) bool
    prob: np.ndarray  # (H, W) float32 foreground probability (mean over the supports)
    cam: np.ndarray  # (50, 50) float32 CLIP-CAM of the query
    step_masks: list = field(default_factory=list)  # (H, W) bool after each step
    logits: np.ndarray | None = None  # (K, 2, 100, 100) the network's last-step logits per support

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
        self._support: ImageFeatures | None = None
        self._support_cams: torch.Tensor | None = None

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
        cams = self.query_cams(images)
        with self._network():
            query = self.model.encode(self._inputs(images))
            per_support = [self.model.refine(query, self._support.index(slice(k, k + 1)), cams,
                                             self._support_cams[k:k + 1], steps or self.steps,
                                             with_support=False)[0]
                           for k in range(self.num_supports)]
        return self._collect(per_support, cams, images, sizes)

    def predict_zero_shot(self, images: Sequence[Image.Image], label: str, steps: int | None = None,
                          sizes: Sequence[tuple] | None = None) -> list[Prediction]:
        """The paper's zero-shot mode: each query is its own support."""
        self.label = label
        cams = self.query_cams(images)
        with self._network():
            feats = self.model.encode(self._inputs(images))
            logits = self.model.refine(feats, feats, cams, cams, steps or self.steps, with_support=False)[0]
        return self._collect([logits], cams, images, sizes)

    def _collect(self, per_support, cams, images, sizes) -> list[Prediction]:
        """per_support: K lists (steps) of (B,2,100,100) logits -> Predictions at full size."""
        out = []
        for b, image in enumerate(images):
            w, h = sizes[b] if sizes else image.size
            step_masks = []
            for step in range(len(per_support[0])):
                logits = torch.cat([upsample_logits(s[step][b:b + 1].float(), (h, w)) for s in per_support])
                step_masks.append(vote(logits.argmax(dim=1)[None])[0].bool().cpu().numpy())
            prob = logits.softmax(dim=1)[:, 1].mean(dim=0)  # of the last step
            last = torch.cat([s[-1][b:b + 1] for s in per_support]).float().cpu().numpy()
            out.append(Prediction(step_masks[-1], prob.float().cpu().numpy(),
                                  cams[b].float().cpu().numpy(), step_masks, last))
        return out
