"""CLIP Grad-CAM: the coarse masks that stand in for drawn ones.

The label and a vocabulary of competitors are embedded as "a photo of a {c}";
the image's probability for the label (softmax of 100 x cosine similarity) is
differentiated with respect to the output of the vision tower's last block, and
the gradient-weighted activations give the class activation map, post-processed
exactly as the authors' pytorch-grad-cam copy does.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import InputError, param
from ..transforms import CAM_SIZE, CLIP_MEAN, CLIP_MODES, CLIP_STD, clip_input, clip_pixels, device_batch
from .vocabulary import DEFAULT_TEMPLATE, check_template

CAM_MODES = CLIP_MODES
CAM_BATCH = 16


def _scale01(x: np.ndarray) -> np.ndarray:
    x = x - np.min(x)
    return x / (1e-7 + np.max(x))


def postprocess_cam(raw: np.ndarray, input_size: int) -> np.ndarray:
    """(h, w) gradient-weighted activation sum -> (S, S) map in [0, 1], as the authors:
    negatives to 0, min-max, cv2 resize, negatives to 0, min-max again."""
    cam = np.maximum(raw.astype(np.float32), 0)
    cam = cv2.resize(np.float32(_scale01(cam)), (input_size, input_size))
    return np.float32(_scale01(np.maximum(cam, 0)))


def check_cam_mode(mode: str, name: str = "mode") -> str:
    if not isinstance(mode, str) or mode not in CAM_MODES:
        raise InputError(f"{param(name)} {mode!r} is not a CAM mode; expected one of {', '.join(CAM_MODES)}")
    return mode


def check_label(tokenizer, template: str, label: str, context_length: int = 77) -> None:
    """Fail early, with the fix, on labels (and templates) CLIP cannot take."""
    check_template(template)
    if not label or not label.strip():
        raise InputError("the label is empty; pass the name of the object to segment as `label`")
    tokens = tokenizer([template.format(c=label)], context_length=10_000)
    used = int((tokens[0] != 0).sum())
    if used > context_length:
        raise InputError(f"the label is too long for CLIP: the prompt takes {used} tokens, "
                         f"the limit is {context_length}; shorten `label`")


class ClipCAM:
    """Grad-CAM coarse masks from any open_clip CLIP model.

    `mode="official"` preprocesses as the authors (shorter side to 224, centre
    crop), so the map covers the central square only and is stretched over the
    whole image; `mode="full"` resizes the whole image to 224x224, so the map lines
    up with the uncropped image the refinement network sees. Every method taking
    `images` takes PIL images or their `pixels` (prepared ahead, e.g. on a worker).
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, template: str = DEFAULT_TEMPLATE,
                 mode: str = "official", device: str | torch.device | None = None):
        check_cam_mode(mode)
        check_template(template)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval().requires_grad_(False)
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("RN50-quickgelu")
        self.tokenizer = tokenizer
        self.template = template
        self.mode = mode
        self.target_layer, self._to_grid = _target_layer(self.model.visual)
        size = getattr(self.model.visual, "image_size", 224)
        self.input_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.context_length = getattr(self.model, "context_length", 77)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------ preprocessing
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised (3, S, S) tensor."""
        return clip_input(image, self.input_size, self.mode)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 (3, S, S), resized and cropped as `preprocess` (no model
        touched: safe on a worker thread)."""
        return clip_pixels(image, self.input_size, self.mode)

    # --------------------------------------------------------------------- text
    def check_label(self, label: str) -> None:
        check_label(self.tokenizer, self.template, label, self.context_length)

    def text_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings of the prompts, (C, D); computed once per vocabulary."""
        key = (self.template, tuple(classnames))
        if key not in self._text_cache:
            tokens = self.tokenizer([self.template.format(c=c) for c in classnames]).to(self.device)
            with torch.no_grad():
                feats = self.model.encode_text(tokens).float()
            self._text_cache[key] = feats / feats.norm(dim=-1, keepdim=True)
        return self._text_cache[key]

    # ------------------------------------------------------------------- images
    def batch(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """PIL images, or their `pixels`, as the normalised (N, 3, S, S) batch on the
        CAM's device (normalised there)."""
        return device_batch(images, self.pixels, self.device, CLIP_MEAN, CLIP_STD)

    def probabilities(self, batch: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Softmax over 100 x cosine similarity of a preprocessed batch against unit
        text embeddings, (N, C): what Grad-CAM differentiates."""
        return _softmax(self._image_features(batch), text)

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(batch).float()
        return feats / feats.norm(dim=-1, keepdim=True)

    def maps(self, images: Sequence[Image.Image | torch.Tensor], classnames: Sequence[str],
             targets: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps at the CLIP input size, (N, S, S) float32 in [0, 1]."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} `images` but {len(targets)} `targets`: one target class per image")
        return self._grad_cams(images, [self.text_features(classnames)], targets)[0]

    def __call__(self, images: Sequence[Image.Image | torch.Tensor], classnames: Sequence[str],
                 targets: Sequence[int], size: int = CAM_SIZE) -> torch.Tensor:
        """Coarse masks (N, size, size) in [0, 1], resized with cv2 as the authors."""
        maps = self.maps(images, classnames, targets)
        return torch.from_numpy(np.stack([cv2.resize(m, (size, size)) for m in maps])
                                if len(maps) else np.zeros((0, size, size), np.float32))

    # ------------------------------------------------------- several labels
    def cams_for_labels(self, images: Sequence[Image.Image | torch.Tensor], vocabularies: Sequence[Sequence[str]],
                        size: int = CAM_SIZE) -> torch.Tensor:
        """Coarse masks of every image for several labels, (V, N, size, size): entry v is
        `self(images, vocabularies[v], [0] * N, size)`, the label being the first name
        of its vocabulary. Each image batch goes through CLIP's vision tower once."""
        maps = self.maps_for_labels(images, vocabularies)
        resized = [[cv2.resize(m, (size, size)) for m in per_label] for per_label in maps]
        return torch.from_numpy(np.asarray(resized, dtype=np.float32).reshape(len(vocabularies), len(images), size, size))

    def maps_for_labels(self, images: Sequence[Image.Image | torch.Tensor], vocabularies: Sequence[Sequence[str]]) -> np.ndarray:
        """Grad-CAM maps at the CLIP input size, (V, N, S, S), equal to
        `maps(images, vocabularies[v], [0] * N)` for each v."""
        return self._grad_cams(images, [self.text_features(v) for v in vocabularies], [0] * len(images))

    def _grad_cams(self, images: Sequence[Image.Image | torch.Tensor], texts: Sequence[torch.Tensor],
                   targets: Sequence[int]) -> np.ndarray:
        """(V, N, S, S): for each vocabulary's unit text embeddings `texts[v]`, the Grad-CAM
        maps of the images for their `targets` (indices into that vocabulary), CAM_BATCH
        images at a time. The forward pass is shared: each vocabulary's probability is
        differentiated on the same graph (kept for the next one), so V vocabularies cost
        one image forward and V short backward passes from the target layer on, instead
        of V of each."""
        if not images:
            return np.zeros((len(texts), 0, self.input_size, self.input_size), np.float32)
        batch = self.batch(images)
        return np.concatenate([self._grad_cams_batch(batch[i:i + CAM_BATCH], texts, targets[i:i + CAM_BATCH])
                               for i in range(0, len(images), CAM_BATCH)], axis=1)

    def _grad_cams_batch(self, batch: torch.Tensor, texts: Sequence[torch.Tensor],
                         targets: Sequence[int]) -> np.ndarray:
        captured = {}

        def hook(_module, _inputs, output):
            # A fresh leaf: the graph starts here, so no gradient flows into the backbone.
            leaf = output.detach().requires_grad_(True)
            captured["act"] = leaf
            return leaf

        handle = self.target_layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                feats = self._image_features(batch)
                index = torch.as_tensor(list(targets), device=feats.device)[:, None]
                grads = []
                for v, text in enumerate(texts):
                    score = _softmax(feats, text).gather(1, index).sum()
                    grads.append(torch.autograd.grad(score, captured["act"], retain_graph=v < len(texts) - 1)[0])
        finally:
            handle.remove()
        act = self._to_grid(captured["act"].detach()).float()
        out = []
        for grad in grads:
            weights = self._to_grid(grad).float().mean(dim=(2, 3), keepdim=True)
            raw = (weights * act).sum(dim=1).cpu().numpy()
            out.append(np.stack([postprocess_cam(r, self.input_size) for r in raw]))
        return np.stack(out)


def _softmax(image_features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Each image's softmax over 100 x cosine similarity to the texts, (N, C)."""
    return (100.0 * image_features @ text.T).softmax(dim=-1)


def openai_fp16_round_trip(model: torch.nn.Module) -> torch.nn.Module:
    """Round conv, linear and attention weights through fp16, as the authors' `clip.load`
    does (it builds the model in fp16, then casts it back to fp32 on CPU). OpenAI's
    released weights are fp16 values, so for them this changes nothing; for any
    other state dict it reproduces the numbers of the authors' pipeline."""
    def round_trip(t):
        if t is not None:
            t.data = t.data.half().to(t.dtype)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            round_trip(module.weight)
            round_trip(module.bias)
        elif isinstance(module, torch.nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                         "in_proj_bias", "bias_k", "bias_v"):
                round_trip(getattr(module, name, None))
        for name in ("text_projection", "proj"):
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor):
                round_trip(value)
    return model


def _target_layer(visual: torch.nn.Module):
    """The block whose output Grad-CAM weighs, and how to view it as (N, C, h, w)."""
    if hasattr(visual, "layer4"):  # ModifiedResNet (RN50, RN101, ...)
        return visual.layer4[-1], lambda t: t
    if hasattr(visual, "transformer") and hasattr(visual, "grid_size"):  # VisionTransformer
        grid = tuple(visual.grid_size)

        def to_grid(tokens: torch.Tensor) -> torch.Tensor:
            if tokens.shape[1] != grid[0] * grid[1] + 1 and tokens.shape[0] == grid[0] * grid[1] + 1:
                tokens = tokens.transpose(0, 1)  # sequence-first layout
            patches = tokens[:, -grid[0] * grid[1]:]
            return patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)

        # The last block's output reaches the embedding through the class token only, so
        # its patch tokens get no gradient; its input norm's output does (via attention).
        return visual.transformer.resblocks[-1].ln_1, to_grid
    raise InputError(f"unsupported CLIP vision tower {type(visual).__name__}: "
                     "Grad-CAM needs a ModifiedResNet or a VisionTransformer")
