"""Where weights come from: the registry of the authors' checkpoints
(`weights/registry.json`), the Hugging Face Hub and local files.

Every command resolves `--weights` with `resolve_weights` and `--clip-weights`
with `resolve_clip`. Downloads go into the standard Hugging Face cache through
`hf_hub_download`; nothing that came from the network is unpickled (IMR-HSNet
and CLIP weights are read from safetensors files). torch, open_clip and the
model are imported inside the functions that need them, so listing the
registry stays fast."""
from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import os
import pickle
import posixpath
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from huggingface_hub import constants as hf_constants

from . import __version__
from .errors import CheckpointError, ImrsegError

NAMESPACE_ENV = "IMRSEG_HUB_NAMESPACE"
DEFAULT_WEIGHTS = "imr-hsnet-resnet50-pascal-fold0"
DEFAULT_CLIP_MODEL = "RN50-quickgelu"
DEFAULT_CLIP = f"{DEFAULT_CLIP_MODEL}:openai"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_KEYS = ("backbone", "benchmark", "fold", "steps", "class_names")
DEFAULT_STEPS = {"pascal": 2, "coco": 3}
BENCHMARK_TITLES = {"pascal": "PASCAL-5i", "coco": "COCO-20i"}
PAPER_TABLES = {"pascal": "Table 1", "coco": "Table 2"}

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json")


# ------------------------------------------------------------------ registry
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
    source: str  # the authors' release of best_model.pt

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


def registry_path() -> Path:
    """weights/registry.json of a source checkout (also an editable install), else
    the copy a wheel installs as a data file."""
    source = Path(__file__).resolve().parent.parent / "weights" / "registry.json"
    if source.is_file():
        return source
    try:
        installed = importlib.metadata.files("imrseg") or []
    except importlib.metadata.PackageNotFoundError:
        installed = []
    for file in installed:
        if file.name == "registry.json" and file.parent.name == "weights":
            return Path(file.locate()).resolve()
    raise ImrsegError(f"the weights registry is missing (looked for {source} and in the installed "
                      "package); reinstall imrseg")


def load_registry() -> Registry:
    path = registry_path()
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
        raise ImrsegError(f"{path}: not a valid weights registry ({exc})") from None


def hub_namespace(namespace: str | None = None) -> str | None:
    """The Hub owner of the registry's repos: the argument, else $IMRSEG_HUB_NAMESPACE,
    else None (the registry's own)."""
    return namespace or os.environ.get(NAMESPACE_ENV) or None


# --------------------------------------------------------------- downloading
def hf_cache_dir() -> str:
    # huggingface_hub reads these once at import; reading them per call lets a
    # program (or a test) point the cache elsewhere after importing it.
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return hf_constants.HF_HUB_CACHE


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def hf_offline() -> bool:
    return hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


