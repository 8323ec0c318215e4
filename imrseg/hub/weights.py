"""IMR-HSNet weights from any `--weights` spec: a registry name, a Hub repo id, a
folder in the Hub layout (config.json + model.safetensors) or an authors'
`best_model.pt`. A registry name is found in the HF cache, then imrseg's cache of
the authors' release, then on the Hub (published entries), then in the authors'
release itself (`release`). `resolve_weights` gives the loaded model and what it is;
`resolve_steps` is the one rule for how many refinement steps a run uses."""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from ..durable import file_sha256
from ..data.classes import BACKBONE_TITLES, paper_steps
from ..errors import CheckpointError, ImrsegError, InputError, NetworkError, Note, one_line, show_path
from ..guard import Fields
from ..paths import hf_cache_dir
from .download import COMMIT, fetch, hf_offline, is_repo_id, looks_like_path, snapshot_commit
from .registry import DEFAULT_WEIGHTS, RegistryEntry, load_registry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_KEYS = ("backbone", "benchmark", "fold", "steps", "class_names")
ORIGINS = ("auto", "hub", "authors")  # where a registry entry may come from


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
    release: str | None = None  # for a copy of the authors' release: where it came from


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
    release: str | None = None  # the authors' file it was converted from, for a registry entry fetched there

    def origin(self) -> str:
        if self.release:
            return f"{self.release}, converted at {self.path}"
        if self.repo_id:
            commit = f" (commit {self.commit})" if self.commit else ""
            return f"hf://{self.repo_id}@{self.revision or 'main'}{commit}, cached at {self.path}"
        return self.path

    def to_dict(self) -> dict:
        return {**asdict(self), "origin": self.origin()}


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
    if is_repo_id(repo_id):
        return WeightsSource(spec, "hub", repo_id=repo_id, revision=revision or None)
    if looks_like_path(spec):
        raise ImrsegError(f"{spec}: no such file or folder")
    closest = registry.closest(spec)
    hint = f"closest registry names: {', '.join(closest)}" if closest else "see `imrseg weights list`"
    raise ImrsegError(f"{spec}: not a registry name, Hub repo id (owner/name[@revision]) or existing path; {hint}")


def fetch_weights(source: WeightsSource, origin: str = "auto", file_id: str | None = None,
                  refresh: bool = False) -> WeightsFiles:
    """config.json and model.safetensors of a Hub-layout source, downloaded if need be,
    with the registry's sha256 checked (a mismatch leaves the cached file alone). A
    registry entry comes from where `origin` allows ("auto": the HF cache, imrseg's
    cache of the authors' release, the Hub for a published entry, the authors' release);
    `file_id` and `refresh` are the authors' release's (see `release.fetch_release`)."""
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
    if source.entry is not None:
        return _fetch_entry(source, origin, file_id, refresh)
    if file_id or refresh or origin == "authors":
        raise InputError(f"{source.spec}: not a registry name; the authors' release (`source` authors, `file_id`, "
                         "`refresh`) holds only the registry's checkpoints")
    return _fetch_hub(source)


def _fetch_entry(source: WeightsSource, origin: str, file_id: str | None, refresh: bool) -> WeightsFiles:
    from .release import cached_release, fetch_release

    entry = source.entry
    if origin not in ORIGINS:
        raise InputError(f"`source` must be one of {', '.join(ORIGINS)}, not {origin!r}")
    if origin == "hub" and (file_id or refresh):
        raise InputError("`file_id` and `refresh` are for the authors' release, not `source` hub")
    on_hub = origin != "authors" and not (file_id or refresh) and (
        entry.published or source.repo_id != entry.repo_id)
    if origin == "hub" and not on_hub:
        raise ImrsegError(entry.not_on_hub())
    if on_hub and _in_hf_cache(source.repo_id, source.revision, (CONFIG_FILE, entry.filename)):
        return _fetch_hub(source)
    if origin != "hub" and not (file_id or refresh):
        cached = cached_release(entry)
        if cached is not None:
            return cached
    if on_hub:
        try:
            return _fetch_hub(source)
        except NetworkError:
            if origin == "hub" or hf_offline():  # offline, the authors' release is out of reach too
                raise
    return fetch_release(entry, source.spec, file_id, refresh)


