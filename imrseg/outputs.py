"""Naming and writing a query's outputs under the output folder.

`output_stem` / `plan_outputs` map each query to a path stem under the output
folder, never outside it and never shared by two queries. A stem `out/a/b` gets
`out/a/b.png` (mask), `b_overlay.jpg`, `b_cam.png`, `b_prob.png`, `b_step{t}.png`;
the `save_*` functions encode them and write them atomically."""
from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .durable import atomic_write_bytes
from .errors import ImrsegError, InputError, show_path

MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = "_overlay.jpg"
CAM_SUFFIX = "_cam.png"
PROB_SUFFIX = "_prob.png"
OUTPUT_SUFFIXES = (MASK_SUFFIX, OVERLAY_SUFFIX, CAM_SUFFIX, PROB_SUFFIX)

OVERLAY_TINT = (255, 0, 0)
OVERLAY_ALPHA = 0.45
CONTOUR_COLOR = (255, 255, 0)
JPEG_QUALITY = 90


def step_suffix(t: int) -> str:
    """Suffix of the probability map after refinement step `t`: `_step{t}.png`."""
    return f"_step{t}.png"


def output_path(stem: os.PathLike | str, suffix: str) -> Path:
    """The file for `suffix` (e.g. MASK_SUFFIX, step_suffix(2)) next to `stem`."""
    stem = Path(stem)
    return stem.with_name(stem.name + suffix)


def output_stem(image_path: os.PathLike | str, root: os.PathLike | str, out_dir: os.PathLike | str) -> Path:
    """`out_dir / (image_path relative to root, extension removed)`.

    InputError if the image is not under root, or the stem would land outside out_dir
    (`..`, absolute parts, or a symlinked subfolder of out_dir pointing elsewhere).
    """
    image_path, root, out_dir = Path(image_path), Path(root), Path(out_dir)
    try:
        rel = image_path.relative_to(root)
    except ValueError:
        raise InputError(f"{show_path(image_path)}: not inside its root folder {show_path(root)}") from None
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{show_path(image_path)}: cannot name an output for it under {show_path(root)}")
    stem = out_dir / rel.with_suffix("")
    if not stem.parent.resolve().is_relative_to(out_dir.resolve()):
        raise InputError(
            f"{show_path(stem)}: output would be written outside the output folder {show_path(out_dir)}"
        )
    return stem


def _key(path: Path) -> str:
    """Identity of a file to be written: real folder + name, caseless (macOS/Windows/exFAT)."""
    return os.path.join(os.path.realpath(path.parent), path.name).casefold()


_STEP_FILE = re.compile(r"(.*)_step\d+\.png", re.DOTALL)


def plan_outputs(
    images: Iterable[tuple[os.PathLike | str, os.PathLike | str]],
    out_dir: os.PathLike | str,
    protect: Iterable[os.PathLike | str] = (),
    tags: Sequence[str] = ("",),
) -> dict[Path, Path]:
    """Give every (image, root) from find_images its own output stem under out_dir.

    Stems come from output_stem. When two images would share a stem, or one image's
    outputs would overwrite another's (`a.jpg` -> `a_cam.png` vs `a_cam.jpg` -> `a_cam.png`)
    or overwrite an input image (out_dir inside the input folder) or a file in `protect`
    (the other inputs: supports, support masks), the later image gets `<name>_<ext>`,
    then `<name>_<ext>_2`, `_3`, ... Deterministic for the same inputs, compared caselessly.
    `tags` go before the CAM, probability and step suffixes: one per class of a
    multi-class run (`labels.file_tags`), so `a_dog_prob.png` is claimed too.
    """
    files: set[str] = set()  # keys of files that must not be written over
    step_bases: set[str] = set()  # stems X whose X_step<t>.png names are taken

    def claim_file(key: str) -> None:
        files.add(key)
        step = _STEP_FILE.fullmatch(key)
        if step:
            step_bases.add(step[1])

    def own_files(key: str) -> list[str]:
        return [key + MASK_SUFFIX, key + OVERLAY_SUFFIX,
                *(key + tag + suffix for tag in tags for suffix in (CAM_SUFFIX, PROB_SUFFIX))]

    def is_free(key: str) -> bool:
        step = _STEP_FILE.fullmatch(key + MASK_SUFFIX)
        return (
            not any(key + tag in step_bases for tag in tags)
            and not (step and step[1] in step_bases)
            and not any(name in files for name in own_files(key))
        )

    def claim_stem(key: str) -> None:
        for name in own_files(key):
            claim_file(name)
        step_bases.update(key + tag for tag in tags)

    for path in protect:
        claim_file(_key(Path(path)))
    natural: dict[Path, Path] = {}
    for image, root in images:
        image = Path(image)
        if image not in natural:
            natural[image] = output_stem(image, root, out_dir)
            claim_file(_key(image))

    plan: dict[Path, Path] = {}
    for image, stem in natural.items():
        if is_free(_key(stem)):
            plan[image] = stem
            claim_stem(_key(stem))
    for image, stem in natural.items():
        if image in plan:
            continue
        ext = image.suffix.lstrip(".").lower()
        prefix = f"{stem.name}_{ext}" if ext else stem.name
        for n in itertools.count(1 if ext else 2):
            candidate = stem.with_name(prefix if n == 1 else f"{prefix}_{n}")
            if is_free(_key(candidate)):
                break
        plan[image] = candidate
        claim_stem(_key(candidate))
    return {image: plan[image] for image in natural}


