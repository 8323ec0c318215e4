"""The registry of the authors' checkpoints (`registry.json`, shipped in the package):
what each one is, the paper's figure for it, where it is published on the Hub and
where the authors released it."""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, fields
from importlib import resources

from ..errors import ImrsegError
from ..data.classes import BACKBONE_TITLES, BENCHMARK_TITLES

NAMESPACE_ENV = "IMRSEG_HUB_NAMESPACE"
# The checkpoint used when no `weights` is given. For labels of the user's own, the widest
# training wins: a COCO-20i checkpoint was trained on 60 classes (a PASCAL-5i one on 15),
# ResNet-50 beats VGG-16 in every table of the paper, and of the four COCO-20i folds,
# fold 2 was trained on person, cat, dog and cup (the bundled examples' labels among
# them; fold 0 holds out person and dog, fold 1 cup, fold 3 cat), at 42.4 1-shot mIoU
# on its held-out classes (Table 2; the folds' mean is 42.4).
DEFAULT_WEIGHTS = "imr-hsnet-resnet50-coco-fold2"
REGISTRY_FILE = "registry.json"


@dataclass(frozen=True)
class RegistryEntry:
    """One official checkpoint: what it is, the paper's figure for it, and where it is published."""

    name: str
    backbone: str
    benchmark: str
    fold: int
    steps: int
    paper_miou: float | None  # 1-shot mIoU (%) of this fold in the paper
    repo_id: str
    revision: str
    filename: str
    sha256: str  # of `filename`; empty until published
    source: str  # the authors' release of best_model.pt: their shared Google Drive folder
    file_id: str  # that file's Drive id, when its path there does not name it alone; empty: found by path

    @property
    def published(self) -> bool:
        """Whether the registry has a published copy: its sha256 is filled in on publishing."""
        return bool(self.sha256)

    def on_hub(self, namespace: str | None = None) -> bool:
        """Whether to ask the Hub for it: published, or under another namespace, whose
        own copies the registry cannot know about."""
        return self.published or self.location(namespace)[0] != self.repo_id

    @property
    def title(self) -> str:
        return (f"the authors' {BACKBONE_TITLES.get(self.backbone, self.backbone)} "
                f"{BENCHMARK_TITLES.get(self.benchmark, self.benchmark)} fold {self.fold} checkpoint")

    def by_hand(self) -> str:
        """The route that always works: the authors' file, downloaded in a browser."""
        return (f"download that fold's best_model.pt by hand from the authors' release ({self.source}) and pass "
                f"`weights` best_model.pt, or convert it once with `imrseg weights import best_model.pt --out "
                f"{self.name} --benchmark {self.benchmark} --fold {self.fold}` and pass `weights` {self.name}")

    def pick_file(self) -> str:
        return f"pick the right file with `imrseg weights download {self.name} --file-id ID`"

    def not_on_hub(self) -> str:
        """Why the Hub alone cannot give an entry with no published copy, and what can."""
        return (f"{self.name}: {self.title} is not on the Hub yet; `source` authors (or auto) fetches it from the "
                f"authors' release, or {self.by_hand()}")

    def location(self, namespace: str | None = None) -> tuple[str, str]:
        """(repo id, revision) to fetch from. Under another namespace the registry's
        revision, a commit of its own repo, means nothing, so `main` is used and the
        sha256 (of the content, wherever it is hosted) still pins the file."""
        namespace = hub_namespace(namespace)
        owner, repo = self.repo_id.split("/", 1)
        if namespace is None or namespace == owner:
            return self.repo_id, self.revision
        return f"{namespace}/{repo}", "main"


@dataclass(frozen=True)
class Registry:
    paper: dict
    entries: dict  # name -> RegistryEntry, in file order

    def closest(self, name: str, n: int = 3) -> list[str]:
        return difflib.get_close_matches(name, list(self.entries), n=n, cutoff=0.4)

    def find(self, backbone: str, benchmark: str | None, fold: int | None) -> RegistryEntry | None:
        return next((e for e in self.entries.values()
                     if (e.backbone, e.benchmark, e.fold) == (backbone, benchmark, fold)), None)


def load_registry() -> Registry:
    """The registry shipped with the package."""
    path = resources.files(__package__).joinpath(REGISTRY_FILE)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        keys = {f.name for f in fields(RegistryEntry)}
        entries = {}
        for raw in doc["entries"]:
            if set(raw) != keys:
                raise ValueError(f"entry {raw.get('name', '?')} has fields {sorted(raw)}, expected {sorted(keys)}")
            entries[raw["name"]] = RegistryEntry(**raw)
        return Registry(doc["paper"], entries)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImrsegError(f"{path}: not a valid weights registry ({exc}); reinstall imrseg") from None


def hub_namespace(namespace: str | None = None) -> str | None:
    """The Hub owner of the registry's repos: the argument, else $IMRSEG_HUB_NAMESPACE,
    else None (the registry's own)."""
    return namespace or os.environ.get(NAMESPACE_ENV) or None