class _RichBar:
    """The download bar, drawn by rich on stderr, with the part of tqdm's interface
    that hf_hub_download drives (it also passes tqdm's unit options, ignored here)."""

    def __init__(self, *, desc: str = "", total: float | None = None, initial: float = 0, **_tqdm_options):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._task = self._progress.add_task(desc, total=total, completed=initial)
        self._progress.start()

    def update(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> "_RichBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fetch(repo_id: str, filename: str, revision: str | None = None, *, spec: str, download: str,
          cache_first: bool = False) -> Path:
    """One file of a Hub model repo, from the HF cache or downloaded into it; errors
    name `spec` and, when the file is out of reach, the `download` command to run.
    `cache_first` skips asking the Hub whether a branch moved: for files whose
    content the caller has pinned otherwise (a registry entry, a CLIP tag)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.utils import are_progress_bars_disabled

    cache_dir, endpoint, where = hf_cache_dir(), hf_endpoint(), f"{repo_id}@{revision or 'main'}"
    if cache_first:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    try:
        return Path(hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
            local_files_only=hf_offline(), library_name="imrseg", library_version=__version__,
            tqdm_class=None if are_progress_bars_disabled() else _RichBar))
    except RepositoryNotFoundError:
        raise ImrsegError(f"{spec}: Hub repository {repo_id} not found at {endpoint} (or it is private: "
                          "log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ImrsegError(f"{spec}: revision {revision} not found in Hub repository {repo_id}") from None
    except RemoteEntryNotFoundError:
        raise CheckpointError(f"{spec}: {where} has no {filename}; imrseg reads the Hub layout "
                              f"({CONFIG_FILE} + {WEIGHTS_FILE}, see `imrseg weights import`)") from None
    except LocalEntryNotFoundError:
        reason = "offline (HF_HUB_OFFLINE is set)" if hf_offline() else f"cannot reach {endpoint}"
        raise ImrsegError(f"{spec}: {reason} and {filename} of {where} is not in the cache {cache_dir}; "
                          f"run `{download}` where there is network, "
                          "or pass a local file") from None
    except (HfHubHTTPError, HFValidationError, OSError) as exc:
        raise ImrsegError(f"{spec}: downloading {filename} from {where} failed: {_first_line(exc)}") from None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _snapshot_commit(path: Path) -> str | None:
    """The commit a file of the HF cache belongs to (…/snapshots/<commit>/<file>)."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


# ------------------------------------------------------------ IMR-HSNet weights
@dataclass(frozen=True)
class WeightsSource:
    """What a `--weights` spec names, before anything is read or downloaded."""

    spec: str
    kind: str  # "registry" | "hub" | "folder" | "official"
    path: Path | None = None  # folder or best_model.pt, for the local kinds
    entry: RegistryEntry | None = None
    repo_id: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class WeightsFiles:
    config: Path
    weights: Path
    sha256: str


@dataclass
class WeightsInfo:
    spec: str
    kind: str  # "registry" | "hub" | "folder" | "official" (an authors' best_model.pt, converted in memory)
    path: str  # the weights file that was loaded
    sha256: str
    backbone: str
    benchmark: str | None
    fold: int | None
    steps: int
    class_names: list[str] | None
    parameters: int
    name: str | None = None  # registry name
    repo_id: str | None = None
    revision: str | None = None  # as asked for
    commit: str | None = None  # the commit the cached files belong to
    paper_miou: float | None = None

    def origin(self) -> str:
        if self.repo_id:
            commit = f" (commit {self.commit})" if self.commit else ""
            return f"hf://{self.repo_id}@{self.revision or 'main'}{commit}, cached at {self.path}"
        return self.path

    def to_dict(self) -> dict:
        return {**asdict(self), "origin": self.origin()}


