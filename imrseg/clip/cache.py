"""CLIP-CAMs of benchmark images, computed once and kept on disk.

Evaluation and training both need the coarse mask of many (image, class) pairs,
and the same pairs recur across folds, runs and epochs. Each map is a .npy file
keyed by the image's content hash and the class, under a folder keyed by
everything else the map depends on (vocabulary, prompt, CAM mode, size, CLIP
weights), so a moved data root or another fold finds them again."""
from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .cam import ClipCAM
from ..durable import atomic_write_bytes, file_sha256
from ..errors import InputError
from ..guard import OwnedFolder
from ..transforms import CAM_SIZE


class CamSource:
    """CLIP-CAMs (50x50) of benchmark images for a class, computed in batches.

    `cache_dir` None keeps them in memory for this run only; otherwise each map
    is also a .npy file under `cache_dir/cams/<setting key>/`, where the key
    covers the class vocabulary, prompt, CAM mode and size and `clip_id` (the
    CLIP weights' identity), and the file name the image's content hash and
    the class: a moved data root or another fold finds them again.

    The cache is shared by every run at once (the folds of several evaluations,
    a training run), so it is not locked: each file is named by what it holds and
    written atomically, through the guard (`guard.OwnedFolder`: no link below
    `cache_dir` is followed, reading or writing). A file read back must be exactly
    a finite float32 map of the size asked for; anything else is computed again
    and rewritten.
    """

    def __init__(self, cam: ClipCAM, classnames: Sequence[str], clip_id: str,
                 cache_dir: Path | None = None, size: int = CAM_SIZE):
        self.cam, self.classnames, self.size = cam, list(classnames), size
        setting = {"vocabulary": self.classnames, "template": cam.template, "mode": cam.mode,
                   "size": size, "clip": clip_id}
        self.key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:20]
        self._cache = None
        if cache_dir is not None:
            # Unlocked, the folder holds nothing to release after the block; only its checks are used.
            with OwnedFolder(cache_dir, parameter="cache_dir", lock=False) as cache:
                self._cache = cache
        self._memory: dict[tuple[str, int], np.ndarray] = {}
        self._digests: dict[Path, str] = {}
        self.computed = 0  # maps computed by CLIP in this run (not found in any cache)

    def _name(self, digest: str, class_id: int) -> str:
        return f"cams/{self.key}/{digest[:2]}/{digest}_{class_id}.npy"

    def _from_disk(self, digest: str, class_id: int) -> np.ndarray | None:
        name = self._name(digest, class_id)
        if self._cache is None or not self._cache.is_file(name):
            return None  # absent (a link there is refused when the map is written)
        try:
            return read_map(self._cache.read_bytes(name), self.size)
        except InputError:  # gone or unreadable since: computed again
            return None

    def _to_disk(self, digest: str, class_id: int, cam: np.ndarray) -> None:
        if self._cache is not None:
            atomic_write_bytes(self._cache.path(self._name(digest, class_id)), map_bytes(cam))

    def get(self, paths: Sequence[Path], class_ids: Sequence[int], load: Callable[[Path], object]) -> torch.Tensor:
        """(N, size, size) CAMs of the images at `paths` for `class_ids`; `load(path)`
        gives the PIL image of those that must be computed."""
        keys = []
        for path, class_id in zip(paths, class_ids):
            if path not in self._digests:
                self._digests[path] = file_sha256(path)
            keys.append((self._digests[path], int(class_id)))
        missing = []
        for key, path in zip(keys, paths):
            if key not in self._memory:
                cam = self._from_disk(*key)
                if cam is None:
                    missing.append((key, path))
                else:
                    self._memory[key] = cam
        missing = list(dict(missing).items())  # one computation per distinct (image, class)
        if missing:
            maps = self.cam([load(path) for _, path in missing], self.classnames,
                            [class_id for (_, class_id), _ in missing], size=self.size).numpy()
            for ((digest, class_id), _), cam in zip(missing, maps):
                cam = np.ascontiguousarray(cam, dtype=np.float32)
                self._memory[(digest, class_id)] = cam
                self._to_disk(digest, class_id, cam)
            self.computed += len(missing)
        return torch.from_numpy(np.stack([self._memory[key] for key in keys]))

    def get_by_name(self, data, names: Sequence[str], class_ids: Sequence[int],
                    read: Callable[[str], object] | None = None) -> torch.Tensor:
        """`get` for images of a dataset, by the names it gives them: `data.image_path(name)`
        locates each, and `read(name)` (default `data.read_image`, or images already
        decoded) gives the PIL image of those that must be computed."""
        read = read or data.read_image
        paths = [data.image_path(n) for n in names]
        by_path = dict(zip(paths, names))
        return self.get(paths, class_ids, lambda p: read(by_path[p]))


def map_bytes(cam: np.ndarray) -> bytes:
    """A map as the .npy file the cache keeps."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(cam, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def _header(size: int) -> bytes:
    """The .npy header `map_bytes` writes for a (size, size) map."""
    return map_bytes(np.zeros((size, size), np.float32))[:-size * size * 4]


def read_map(data: bytes, size: int) -> np.ndarray | None:
    """A cached map from its .npy bytes; None unless they are exactly what `map_bytes`
    writes for a finite (size, size) map (a damaged or foreign file is computed again).
    The header is compared with the one imrseg writes, never parsed."""
    header = _header(size)
    if len(data) != len(header) + size * size * 4 or not data.startswith(header):
        return None
    cam = np.frombuffer(data, dtype=np.float32, offset=len(header)).reshape(size, size)
    return cam.copy() if np.isfinite(cam).all() else None