def _fetch_hub(source: WeightsSource) -> WeightsFiles:
    entry = source.entry
    pinned = entry is not None or bool(source.revision and COMMIT.fullmatch(source.revision))
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
    """An imrseg config.json, every value checked (`guard.Fields`); anything else
    (another model's config, a damaged or crafted one) is a one-line CheckpointError."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{spec}: {show_path(path)} is not readable JSON ({one_line(exc)})") from None
    if not isinstance(config, dict) or "backbone" not in config or not set(config) <= set(CONFIG_KEYS):
        keys = sorted(config) if isinstance(config, dict) else [type(config).__name__]
        shown = ", ".join(show_path(key) for key in keys[:8]) + (", ..." if len(keys) > 8 else "")
        raise CheckpointError(f"{spec}: {show_path(path)} is not an IMR-HSNet config (keys: {shown}; expected "
                              "backbone, benchmark, fold, steps, class_names): a checkpoint of another model?")
    fields = Fields(config, f"{spec}: {show_path(path)}")
    try:
        return {"backbone": fields.text("backbone", choices=BACKBONE_TITLES),
                "benchmark": fields.text("benchmark", optional=True),
                "fold": fields.integer("fold", 0, optional=True),
                "steps": fields.integer("steps", 1, optional=True),
                "class_names": fields.texts("class_names") if fields.has("class_names") else None}
    except InputError as exc:
        raise CheckpointError(str(exc)) from None


def _check_config_matches(config: dict, entry: RegistryEntry, spec: str) -> None:
    found = (config.get("backbone"), config.get("benchmark"), config.get("fold"))
    expected = (entry.backbone, entry.benchmark, entry.fold)
    if found != expected:
        raise CheckpointError(f"{spec}: the Hub repository holds {found[0]} / {found[1]} / fold {found[2]}, "
                              f"the registry says {expected[0]} / {expected[1]} / fold {expected[2]}")


def build_model(config: dict, spec: str):
    from ..models import IMRHSNet

    try:
        return IMRHSNet(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{spec}: unusable config ({one_line(exc)})") from None


def config_bytes(config: dict) -> bytes:
    """config.json of the Hub layout, as the Hub mixin's `save_pretrained` writes it."""
    return json.dumps(config, sort_keys=True, indent=2).encode("utf-8")


def safetensors_bytes(model) -> bytes:
    """model.safetensors of the Hub layout, made in memory: byte for byte what the Hub
    mixin's `save_pretrained` writes (every tensor contiguous, no metadata)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def _load_safetensors(path: Path, spec: str, model) -> dict:
    """The file's tensors for `model`, their declared shapes checked against the model's
    from the file's header before any tensor is read."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from ..models.checkpoint import check_shapes

    try:
        with safe_open(str(path), framework="pt", device="cpu") as header:
            check_shapes(model, {k: tuple(header.get_slice(k).get_shape()) for k in header.keys()}, str(path))
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{spec}: {path} is not a readable safetensors file ({one_line(exc)})") from None


def resolve_weights(spec: str | None = None, namespace: str | None = None, device="cpu"):
    """(IMRHSNet in eval mode on `device`, WeightsInfo) for any `--weights` spec
    (default: DEFAULT_WEIGHTS)."""
    source = locate_weights(spec, namespace)
    if source.kind == "official":
        from ..models import IMRHSNet

        model, weights, sha256 = IMRHSNet.from_official(source.path), source.path, file_sha256(source.path)
        release = None
    else:
        files = fetch_weights(source)
        from ..models.checkpoint import load_into  # after fetching: an unusable spec fails before torch loads

        model = build_model(read_config(files.config, source.spec), source.spec)
        load_into(model, _load_safetensors(files.weights, source.spec, model), str(files.weights))
        weights, sha256, release = files.weights, files.sha256, files.release
    model = model.to(device).eval()
    entry = source.entry or load_registry().find(model.backbone_name, model.benchmark, model.fold)
    info = WeightsInfo(
        spec=source.spec, kind=source.kind, path=str(weights), sha256=sha256, backbone=model.backbone_name,
        benchmark=model.benchmark, fold=model.fold, steps=model.steps, class_names=model.class_names,
        parameters=sum(p.numel() for p in model.parameters()),
        name=source.entry.name if source.entry else None, repo_id=None if release else source.repo_id,
        revision=None if release else source.revision,
        commit=snapshot_commit(Path(weights)) if source.repo_id and not release else None,
        paper_miou=entry.paper_miou if entry else None, release=release)
    return model, info


def cached_from(entry: RegistryEntry, namespace: str | None = None) -> str | None:
    """Where the cached copy of an entry came from: "hub" (the HF cache), "authors"
    (imrseg's cache of their release), or None when neither holds it."""
    from .release import cached_release

    if _in_hf_cache(*entry.location(namespace), (CONFIG_FILE, entry.filename)):
        return "hub"
    return "authors" if cached_release(entry, verify=False) is not None else None


def is_cached(entry: RegistryEntry, namespace: str | None = None) -> bool:
    return cached_from(entry, namespace) is not None


def _in_hf_cache(repo_id: str, revision: str | None, files) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=hf_cache_dir(), revision=revision), str)
               for f in files)


def resolve_steps(info: WeightsInfo, requested: int | None = None, benchmark: str | None = None) -> int:
    """The one rule for a run's refinement steps: `requested` (the run's `steps`) when given;
    else the checkpoint's own (its config.json, written by the registry's publisher or
    `weights import`); else, for weights that do not record their benchmark (an
    authors' best_model.pt read directly), the paper's figure for `benchmark` (the
    one being evaluated) or the model's default, said once with how to change it."""
    if requested is not None:
        if requested < 1:
            raise InputError(f"`steps` must be 1 or more, not {requested}")
        return requested
    if info.benchmark is not None:
        return info.steps
    steps = paper_steps(benchmark) if benchmark else info.steps
    warnings.warn(Note(
        f"{info.spec} does not record the benchmark it was trained on, so it runs {steps} refinement steps; "
        "an authors' COCO-20i checkpoint wants 3: pass `steps` 3, or convert it once with "
        "`imrseg weights import FILE --out DIR --benchmark coco --fold N`"), stacklevel=2)
    return steps
