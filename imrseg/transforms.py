"""Images to tensors, in one place: the refinement network's input (the authors'
test transform at 400x400 with ImageNet statistics), CLIP's input (shorter side to
224 and centre crop as the authors, or the whole image), and drawn masks as
coarse masks."""
from __future__ import annotations

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


def _normalised(image: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def network_input(image: Image.Image) -> torch.Tensor:
    """PIL image -> normalised (3, 400, 400), as the authors' test transform
    (PIL bilinear resize, ToTensor, ImageNet mean/std)."""
    return _normalised(image.convert("RGB").resize(INPUT_SIZE[::-1], Image.BILINEAR), IMAGENET_MEAN, IMAGENET_STD)


def clip_input(image: Image.Image, size: int, mode: str = "official") -> torch.Tensor:
    """PIL image -> normalised (3, size, size) for CLIP. `official`: shorter side to
    `size` (bicubic) and centre crop, as the authors; `full`: the whole image resized."""
    image = image.convert("RGB")
    if mode == "full":
        image = image.resize((size, size), Image.BICUBIC)
    else:
        w, h = image.size
        new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = image.resize(new, Image.BICUBIC)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return _normalised(image, CLIP_MEAN, CLIP_STD)


def mask_to_cam(mask: np.ndarray, size: int = CAM_SIZE) -> torch.Tensor:
    """A drawn 0/1 mask as a (size, size) coarse mask (area-averaged)."""
    return torch.from_numpy(cv2.resize(np.asarray(mask, dtype=np.float32), (size, size),
                                       interpolation=cv2.INTER_AREA))