def _looks_like_path(spec: str) -> bool:
    """A spec meant as a file or folder: repo ids have one slash and no file suffix."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or spec.endswith(_FILE_SUFFIXES)


def locate_weights(spec: str | None = None, namespace: str | None = None) -> WeightsSource:
    """Read a spec: an existing folder (Hub layout) or file (authors' best_model.pt),
    a registry name, or a Hub repo id with an optional @revision."""
    spec = spec or DEFAULT_WEIGHTS
    path = Path(spec).expanduser()
    if path.is_dir():
        return WeightsSource(spec, "folder", path=path)
    if path.is_file():
        return WeightsSource(spec, "official", path=path)
    registry = load_registry()
    if spec in registry.entries:
        entry = registry.entries[spec]
        repo_id, revision = entry.location(namespace)
        return WeightsSource(spec, "registry", entry=entry, repo_id=repo_id, revision=revision)
    repo_id, _, revision = spec.partition("@")
    if _REPO_ID.fullmatch(repo_id) and not _looks_like_path(repo_id):
        return WeightsSource(spec, "hub", repo_id=repo_id, revision=revision or None)
    if _looks_like_path(spec):
        raise ImrsegError(f"{spec}: no such file or folder")
    closest = registry.closest(spec)
    hint = f"closest registry names: {', '.join(closest)}" if closest else "see `imrseg weights list`"
    raise ImrsegError(f"{spec}: not a registry name, Hub repo id (owner/name[@revision]) or existing path; {hint}")


def fetch_weights(source: WeightsSource) -> WeightsFiles:
    """config.json and model.safetensors of a Hub-layout source, downloaded if need be,
    with the registry's sha256 checked. A mismatch leaves the cached file alone."""
    if source.kind == "folder":
        config, weights = source.path / CONFIG_FILE, source.path / WEIGHTS_FILE
        missing = [p.name for p in (config, weights) if not p.is_file()]
        if missing:
            raise CheckpointError(f"{source.path}: not a checkpoint folder in the Hub layout (missing "
                                  f"{' and '.join(missing)}); convert an authors' best_model.pt with "
                                  "`imrseg weights import`")
        return WeightsFiles(config, weights, file_sha256(weights))
    if source.kind not in ("registry", "hub"):
        raise ImrsegError(f"{source.spec}: a local checkpoint, nothing to download")
    entry = source.entry
    pinned = entry is not None or bool(source.revision and _COMMIT.fullmatch(source.revision))
    options = {"spec": source.spec, "download": f"imrseg weights download {source.spec}", "cache_first": pinned}
    config = fetch(source.repo_id, CONFIG_FILE, source.revision, **options)
    weights = fetch(source.repo_id, entry.filename if entry else WEIGHTS_FILE, source.revision, **options)
    sha256 = file_sha256(weights)
    if entry is not None and entry.sha256 and sha256 != entry.sha256.lower():
        raise CheckpointError(f"{source.spec}: sha256 mismatch for {weights}: got {sha256}, the registry expects "
                              f"{entry.sha256}; nothing was deleted: check the registry entry and "
                              f"hf://{source.repo_id}@{source.revision}")
    if entry is not None:
        _check_config_matches(read_config(config, source.spec), entry, source.spec)
    return WeightsFiles(config, weights, sha256)


def read_config(path: Path, spec: str) -> dict:
    """An imrseg config.json; anything else (another model's config) is refused."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{spec}: {path} is not readable JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict) or "backbone" not in config or not set(config) <= set(CONFIG_KEYS):
        keys = ", ".join(sorted(config)) if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{spec}: {path} is not an IMR-HSNet config (keys: {keys}; expected backbone, "
                              "benchmark, fold, steps, class_names): a checkpoint of another model?")
    return config


def _check_config_matches(config: dict, entry: RegistryEntry, spec: str) -> None:
    found = (config.get("backbone"), config.get("benchmark"), config.get("fold"))
    expected = (entry.backbone, entry.benchmark, entry.fold)
    if found != expected:
        raise CheckpointError(f"{spec}: the Hub repository holds {found[0]} / {found[1]} / fold {found[2]}, "
                              f"the registry says {expected[0]} / {expected[1]} / fold {expected[2]}")


def _build(config: dict, spec: str):
    from .models import IMRHSNet

    try:
        return IMRHSNet(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{spec}: unusable config ({_first_line(exc)})") from None


def _load_safetensors(path: Path, spec: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{spec}: {path} is not a readable safetensors file ({_first_line(exc)})") from None


def resolve_weights(spec: str | None = None, namespace: str | None = None, device="cpu"):
    """(IMRHSNet in eval mode on `device`, WeightsInfo) for any `--weights` spec
    (default: DEFAULT_WEIGHTS)."""
    source = locate_weights(spec, namespace)
    if source.kind == "official":
        from .models import IMRHSNet

        model, weights, sha256 = IMRHSNet.from_official(source.path), source.path, file_sha256(source.path)
    else:
        files = fetch_weights(source)
        from .models.checkpoint import load_into  # after fetching: an unusable spec fails before torch loads

        model = _build(read_config(files.config, source.spec), source.spec)
        load_into(model, _load_safetensors(files.weights, source.spec), str(files.weights))
        weights, sha256 = files.weights, files.sha256
    model = model.to(device).eval()
    entry = source.entry or load_registry().find(model.backbone_name, model.benchmark, model.fold)
    info = WeightsInfo(
        spec=source.spec, kind=source.kind, path=str(weights), sha256=sha256, backbone=model.backbone_name,
        benchmark=model.benchmark, fold=model.fold, steps=model.steps, class_names=model.class_names,
        parameters=sum(p.numel() for p in model.parameters()),
        name=source.entry.name if source.entry else None, repo_id=source.repo_id, revision=source.revision,
        commit=_snapshot_commit(Path(weights)) if source.repo_id else None,
        paper_miou=entry.paper_miou if entry else None)
    return model, info


def is_cached(entry: RegistryEntry, namespace: str | None = None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo_id, revision = entry.location(namespace)
    return all(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=hf_cache_dir(), revision=revision), str)
               for f in (CONFIG_FILE, entry.filename))


# --------------------------------------------------- importing and publishing
def checkpoint_config(backbone: str, benchmark: str | None = None, fold: int | None = None) -> dict:
    """config.json of a converted checkpoint; the class names need both benchmark and fold."""
    from .classes import NUM_FOLDS, fold_class_names

    if benchmark is not None and benchmark not in DEFAULT_STEPS:
        raise ImrsegError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(DEFAULT_STEPS)}")
    if fold is not None and (benchmark is None or fold not in range(NUM_FOLDS)):
        raise ImrsegError(f"fold {fold}: a fold is 0-{NUM_FOLDS - 1} and needs a benchmark")
    return {"backbone": backbone, "benchmark": benchmark, "fold": fold,
            "steps": DEFAULT_STEPS.get(benchmark, 2),
            "class_names": fold_class_names(benchmark, fold) if fold is not None else None}


def import_official(checkpoint: str | os.PathLike, out: str | os.PathLike, benchmark: str | None = None,
                    fold: int | None = None) -> WeightsInfo:
    """Convert an authors' best_model.pt into a folder in the Hub layout
    (config.json + model.safetensors + a model card); nothing pickled is written."""
    from .models.checkpoint import infer_backbone, load_into, read_state_dict

    state_dict = read_state_dict(checkpoint)
    config = checkpoint_config(infer_backbone(state_dict, os.fspath(checkpoint)), benchmark, fold)
    model = _build(config, os.fspath(checkpoint))
    load_into(model, state_dict, os.fspath(checkpoint))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImrsegError(f"{out}: exists and is not a folder")
    model.save_pretrained(out)
    _, info = resolve_weights(str(out))
    # save_pretrained wrote the mixin's generic card; ours says where the weights come from.
    (out / "README.md").write_text(model_card(info), encoding="utf-8")
    return info


def model_card(info: WeightsInfo, repo_id: str = "<repo id>") -> str:
    """The README.md of a published checkpoint: source, paper, the fold's classes and the paper's figure."""
    from huggingface_hub import ModelCardData

    registry = load_registry()
    paper = registry.paper
    entry = registry.find(info.backbone, info.benchmark, info.fold)
    benchmark = BENCHMARK_TITLES.get(info.benchmark, "unknown benchmark")
    fold = f"fold {info.fold}" if info.fold is not None else "unknown fold"
    figure = (f"{entry.paper_miou:.1f} ({PAPER_TABLES[info.benchmark]} of the paper)"
              if entry and entry.paper_miou is not None else "not recorded")
    source = entry.source if entry else "not recorded"
    classes = ", ".join(info.class_names) if info.class_names else "unknown"
    data = ModelCardData(library_name="imrseg", pipeline_tag="image-segmentation",
                         tags=["few-shot-segmentation", "imr-hsnet", "pytorch_model_hub_mixin"])
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# IMR-HSNet, {info.backbone} backbone, {benchmark} {fold}", "",
        f"The authors' weights of IMR-HSNet from *{paper['title']}* ({paper['authors']}, {paper['venue']}, "
        f"[arXiv:{paper['arxiv']}](https://arxiv.org/abs/{paper['arxiv']})), converted without change from "
        f"their `best_model.pt` ({source}) to safetensors with `imrseg weights import`. "
        f"Code of the paper: {paper['code']}.", "",
        "| | |", "|---|---|",
        f"| backbone | {info.backbone} |",
        f"| benchmark | {benchmark} |",
        f"| test fold | {info.fold if info.fold is not None else 'unknown'} |",
        f"| refinement steps | {info.steps} |",
        f"| the fold's classes | {classes} |",
        f"| 1-shot mIoU (%) in the paper | {figure} |",
        f"| sha256 of {WEIGHTS_FILE} | `{info.sha256}` |", "",
        "## Use", "",
        "```bash", "pip install imrseg", f"imrseg weights info {repo_id}", "```", "",
        "```python", "from imrseg.models import IMRHSNet", "",
        f'model = IMRHSNet.from_pretrained("{repo_id}")', "```", "",
        "## Citation", "",
        f"Wang et al., {paper['title']}, {paper['venue']}, doi:{paper['doi']}.", ""])


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> tuple[str, str, str]:
    """Publish a converted folder (its config.json and model.safetensors, exactly as
    they are, with a generated model card) in one commit; returns (commit url,
    commit id, sha256 of the weights) for the registry entry."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise ImrsegError(f"{folder}: not a folder; convert an authors' best_model.pt with `imrseg weights import`")
    _, info = resolve_weights(str(folder))  # refuse to publish anything that does not load
    operations = [CommitOperationAdd(CONFIG_FILE, str(folder / CONFIG_FILE)),
                  CommitOperationAdd(WEIGHTS_FILE, str(folder / WEIGHTS_FILE)),
                  CommitOperationAdd("README.md", model_card(info, repo_id).encode("utf-8"))]
    api = HfApi(endpoint=hf_endpoint())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations=operations, commit_message=(
            f"IMR-HSNet ({info.backbone}, {BENCHMARK_TITLES.get(info.benchmark, 'unknown benchmark')}, fold "
            f"{info.fold}): the authors' best_model.pt as safetensors"))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ImrsegError(f"{repo_id}: publishing {folder} failed ({_first_line(exc)}); a write token is "
                          "needed: `hf auth login` or HF_TOKEN") from None
    return commit.commit_url, commit.oid, info.sha256


