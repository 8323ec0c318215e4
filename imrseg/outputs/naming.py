"""Naming a query's outputs under the output folder.

`output_stem` / `plan_outputs` map each query to a path stem under the output
folder, never outside it and never shared by two queries. A stem `out/a/b` gets
`out/a/b.png` (mask), `b_overlay.jpg`, `b_cam.png`, `b_prob.png`, `b_step{t}.png`
(`masks` and `overlay` write them); a run of several classes puts each class's
tag (`file_tags`) before the CAM, probability and step suffixes."""
from __future__ import annotations

import itertools
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import InputError, show_path

MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = "_overlay.jpg"
CAM_SUFFIX = "_cam.png"
PROB_SUFFIX = "_prob.png"
OUTPUT_SUFFIXES = (MASK_SUFFIX, OVERLAY_SUFFIX, CAM_SUFFIX, PROB_SUFFIX)


def step_suffix(t: int) -> str:
    """Suffix of the probability map after refinement step `t`: `_step{t}.png`."""
    return f"_step{t}.png"


def output_path(stem: os.PathLike | str, suffix: str) -> Path:
    """The file for `suffix` (e.g. MASK_SUFFIX, step_suffix(2)) next to `stem`."""
    stem = Path(stem)
    return stem.with_name(stem.name + suffix)


def stem_of(mask: os.PathLike | str) -> Path:
    """The stem whose mask is `mask`: `output_path(stem_of(m), MASK_SUFFIX) == m`."""
    mask = Path(mask)
    return mask.with_name(mask.name.removesuffix(MASK_SUFFIX))


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


def _same_name(name: str) -> str:
    """What two names that one filesystem or another takes for the same one have in
    common: the name caseless (macOS, Windows, exFAT) and in one Unicode normal form
    (macOS stores `é` decomposed, `e` + accent; Linux keeps whichever it is given)."""
    return unicodedata.normalize("NFC", name).casefold()


def _key(path: Path) -> str:
    """Identity of a file to be written: real folder + name, as `_same_name`."""
    return _same_name(os.path.join(os.path.realpath(path.parent), path.name))


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
    then `<name>_<ext>_2`, `_3`, ... Deterministic for the same inputs, compared as
    `_same_name` does (caseless, one Unicode normal form).
    `tags` go before the CAM, probability and step suffixes: one per class of a
    multi-class run (`file_tags`), so `a_dog_prob.png` is claimed too.
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


def label_slugs(labels: Sequence[str]) -> list[str]:
    """A distinct file-name-safe form of each label, for per-class files
    (`traffic cone` -> `traffic_cone`; a clash gets `_2`, `_3`, ... as `_same_name` compares)."""
    taken, out = set(), []
    for label in labels:
        base = re.sub(r"[^\w-]+", "_", label.strip()).strip("_")[:64] or "class"
        slug, n = base, 2
        while _same_name(slug) in taken:
            slug, n = f"{base}_{n}", n + 1
        taken.add(_same_name(slug))
        out.append(slug)
    return out


def file_tags(labels: Sequence[str]) -> list[str]:
    """What each class's probability, CAM and step files insert before their suffix:
    nothing for a one-class run (`a_prob.png`), `_<slug>` for each of several
    (`a_dog_prob.png`, `a_traffic_cone_prob.png`)."""
    return [""] if len(labels) < 2 else [f"_{slug}" for slug in label_slugs(labels)]
