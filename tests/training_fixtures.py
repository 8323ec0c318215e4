"""Test fixtures for training: a tiny few-shot set of coloured shapes in the
FSS-1000 layout (one folder per class of N.jpg + N.png), and a stand-in for CLIP
whose coarse masks carry signal: a blurred, dimmed, noisy copy of the shape's
mask, found from the class's colour. CamSource stores them in its cache as it
stores CLIP's."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

# class folder -> (colour, shape)
SHAPES = {
    "red_disc": ((220, 40, 40), "disc"),
    "green_square": ((40, 190, 60), "square"),
    "blue_triangle": ((40, 70, 220), "triangle"),
    "yellow_disc": ((230, 210, 40), "disc"),
}


def make_shapes(root: Path, per_class: int = 4, size: tuple[int, int] = (96, 80), seed: int = 0,
                classes=None) -> Path:
    """`root/<class>/<n>.jpg` + `<n>.png` (0/255) for n = 1..per_class."""
    rng = np.random.default_rng(seed)
    for name in classes or SHAPES:
        colour, shape = SHAPES[name]
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            w, h = size
            background = rng.integers(90, 160, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(background).resize((w, h), Image.BILINEAR)
            mask = Image.new("L", (w, h), 0)
            r = int(rng.integers(min(w, h) // 4, min(w, h) // 2.5))
            # Near the centre, as most photographed objects (and FSS-1000's) are.
            cx, cy = (c // 2 + int(rng.integers(-c // 10, c // 10 + 1)) for c in (w, h))
            box = [cx - r, cy - r, cx + r, cy + r]
            for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask), 255)):
                if shape == "disc":
                    canvas.ellipse(box, fill=fill)
                elif shape == "square":
                    canvas.rectangle(box, fill=fill)
                else:
                    canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            image.save(root / name / f"{n}.jpg", quality=95)
            mask.save(root / name / f"{n}.png")
    return root


class MaskCam:
    """What CamSource needs of a ClipCAM: `template`, `mode` and the call. The map is
    the class colour's mask, area-resized to `size`, blurred, scaled to a peak of 1
    and raised to the 6th power, with noise (seeded by the image): like a Grad-CAM
    it fires on the object's core, so CAM >= 0.5 is a rough, too small mask."""

    template, mode = "a photo of a {c}", "official"

    def __init__(self, colours: dict[str, tuple]):
        self.colours = colours

    def __call__(self, images, classnames, targets, size: int = 50):
        import torch

        maps = []
        for image, target in zip(images, targets):
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
            colour = np.asarray(self.colours[classnames[target]], dtype=np.float32)
            mask = (np.abs(pixels - colour).max(axis=2) < 45).astype(np.float32)
            small = cv2.GaussianBlur(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA), (0, 0), 4)
            rng = np.random.default_rng(int(hashlib.sha256(pixels.tobytes()).hexdigest()[:8], 16))
            noisy = (small / max(small.max(), 1e-6)) ** 6 + rng.normal(0, 0.08, small.shape)
            maps.append(np.clip(noisy, 0, 1).astype(np.float32))
        return torch.from_numpy(np.stack(maps))


def mask_cam() -> MaskCam:
    """A MaskCam for a vocabulary whose first entries are SHAPES' folder names (underscores as spaces)."""
    return MaskCam({name.replace("_", " "): SHAPES[name][0] for name in SHAPES})