# ---------------------------------------------------------------------- CLIP
@dataclass(frozen=True)
class ClipSource:
    spec: str
    kind: str  # "tag" (open_clip MODEL:PRETRAINED) | "hub" (a repo in open_clip's layout) | "file"
    model_name: str | None = None  # None for "hub": its open_clip_config.json says
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    filename: str = CLIP_WEIGHTS_FILE
    quick_gelu: bool = False


@dataclass
class ClipInfo:
    spec: str
    kind: str
    model_name: str
    path: str
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def locate_clip(spec: str | None = None) -> ClipSource:
    """Read a `--clip-weights` spec: an existing file (a state dict for RN50-quickgelu),
    MODEL:FILE, an open_clip MODEL:PRETRAINED tag whose weights are on the Hub
    (default RN50-quickgelu:openai), or a Hub repo id[@revision] in open_clip's layout."""
    import open_clip

    spec = spec or DEFAULT_CLIP
    if Path(spec).expanduser().is_file():
        return ClipSource(spec, "file", DEFAULT_CLIP_MODEL, path=Path(spec).expanduser())
    model, colon, tag = spec.partition(":")
    if colon:
        if model not in open_clip.list_models():
            closest = difflib.get_close_matches(model, open_clip.list_models(), n=3)
            raise ImrsegError(f"{spec}: unknown open_clip model {model!r}"
                              + (f"; closest: {', '.join(closest)}" if closest else ""))
        if Path(tag).expanduser().is_file():
            return ClipSource(spec, "file", model, path=Path(tag).expanduser())
        cfg = open_clip.get_pretrained_cfg(model, tag)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise ImrsegError(f"{spec}: no pretrained weights {tag!r} for {model} and no such file "
                              f"(open_clip tags: {tags})")
        if not cfg.get("hf_hub"):
            raise ImrsegError(f"{spec}: open_clip hosts these weights outside the Hub ({cfg.get('url')}); "
                              "download them and pass the file with --clip-weights")
        # open_clip's convention: "owner/name/" (its default file) or "owner/name/file".
        repo_id, filename = posixpath.split(cfg["hf_hub"])
        return ClipSource(spec, "tag", model, repo_id=repo_id, filename=_safetensors_name(filename),
                          quick_gelu=bool(cfg.get("quick_gelu")))
    repo_id, _, revision = spec.partition("@")
    if _REPO_ID.fullmatch(repo_id) and not _looks_like_path(repo_id):
        return ClipSource(spec, "hub", repo_id=repo_id, revision=revision or None)
    raise ImrsegError(f"{spec}: not a file, open_clip MODEL:PRETRAINED tag or Hub repo id (owner/name[@revision])")