def completed_outputs(stem: os.PathLike | str, required_suffixes: Sequence[str]) -> bool:
    """True when every `stem + suffix` exists as a non-empty regular file (not a link).

    Files are written atomically, so an existing file is a complete one; which run
    wrote it is for results.jsonl to say.
    """
    for suffix in required_suffixes:
        try:
            st = output_path(stem, suffix).lstat()
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return False
    return True


def _write_encoded(
    path: os.PathLike | str, ext: str, array: np.ndarray, params: Sequence[int] = ()
) -> None:
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise ImrsegError(f"{show_path(path)}: could not encode a {array.shape} image")
    atomic_write_bytes(path, buf.tobytes())


def _as_2d(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    return array


def _unit_to_u8(values) -> np.ndarray:
    """Floats in [0, 1] to 0..255; out-of-range values clip, NaN becomes 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_mask_png(path: os.PathLike | str, mask) -> None:
    """Binary mask (H, W; nonzero = object) as an 8-bit greyscale PNG of 0 and 255."""
    mask = _as_2d(mask, "mask")
    _write_encoded(path, ".png", np.where(mask != 0, 255, 0).astype(np.uint8))


def save_gray_png(path: os.PathLike | str, values) -> None:
    """Probabilities (H, W; floats in [0, 1]) as an 8-bit greyscale PNG."""
    _write_encoded(path, ".png", _unit_to_u8(_as_2d(values, "values")))


def save_heatmap_png(path: os.PathLike | str, cam, size: tuple[int, int]) -> None:
    """CAM (h, w; floats in [0, 1]) resized bilinearly to size=(W, H), JET colour map, PNG."""
    cam = np.nan_to_num(_as_2d(cam, "cam").astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    width, height = (int(v) for v in size)
    cam = cv2.resize(np.clip(cam, 0.0, 1.0), (width, height), interpolation=cv2.INTER_LINEAR)
    _write_encoded(path, ".png", cv2.applyColorMap(_unit_to_u8(cam), cv2.COLORMAP_JET))


def save_overlay_jpg(path: os.PathLike | str, image, mask) -> None:
    """The picture with the mask tinted OVERLAY_TINT and its outline in CONTOUR_COLOR, JPEG.

    image: PIL image or (H, W, 3) uint8 RGB array. The overlay has the picture's
    resolution; a mask of another size (e.g. full size vs the reduced network input)
    is resized to it.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    mask = _as_2d(mask, "mask") != 0
    if mask.shape != (height, width):
        # Area averaging then a 50% threshold keeps thin parts better than nearest neighbour.
        resized = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_AREA)
        mask = resized >= 128
    out = rgb.copy()
    out[mask] = np.round(
        out[mask] * (1.0 - OVERLAY_ALPHA) + np.array(OVERLAY_TINT) * OVERLAY_ALPHA
    ).astype(np.uint8)
    bgr = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(height, width) / 300))
    cv2.drawContours(bgr, contours, -1, CONTOUR_COLOR[::-1], thickness)
    _write_encoded(path, ".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
