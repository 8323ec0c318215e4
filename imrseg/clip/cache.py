"""CLIP-CAMs of benchmark images, computed once and kept on disk.

Evaluation and training both need the coarse mask of many (image, class) pairs,
and the same pairs recur across folds, runs and epochs. Each map is a .npy file
keyed by the image's content hash and the class, under a folder keyed by
everything else the map depends on (vocabulary, prompt, CAM mode, size, CLIP
weights), so a moved data root or another fold finds them again."""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .cam import ClipCAM
from ..durable import atomic_write_bytes, file_sha256
from ..transforms import CAM_SIZE


class CamSource:
    """CLIP-CAMs (50x50) of benchmark images for a class, computed in batches.

    `cache_dir` None keeps them in memory for this run only; otherwise each map
    is also a .npy file under `cache_dir/cams/<setting key>/`, where the key
    covers the class vocabulary, prompt, CAM mode and size and `clip_id` (the
    CLIP weights' identity), and the file name the image's content hash and
    the class: a moved data root or another fold finds them again.
    """

    def __init__(self, cam: ClipCAM, classnames: Sequence[str], clip_id: str,
                 cache_dir: Path | None = None, size: int = CAM_SIZE):
        self.cam, self.classnames, self.size = cam, list(classnames), size
        setting = {"vocabulary": self.classnames, "template": cam.template, "mode": cam.mode,
                   "size": size, "clip": clip_id}
        key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = Path(cache_dir) / "cams" / key if cache_dir is not None else None
        self._memory: dict[tuple[str, int], np.ndarray] = {}
        self._digests: dict[Path, str] = {}
        self.computed = 0  # maps computed by CLIP in this run (not found in any cache)

    def _file(self, digest: str, class_id: int) -> Path:
        return self.folder / digest[:2] / f"{digest}_{class_id}.npy"

    def _from_disk(self, digest: str, class_id: int) -> np.ndarray | None:
        if self.folder is None:
            return None
        try:
            cam = np.load(self._file(digest, class_id), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # absent, or damaged: computed again and rewritten
        return cam if cam.shape == (self.size, self.size) and cam.dtype == np.float32 else None

    def _to_disk(self, digest: str, class_id: int, cam: np.ndarray) -> None:
        if self.folder is not None:
            buffer = io.BytesIO()
            np.save(buffer, cam, allow_pickle=False)
            atomic_write_bytes(self._file(digest, class_id), buffer.getvalue())

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
