"""Few-shot data laid out as FSS-1000: one folder per class, holding `N.jpg`
images and their `N.png` masks.

`imrseg eval --benchmark fss` runs HSNet's FSS-1000 test on it (`open_fss`), and
`imrseg train --benchmark folder` trains on any such folder of one's own classes,
holding some classes out for validation (`open_folder`). Both give what
PASCAL-5i gives the evaluation: a data object that reads images and class-index
masks, and a `Split` (splits.py) whose entries are the episode queries.

HSNet's FSS-1000 loader, reproduced: class indices are 0-519 for its `trn` list,
520-759 for `val` and 760-999 for `test`, each list sorted; the queries are every
`.jpg` of the test classes (classes in order, files in sorted-name order, so
`10.jpg` comes before `2.jpg`); a support is `choice(range(1, 11))`, i.e. the
k-th of the class's images in numeric order, drawn again while it is the query;
a mask is foreground where its grey level is at least 128.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .datasets import open_image
from .lists import find_list, is_official, list_name, list_text, read_list, sha256_bytes
from .splits import Split

FSS_ROOT = "FSS-1000"
FSS_PARTS = ("trn", "val", "test")
IMAGE_SUFFIX, MASK_SUFFIX = ".jpg", ".png"
DEFAULT_VAL_SHARE = 0.2


@dataclass(frozen=True)
class FolderData:
    """Images and masks under `root`; an image is named `<class folder>/<file>.jpg`."""

    root: Path
    class_names: tuple[str, ...]  # every class index's folder name

    def class_id(self, name: str) -> int:
        return self.class_names.index(name.split("/", 1)[0])

    def image_path(self, name: str) -> Path:
        return self.root / name

    def mask_path(self, name: str) -> Path:
        return self.root / (name[:-len(IMAGE_SUFFIX)] + MASK_SUFFIX)

    def read_image(self, name: str) -> Image.Image:
        with open_image(self.image_path(name)) as img:
            return img.convert("RGB")

    def read_mask(self, name: str) -> np.ndarray:
        """(H, W) class indices, as the PASCAL masks: the image's class index + 1 on the
        foreground, 0 elsewhere. Foreground is grey level >= 128 (FSS-1000's 0/255
        masks), or 1 in a mask that holds only 0 and 1."""
        with open_image(self.mask_path(name)) as img:
            raw = np.asarray(img)
            if raw.ndim == 2 and raw.size and raw.max() <= 1:
                foreground = raw == 1
            else:
                foreground = np.asarray(img.convert("L")) >= 128
        return foreground.astype(np.uint16) * (self.class_id(name) + 1)


def _numeric_order(name: str):
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def scan_class(root: Path, folder: str) -> list[str]:
    """The images of one class folder in HSNet's query order, each with its mask."""
    path = root / folder
    try:
        files = sorted(os.listdir(path))
    except OSError as exc:
        raise InputError(f"{path}: cannot list the class folder ({exc.strerror or exc})") from None
    names = [f"{folder}/{f}" for f in files if f.lower().endswith(IMAGE_SUFFIX) and not f.startswith(".")]
    for name in names:
        mask = root / (name[:-len(IMAGE_SUFFIX)] + MASK_SUFFIX)
        if not mask.is_file():
            raise InputError(f"{root / name}: no mask {mask.name} next to it (each N.jpg needs its N.png)")
    if len(names) < 2:
        raise InputError(f"{path}: {len(names)} image(s); a class needs at least two (a support other than "
                         "the query)")
    return names


def _split(benchmark: str, root: Path, data: FolderData, class_ids: list[int], sha256: str | None = None,
           official: bool = False) -> Split:
    """The episodes of `class_ids`, every image a query in turn; `sha256` None
    identifies them by their listing."""
    entries, classwise = [], {}
    for c in class_ids:
        names = scan_class(root, data.class_names[c])
        entries += [(n, c) for n in names]
        classwise[c] = tuple(sorted(names, key=_numeric_order))
    if sha256 is None:
        sha256 = sha256_bytes(os.fsencode("\n".join(f"{c} {n}" for n, c in entries)))
    return Split(benchmark, None, root, sha256, official, tuple(class_ids), data.class_names, tuple(entries),
                 classwise)


# ------------------------------------------------------------------- FSS-1000
def _fss_list(part: str, splits_dir) -> tuple[list[str], bytes, bool]:
    name = list_name("fss", part)
    path = find_list(name, splits_dir)
    data = read_list(path)
    classes = sorted(line.strip() for line in list_text(data, str(path)).splitlines() if line.strip())
    if not classes:
        raise InputError(f"{path}: no class names")
    return classes, data, is_official(name, data)


def open_fss(data_root: os.PathLike | str, splits_dir: os.PathLike | str | None = None,
             part: str = "test") -> tuple[FolderData, Split]:
    """FSS-1000 under `data_root/FSS-1000` with HSNet's class lists, and the episodes
    of `part` (HSNet's test: one per image of the 240 test classes)."""
    root = Path(data_root) / FSS_ROOT
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; `data_root` must hold FSS-1000/ with one folder per class")
    lists = {p: _fss_list(p, splits_dir) for p in FSS_PARTS}
    names = tuple(n for p in FSS_PARTS for n in lists[p][0])
    data = FolderData(root, names)
    start = sum(len(lists[p][0]) for p in FSS_PARTS[:FSS_PARTS.index(part)])
    ids = list(range(start, start + len(lists[part][0])))
    missing = [n for n in lists[part][0] if not (root / n).is_dir()]
    if missing:
        raise InputError(f"{root}: {len(missing)} of the {part} classes are missing (e.g. {missing[0]})")
    _, text, official = lists[part]
    return data, _split("fss", root, data, ids, sha256_bytes(text), official)


# ------------------------------------------------------------ one's own folder
def list_classes(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise InputError(f"{root}: cannot list ({exc.strerror or exc}); `data_root` must be a folder with "
                         "one subfolder per class") from None


def held_out_classes(classes: list[str], val_classes: list[str] | None, val_share: float | None) -> list[str]:
    """The validation classes: those named, else a share of them picked with seed 0."""
    if val_classes:
        unknown = [c for c in val_classes if c not in classes]
        if unknown:
            raise InputError(f"`val_classes` {unknown[0]}: no such class folder (classes: "
                             f"{', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
        chosen = list(dict.fromkeys(val_classes))
    else:
        share = DEFAULT_VAL_SHARE if val_share is None else val_share
        if not 0 < share < 1:
            raise InputError(f"`val_share` {share}: expected a fraction between 0 and 1")
        count = max(1, round(share * len(classes)))
        chosen = [classes[i] for i in sorted(np.random.RandomState(0).permutation(len(classes))[:count])]
    if len(chosen) >= len(classes):
        raise InputError("every class is held out for validation; at least one must remain for training")
    return chosen


def open_folder(data_root: os.PathLike | str, val_classes: list[str] | None = None,
                val_share: float | None = None) -> tuple[FolderData, Split, Split]:
    """A folder of one's own classes: its data, the training split (the classes not
    held out) and the validation split (the held-out classes)."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; `data_root` must be a folder with one subfolder per class")
    classes = list_classes(root)
    if len(classes) < 2:
        raise InputError(f"{root}: {len(classes)} class folder(s); training needs at least two "
                         "(one to train on, one to validate on)")
    held_out = set(held_out_classes(classes, val_classes, val_share))
    data = FolderData(root, tuple(classes))
    train = _split("folder", root, data, [i for i, c in enumerate(classes) if c not in held_out])
    val = _split("folder", root, data, [i for i, c in enumerate(classes) if c in held_out])
    return data, train, val