def _safetensors_name(filename: str) -> str:
    """The safetensors twin open_clip publishes next to a pickled file (only that is read)."""
    if not filename:
        return CLIP_WEIGHTS_FILE
    stem, ext = os.path.splitext(filename)
    return filename if ext == ".safetensors" else stem + ".safetensors"


def fetch_clip(source: ClipSource) -> tuple[Path, Path | None]:
    """(weights, open_clip_config.json or None) of a CLIP source, downloaded if need be."""
    if source.kind == "file":
        return source.path, None
    pinned = source.kind == "tag" or bool(source.revision and _COMMIT.fullmatch(source.revision))
    options = {"spec": source.spec, "download": f"imrseg weights download --clip-weights {source.spec}",
               "cache_first": pinned}
    config = fetch(source.repo_id, CLIP_CONFIG_FILE, source.revision, **options) if source.kind == "hub" else None
    weights = fetch(source.repo_id, source.filename, source.revision, **options)
    return weights, config


def resolve_clip(spec: str | None = None, device="cpu"):
    """(open_clip model in eval mode on `device`, its tokenizer, ClipInfo) for any
    `--clip-weights` spec (default: open_clip's OpenAI RN50, RN50-quickgelu:openai)."""
    import open_clip

    source = locate_clip(spec)
    weights, config = fetch_clip(source)
    try:
        if source.kind == "hub":
            # open_clip reads a Hub-layout repo from a folder holding exactly its config and
            # weights; the cache snapshot may hold other files of the repo.
            with tempfile.TemporaryDirectory() as folder:
                _link(config, Path(folder) / CLIP_CONFIG_FILE)
                _link(weights, Path(folder) / CLIP_WEIGHTS_FILE)
                model = open_clip.create_model(f"local-dir:{folder}")
                tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
            model_name = f"hf-hub:{source.repo_id}"
        else:
            model = open_clip.create_model(source.model_name, pretrained=str(weights),
                                           force_quick_gelu=source.quick_gelu)
            tokenizer, model_name = open_clip.get_tokenizer(source.model_name), source.model_name
    except (RuntimeError, ValueError, KeyError, OSError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{source.spec}: {weights} does not load as open_clip "
                              f"{source.model_name or source.repo_id} ({_first_line(exc)})") from None
    if model_name == DEFAULT_CLIP_MODEL:
        from .cam import openai_fp16_round_trip

        openai_fp16_round_trip(model)  # as the authors' clip.load (no-op for OpenAI's own weights)
    info = ClipInfo(spec=source.spec, kind=source.kind, model_name=model_name, path=str(weights),
                    repo_id=source.repo_id, revision=source.revision,
                    commit=_snapshot_commit(weights) if source.repo_id else None)
    return model.to(device).eval(), tokenizer, info


def _link(target: Path, link: Path) -> None:
    try:
        link.symlink_to(Path(target).resolve())
    except OSError:  # no symlinks here (e.g. Windows without the privilege)
        shutil.copyfile(target, link)
