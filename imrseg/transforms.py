"""Images to tensors, in one place: the refinement network's input (the authors'
test transform at 400x400 with ImageNet statistics), CLIP's input (shorter side to
224 and centre crop as the authors, or the whole image), and drawn masks as
coarse masks.

The resizes (PIL, the reference) give uint8 pixels, which worker threads can make
ahead of the device; normalisation is a lookup done where the batch lands, so a
GPU run copies bytes, not floats, and every device gets the same values."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from .models.voting import INPUT_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAM_SIZE = 50  # the coarse masks the network takes are 50x50
CLIP_MODES = ("official", "full")


def _reference_normalisation(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """The authors' arithmetic (ToTensor, then Normalize) on uint8 values, in float32."""
    x = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@functools.cache
def _lookup(mean: tuple, std: tuple) -> torch.Tensor:
    """(3 * 256,) float32: channel c's normalised value of byte v at c * 256 + v, computed
    by the reference arithmetic, so a lookup equals it bit for bit on any device."""
    return _reference_normalisation(np.tile(np.arange(256, dtype=np.uint8), (3, 1, 1)), mean, std).reshape(-1)


def normalise(pixels: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (..., 3, H, W) pixels -> float32 normalised values, on the pixels' device:
    a table lookup (no arithmetic there), identical to the authors' CPU arithmetic."""
    table = _lookup(tuple(mean), tuple(std)).to(pixels.device, non_blocking=True)
    channel = torch.arange(3, device=pixels.device).view(3, 1, 1) * 256
    return table[pixels.long() + channel]


def to_device(pixels: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack uint8 pixel tensors into one batch on `device`: through pinned memory and
    an asynchronous copy on CUDA (a quarter of float32's bytes cross the bus)."""
    batch = torch.stack(list(pixels))
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def device_batch(images: Sequence, pixels_of: Callable[[Image.Image], torch.Tensor], device: torch.device,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """PIL images (made uint8 by `pixels_of`) or uint8 pixels made ahead, as one
    normalised batch on `device` (`to_device`, then `normalise` there)."""
    pixels = [im if isinstance(im, torch.Tensor) else pixels_of(im) for im in images]
    return normalise(to_device(pixels, device), mean, std)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def network_pixels(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 (3, 400, 400): the authors' test resize (PIL bilinear)."""
    return _pixels(image.convert("RGB").resize(INPUT_SIZE[::-1], Image.BILINEAR))


def network_input(image: Image.Image) -> torch.Tensor:
    """PIL image -> normalised (3, 400, 400), as the authors' test transform
    (PIL bilinear resize, ToTensor, ImageNet mean/std)."""
    return normalise(network_pixels(image))


def clip_pixels(image: Image.Image, size: int, mode: str = "official") -> torch.Tensor:
    """PIL image -> uint8 (3, size, size) for CLIP. `official`: shorter side to `size`
    (bicubic) and centre crop, as the authors; `full`: the whole image resized."""
    image = image.convert("RGB")
    if mode == "full":
        image = image.resize((size, size), Image.BICUBIC)
    else:
        w, h = image.size
        new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = image.resize(new, Image.BICUBIC)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return _pixels(image)


def clip_input(image: Image.Image, size: int, mode: str = "official") -> torch.Tensor:
    """PIL image -> normalised (3, size, size) for CLIP (see `clip_pixels`)."""
    return normalise(clip_pixels(image, size, mode), CLIP_MEAN, CLIP_STD)


def mask_to_cam(mask: np.ndarray, size: int = CAM_SIZE) -> torch.Tensor:
    """A drawn 0/1 mask as a (size, size) coarse mask (area-averaged)."""
    return torch.from_numpy(cv2.resize(np.asarray(mask, dtype=np.float32), (size, size),
                                       interpolation=cv2.INTER_AREA))
