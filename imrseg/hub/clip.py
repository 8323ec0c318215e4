"""CLIP weights from any `--clip-weights` spec: an open_clip MODEL:PRETRAINED tag
whose weights are on the Hub (default `RN50-quickgelu:openai`), a Hub repo in
open_clip's layout, or a local file. Only safetensors are read from the network."""
from __future__ import annotations

import difflib
import os
import pickle
import posixpath
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CheckpointError, ImrsegError, one_line
from .download import COMMIT, fetch, is_repo_id, snapshot_commit

DEFAULT_CLIP_MODEL = "RN50-quickgelu"
DEFAULT_CLIP = f"{DEFAULT_CLIP_MODEL}:openai"
CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"


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
        return _file_source(spec, DEFAULT_CLIP_MODEL, Path(spec).expanduser())
    model, colon, tag = spec.partition(":")
    if colon:
        if model not in open_clip.list_models():
            closest = difflib.get_close_matches(model, open_clip.list_models(), n=3)
            raise ImrsegError(f"{spec}: unknown open_clip model {model!r}"
                              + (f"; closest: {', '.join(closest)}" if closest else ""))
        if Path(tag).expanduser().is_file():
            return _file_source(spec, model, Path(tag).expanduser())
        cfg = open_clip.get_pretrained_cfg(model, tag)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise ImrsegError(f"{spec}: no pretrained weights {tag!r} for {model} and no such file "
                              f"(open_clip tags: {tags})")
        if not cfg.get("hf_hub"):
            raise ImrsegError(f"{spec}: open_clip hosts these weights outside the Hub ({cfg.get('url')}); "
                              "download them and pass the file as `clip_weights`")
        # open_clip's convention: "owner/name/" (its default file) or "owner/name/file".
        repo_id, filename = posixpath.split(cfg["hf_hub"])
        return ClipSource(spec, "tag", model, repo_id=repo_id, filename=_safetensors_name(filename),
                          quick_gelu=bool(cfg.get("quick_gelu")))
    repo_id, _, revision = spec.partition("@")
    if is_repo_id(repo_id):
        return ClipSource(spec, "hub", repo_id=repo_id, revision=revision or None)
    raise ImrsegError(f"{spec}: not a file, open_clip MODEL:PRETRAINED tag or Hub repo id (owner/name[@revision])")


def _file_source(spec: str, model: str, path: Path) -> ClipSource:
    # open_clip reads .npz/.npy as big_vision SigLIP weights, which fail on any other model
    # with an AttributeError that says nothing about the file.
    if path.suffix.lower() in (".npz", ".npy"):
        raise CheckpointError(f"{spec}: a numpy archive; CLIP weights are read from a PyTorch state dict "
                              "(.pt) or a safetensors file")
    return ClipSource(spec, "file", model, path=path)


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
    pinned = source.kind == "tag" or bool(source.revision and COMMIT.fullmatch(source.revision))
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
    except Exception as exc:  # a file of any kind: open_clip, torch and safetensors raise many types
        raise _load_error(source, weights, exc) from None
    if model_name == DEFAULT_CLIP_MODEL:
        from ..clip.cam import openai_fp16_round_trip

        openai_fp16_round_trip(model)  # as the authors' clip.load (no-op for OpenAI's own weights)
    info = ClipInfo(spec=source.spec, kind=source.kind, model_name=model_name, path=str(weights),
                    repo_id=source.repo_id, revision=source.revision,
                    commit=snapshot_commit(weights) if source.repo_id else None)
    return model.to(device).eval(), tokenizer, info


def _load_error(source: ClipSource, weights: Path, exc: Exception) -> CheckpointError:
    """One line naming the file once; a refused pickle is explained without PyTorch's
    advice to load it unsafely."""
    from ..models.checkpoint import load_error

    origin = source.spec if source.kind == "file" else f"{source.spec}: {weights}"
    if isinstance(exc, pickle.UnpicklingError):
        return load_error(origin, weights, exc)
    # open_clip reads the first key of the state dict: an empty one stops its iteration.
    reason = "it holds no tensors" if isinstance(exc, StopIteration) else f"{type(exc).__name__}: {one_line(exc)}"
    return CheckpointError(f"{origin}: does not load as open_clip {source.model_name or source.repo_id} "
                           f"weights, a state dict or safetensors file of that model ({reason})")


def _link(target: Path, link: Path) -> None:
    try:
        link.symlink_to(Path(target).resolve())
    except OSError:  # no symlinks here (e.g. Windows without the privilege)
        shutil.copyfile(target, link)
