"""Weights from the registry, the Hub (a fake one on 127.0.0.1) and local files.
Nothing here reaches the internet: HF_ENDPOINT points at the fake Hub or at a closed port."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load, load_file, save, save_file

from imrseg import hub, paths
from imrseg.hub import card, download, publish
from imrseg.data.classes import COCO_CLASSES, NUM_FOLDS, PASCAL_CLASSES, fold_class_names
from imrseg.errors import CheckpointError, ImrsegError, NetworkError
from imrseg.models import IMRHSNet
from recipe import recipe_state_dict

NAME = "imr-hsnet-resnet50-pascal-fold0"
REPO = f"imrseg/{NAME}"
DRIVE = "https://drive.google.com/drive/folders/1fB3_jUEw972lDZIs3_S7lj2F5rZVq4Nu"


# ------------------------------------------------------------------ fake Hub
class FakeHub:
    """Model repos served the way the Hub's resolve endpoint serves them:
    HEAD/GET /{owner}/{name}/resolve/{revision}/{file} answer with X-Repo-Commit,
    ETag and Content-Length, and 404s carry the X-Error-Code huggingface_hub reads
    (RepoNotFound, RevisionNotFound, EntryNotFound). Every request is recorded."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.failing: int | None = None  # an HTTP status every request gets, e.g. 503
        handler = type("Handler", (_ResolveHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def publish(self, repo_id: str, files: dict[str, bytes], branch: str = "main", tag: str | None = None) -> str:
        """A new commit holding `files`, at the head of `branch` (and `tag`); returns its id."""
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        digest = hashlib.sha1(f"{repo_id}:{len(repo['commits'])}".encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        commit = digest.hexdigest()
        repo["commits"][commit] = dict(files)
        repo["refs"][branch] = commit
        if tag:
            repo["refs"][tag] = commit
        return commit

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ResolveHandler(BaseHTTPRequestHandler):
    hub: FakeHub

    def do_HEAD(self):
        self._serve(with_body=False)

    def do_GET(self):
        self._serve(with_body=True)

    def _serve(self, with_body: bool) -> None:
        self.hub.requests.append((self.command, self.path))
        if self.hub.failing:
            self.send_response(self.hub.failing)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlsplit(self.path).path)
        repo = self.hub.repos.get(unquote(match.group(1))) if match else None
        if repo is None:
            return self._error("RepoNotFound")
        revision, filename = unquote(match.group(2)), unquote(match.group(3))
        commit = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        if commit is None:
            return self._error("RevisionNotFound")
        content = repo["commits"][commit].get(filename)
        if content is None:
            return self._error("EntryNotFound", commit)
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if with_body:
            self.wfile.write(content)

    def _error(self, code: str, commit: str | None = None) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


def no_drive(*args, **options):
    raise ConnectionError("no network in the tests")


@pytest.fixture(autouse=True)
def isolated_hf(monkeypatch, tmp_path):
    """A fresh HF cache and imrseg cache per test, no offline flag or namespace from the
    caller's environment, a Hub endpoint on a closed local port unless `fake_hub` is
    used, and Google Drive out of reach unless test_release's fake is used."""
    import gdown

    monkeypatch.setattr(gdown, "download_folder", no_drive)
    monkeypatch.setattr(gdown, "download", no_drive)
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "imrseg-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(hub.NAMESPACE_ENV, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf-cache"


@pytest.fixture
def fake_hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """An authors'-style best_model.pt (DataParallel keys, recipe weights) and its
    conversion to the Hub layout for PASCAL-5i fold 0."""
    root = tmp_path_factory.mktemp("checkpoint")
    state_dict = recipe_state_dict(IMRHSNet("resnet50"))
    torch.save({f"module.{k}": v for k, v in state_dict.items()}, root / "best_model.pt")
    info = publish.import_official(root / "best_model.pt", root / "converted", "pascal", 0)
    files = {f: (root / "converted" / f).read_bytes() for f in (hub.CONFIG_FILE, hub.WEIGHTS_FILE)}
    return SimpleNamespace(state_dict=state_dict, pt=root / "best_model.pt", folder=root / "converted",
                           files=files, sha256=info.sha256)


def altered(files: dict[str, bytes], **config_changes) -> dict[str, bytes]:
    """The same checkpoint with other weights (the learned initial state + 1) and config."""
    tensors = load(files[hub.WEIGHTS_FILE])
    tensors["state"] = tensors["state"] + 1
    config = {**json.loads(files[hub.CONFIG_FILE]), **config_changes}
    return {hub.CONFIG_FILE: json.dumps(config).encode(), hub.WEIGHTS_FILE: save(tensors)}


def same_weights(model, state_dict) -> bool:
    own = model.state_dict()
    return own.keys() == state_dict.keys() and all(
        own[k].dtype == v.dtype and torch.equal(own[k], v) for k, v in state_dict.items())


def patch_entry(monkeypatch, name: str | None = NAME, **changes) -> None:
    """Change the registry entry `name` (None: every entry) for every module that reads it."""
    registry = hub.load_registry()
    entries = {n: dataclasses.replace(e, **changes) if name in (None, n) else e
               for n, e in registry.entries.items()}
    patched = hub.Registry(registry.paper, entries)
    for module in (hub, hub.weights, card):  # every module that reads the registry
        monkeypatch.setattr(module, "load_registry", lambda: patched)


# ------------------------------------------------------------------- registry
PAPER_1SHOT = {  # 1-shot mIoU per fold, the paper's Tables 1 and 2 as quoted in arXiv:2508.16159
    ("resnet50", "pascal"): [62.6, 69.1, 56.1, 56.7],
    ("vgg16", "pascal"): [58.2, 63.9, 52.9, 51.2],
    ("resnet50", "coco"): [39.5, 43.8, 42.4, 44.1],
    ("vgg16", "coco"): [34.9, 38.8, 37.0, 40.1],
}


def test_registry_has_one_entry_per_official_checkpoint():
    registry = hub.load_registry()
    assert list(registry.entries) == [f"imr-hsnet-{b}-{d}-fold{f}" for b in ("resnet50", "vgg16")
                                      for d in ("pascal", "coco") for f in range(4)]
    for entry in registry.entries.values():
        assert entry.steps == {"pascal": 2, "coco": 3}[entry.benchmark]
        assert entry.paper_miou == PAPER_1SHOT[(entry.backbone, entry.benchmark)][entry.fold]
        assert entry.repo_id == f"imrseg/{entry.name}" and entry.revision == "main"
        assert entry.filename == "model.safetensors" and entry.sha256 == ""
        assert entry.source == DRIVE and entry.file_id == ""
    assert registry.paper["arxiv"] == "2303.05646"


def test_registry_file_is_plain_json_in_the_package():
    from importlib import resources

    path = resources.files("imrseg.hub").joinpath("registry.json")
    assert Path(str(path)) == Path(__file__).resolve().parent.parent / "imrseg" / "hub" / "registry.json"
    assert len(json.loads(path.read_text())["entries"]) == 16


def test_fold_classes_follow_the_benchmarks():
    assert fold_class_names("pascal", 3) == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    assert fold_class_names("coco", 1)[:3] == ["bicycle", "bus", "traffic light"]
    for classes, benchmark in ((PASCAL_CLASSES, "pascal"), (COCO_CLASSES, "coco")):
        folds = [fold_class_names(benchmark, f) for f in range(NUM_FOLDS)]
        assert sorted(sum(folds, [])) == sorted(classes) and len(classes) == {"pascal": 20, "coco": 80}[benchmark]


# ---------------------------------------------------------------- spec kinds
def test_specs_name_a_folder_a_file_a_registry_entry_or_a_hub_repo(converted, monkeypatch):
    patch_entry(monkeypatch, sha256=converted.sha256)  # as when published
    assert hub.locate_weights(str(converted.folder)).kind == "folder"
    assert hub.locate_weights(str(converted.pt)).kind == "official"
    assert hub.locate_weights(None).spec == hub.DEFAULT_WEIGHTS == "imr-hsnet-resnet50-coco-fold2"
    source = hub.locate_weights(NAME)
    assert (source.kind, source.repo_id, source.revision) == ("registry", REPO, "main")
    source = hub.locate_weights("someone/weights@v2")
    assert (source.kind, source.repo_id, source.revision) == ("hub", "someone/weights", "v2")
    monkeypatch.setenv(hub.NAMESPACE_ENV, "lab")
    assert hub.locate_weights(NAME).repo_id == f"lab/{NAME}"
    assert hub.locate_weights(NAME, namespace="other").repo_id == f"other/{NAME}"


def test_an_unknown_name_suggests_the_closest_registry_names():
    with pytest.raises(ImrsegError, match="closest registry names: imr-hsnet-resnet50-pascal-fold"):
        hub.locate_weights("imr-hsnet-resnet50-pascal-fold7")
    with pytest.raises(ImrsegError, match="no such file or folder"):
        hub.locate_weights("./missing/best_model.pt")


# ---------------------------------------------------------------- downloading
def test_the_hub_environment_is_read_when_used(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert paths.hf_cache_dir() == str(tmp_path / "home" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert paths.hf_cache_dir() == str(tmp_path / "cache")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example/")
    assert download.hf_endpoint() == "http://mirror.example"
    assert not download.hf_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download.hf_offline()


def test_download_then_the_cache_is_reused(fake_hub, converted, isolated_hf, monkeypatch):
    commit = fake_hub.publish(REPO, converted.files)
    patch_entry(monkeypatch, sha256=converted.sha256)
    model, info = hub.resolve_weights(NAME)
    assert same_weights(model, converted.state_dict)
    assert sorted(fake_hub.downloads()) == sorted(f"/{REPO}/resolve/main/{f}" for f in converted.files)
    assert (info.kind, info.name, info.repo_id, info.commit) == ("registry", NAME, REPO, commit)
    assert (info.benchmark, info.fold, info.steps, info.paper_miou) == ("pascal", 0, 2, 62.6)
    assert Path(info.path).is_relative_to(isolated_hf) and info.sha256 == converted.sha256

    fake_hub.requests.clear()
    model, _ = hub.resolve_weights(NAME)
    assert fake_hub.requests == [] and same_weights(model, converted.state_dict)


def fetched_sha256(spec: str) -> str:
    return hub.fetch_weights(hub.locate_weights(spec)).sha256


def test_the_registry_revision_is_pinned(fake_hub, converted, monkeypatch):
    first = fake_hub.publish(REPO, converted.files, tag="v1")
    newer = altered(converted.files)
    fake_hub.publish(REPO, newer)  # main moves on
    patch_entry(monkeypatch, revision=first, sha256=converted.sha256)
    model, info = hub.resolve_weights(NAME)
    assert same_weights(model, converted.state_dict) and info.commit == first
    assert fetched_sha256(f"{REPO}@v1") == converted.sha256
    assert fetched_sha256(REPO) == hashlib.sha256(newer[hub.WEIGHTS_FILE]).hexdigest()


def test_a_sha256_mismatch_stops_and_deletes_nothing(fake_hub, converted, monkeypatch, isolated_hf):
    fake_hub.publish(REPO, converted.files)
    patch_entry(monkeypatch, sha256="0" * 64)
    with pytest.raises(CheckpointError, match=f"sha256 mismatch .* got {converted.sha256}, the registry expects 0000"):
        hub.resolve_weights(NAME)
    cached = [p for p in isolated_hf.rglob(hub.WEIGHTS_FILE)]
    assert cached and all(p.read_bytes() == converted.files[hub.WEIGHTS_FILE] for p in cached)

    patch_entry(monkeypatch, sha256=converted.sha256.upper())
    model, _ = hub.resolve_weights(NAME)
    assert same_weights(model, converted.state_dict)


def test_missing_repo_revision_or_file_are_named(fake_hub, converted):
    fake_hub.publish(REPO, converted.files)
    fake_hub.publish("someone/config-only", {hub.CONFIG_FILE: converted.files[hub.CONFIG_FILE]})
    with pytest.raises(ImrsegError, match=f"Hub repository nobody/nothing not found at {fake_hub.url}"):
        hub.resolve_weights("nobody/nothing")
    with pytest.raises(ImrsegError, match=f"revision nope not found in Hub repository {REPO}"):
        hub.resolve_weights(f"{REPO}@nope")
    with pytest.raises(CheckpointError, match="someone/config-only@main has no model.safetensors"):
        hub.resolve_weights("someone/config-only")


def test_offline_with_a_filled_cache_makes_no_request(fake_hub, converted, monkeypatch):
    fake_hub.publish(REPO, converted.files)
    patch_entry(monkeypatch, sha256=converted.sha256)
    assert fetched_sha256(NAME) == fetched_sha256(REPO) == converted.sha256
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = hub.resolve_weights(NAME)
    assert same_weights(model, converted.state_dict)
    assert fetched_sha256(REPO) == converted.sha256
    assert fake_hub.requests == []


def test_offline_with_an_empty_cache_says_what_to_do(fake_hub, monkeypatch):
    patch_entry(monkeypatch, sha256="ab" * 32)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkError, match=f"offline .* run `imrseg weights download {NAME}` where there is "
                                           "network, or pass a local file"):
        hub.resolve_weights(NAME)
    assert fake_hub.requests == []


def test_another_namespace_hosts_its_own_copies(fake_hub, converted, monkeypatch):
    fake_hub.publish(f"lab/{NAME}", converted.files)
    monkeypatch.setenv(hub.NAMESPACE_ENV, "lab")
    _, info = hub.resolve_weights(NAME)
    assert (info.repo_id, info.revision) == (f"lab/{NAME}", "main")
    with pytest.raises(ImrsegError, match=f"other/{NAME} not found"):
        hub.resolve_weights(NAME, namespace="other")


# ------------------------------------------------------------ wrong checkpoints
def test_checkpoints_of_another_model_are_refused(fake_hub, converted, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / hub.CONFIG_FILE).write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    (other / hub.WEIGHTS_FILE).write_bytes(converted.files[hub.WEIGHTS_FILE])
    with pytest.raises(CheckpointError, match="not an IMR-HSNet config .*model_type"):
        hub.resolve_weights(str(other))

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / hub.CONFIG_FILE).write_bytes(converted.files[hub.CONFIG_FILE])
    save_file({k: v for k, v in converted.state_dict.items() if k != "state"}, partial / hub.WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="does not match IMR-HSNet .*1 missing keys \\(e.g. state\\)"):
        hub.resolve_weights(str(partial))

    (partial / hub.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a checkpoint folder in the Hub layout \\(missing model.safetensors"):
        hub.resolve_weights(str(partial))

    monkeypatch.setenv(hub.NAMESPACE_ENV, "lab")  # one's own copies: no sha256 to check them against
    fake_hub.publish(f"lab/{NAME}", altered(converted.files, fold=2))
    with pytest.raises(CheckpointError, match="holds resnet50 / pascal / fold 2, the registry says .* fold 0"):
        hub.resolve_weights(NAME)


# ------------------------------------------------------------ local checkpoints
def test_import_writes_the_hub_layout_and_round_trips_bit_for_bit(converted):
    assert sorted(p.name for p in converted.folder.iterdir()) == [
        ".imrseg-files", ".imrseg.lock", "README.md", "config.json", "model.safetensors"]  # the guard's two
    config = json.loads(converted.files[hub.CONFIG_FILE])
    assert config == {"backbone": "resnet50", "benchmark": "pascal", "fold": 0, "steps": 2,
                      "class_names": ["aeroplane", "bicycle", "bird", "boat", "bottle"]}
    assert hashlib.sha256(converted.files[hub.WEIGHTS_FILE]).hexdigest() == converted.sha256
    assert load_file(converted.folder / hub.WEIGHTS_FILE).keys() == converted.state_dict.keys()
    model, info = hub.resolve_weights(str(converted.folder), device="cpu")
    assert same_weights(model, converted.state_dict) and not model.training
    assert (info.kind, info.paper_miou, info.commit) == ("folder", 62.6, None)
    card = (converted.folder / "README.md").read_text()
    assert DRIVE in card and "arXiv:2303.05646" in card and "62.6" in card and converted.sha256 in card


def test_the_authors_file_is_converted_in_memory(converted):
    model, info = hub.resolve_weights(str(converted.pt))
    assert same_weights(model, converted.state_dict)
    assert (info.kind, info.backbone, info.benchmark, info.fold) == ("official", "resnet50", None, None)
    assert info.sha256 == hashlib.sha256(converted.pt.read_bytes()).hexdigest()
    assert info.parameters == sum(p.numel() for p in model.parameters())


def test_from_pretrained_reads_the_converted_folder(converted):
    model = IMRHSNet.from_pretrained(converted.folder)
    assert (model.benchmark, model.fold, model.steps) == ("pascal", 0, 2)
    assert same_weights(model, converted.state_dict)


# ---------------------------------------------------------------------- CLIP
@pytest.fixture(scope="session")
def clip_weights(tmp_path_factory):
    """RN50-quickgelu weights (its initialisation, half precision to keep the files
    small) as a plain pickled state dict and as the Hub's safetensors file."""
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    state_dict = {k: v.half() for k, v in open_clip.create_model("RN50-quickgelu").state_dict().items()}
    torch.save(state_dict, root / "rn50.pt")
    return SimpleNamespace(state_dict=state_dict, pt=root / "rn50.pt", safetensors=save(state_dict))


def tiny_clip_repo() -> dict[str, bytes]:
    """A repo in open_clip's Hub layout with a very small model."""
    import open_clip

    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model = open_clip.CLIP(**model_cfg)
    return {hub.CLIP_CONFIG_FILE: json.dumps({"model_cfg": model_cfg}).encode(),
            hub.CLIP_WEIGHTS_FILE: save(model.state_dict())}


def test_default_clip_comes_from_the_hub_once(fake_hub, clip_weights):
    fake_hub.publish("timm/resnet50_clip.openai", {hub.CLIP_WEIGHTS_FILE: clip_weights.safetensors})
    model, tokenizer, info = hub.resolve_clip()
    assert (info.kind, info.model_name, info.repo_id) == ("tag", "RN50-quickgelu", "timm/resnet50_clip.openai")
    key = "visual.conv1.weight"
    assert torch.equal(model.state_dict()[key], clip_weights.state_dict[key].float())
    assert tokenizer(["a photo of a dog"]).shape == (1, 77)
    fake_hub.requests.clear()
    model, _, _ = hub.resolve_clip("RN50:openai")  # the same cached file; RN50's tag turns on QuickGELU
    assert fake_hub.requests == []
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_clip_from_a_local_state_dict(clip_weights):
    model, _, info = hub.resolve_clip(str(clip_weights.pt))
    assert (info.kind, info.model_name, info.path) == ("file", "RN50-quickgelu", str(clip_weights.pt))
    key = "transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(model.state_dict()[key], clip_weights.state_dict[key].float())


def test_clip_from_a_hub_repo_in_open_clip_layout(fake_hub):
    files = tiny_clip_repo()
    commit = fake_hub.publish("someone/tiny-clip", files)
    model, tokenizer, info = hub.resolve_clip("someone/tiny-clip")
    assert (info.kind, info.model_name, info.commit) == ("hub", "hf-hub:someone/tiny-clip", commit)
    served = load(files[hub.CLIP_WEIGHTS_FILE])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in served.items())
    assert tokenizer(["a dog"]).shape == (1, 77)


def test_clip_offline_with_an_empty_cache_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ImrsegError, match="run `imrseg weights download --clip-weights RN50-quickgelu:openai`"):
        hub.resolve_clip()


def test_clip_specs_that_cannot_work_are_explained(tmp_path):
    with pytest.raises(ImrsegError, match="unknown open_clip model 'RN5'"):
        hub.resolve_clip("RN5:openai")
    with pytest.raises(ImrsegError, match="no pretrained weights 'laion' for RN50-quickgelu .*openai, yfcc15m"):
        hub.resolve_clip("RN50-quickgelu:laion")


def test_clip_files_of_any_kind_are_one_line_errors(tmp_path):
    """A refused pickle is explained without PyTorch's advice to load it with
    weights_only=False; every other file gives one line naming it once."""
    torch.save({"weights": SimpleNamespace(a=1)}, tmp_path / "code.pt")
    (tmp_path / "notes.txt").write_text("some text\n")
    torch.save({}, tmp_path / "empty.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json......}")
    np.savez(tmp_path / "weights.npz", a=np.zeros(3))
    expected = {"code.pt": "refused to load: the pickle holds objects other than tensors .*types.SimpleNamespace",
                "notes.txt": "does not load as open_clip RN50-quickgelu", "empty.pt": "it holds no tensors",
                "bad.safetensors": "does not load as open_clip", "weights.npz": "a numpy archive"}
    for name, reason in expected.items():
        spec = str(tmp_path / name)
        with pytest.raises(CheckpointError, match=reason) as err:
            hub.resolve_clip(spec)
        message = str(err.value)
        assert message.count(spec) == 1 and "\n" not in message and "weights_only" not in message, message


# ------------------------------------------------------- unpublished, unreachable
def test_unpublished_entries_go_to_the_authors_release_not_the_hub(fake_hub):
    import time

    started = time.perf_counter()
    with pytest.raises(NetworkError) as err:  # Drive is out of reach here
        hub.resolve_weights(None)
    message = str(err.value)
    default = hub.DEFAULT_WEIGHTS
    for expected in (f"{default}: listing {DRIVE} from the authors' release failed: cannot reach Google Drive",
                     "download that fold's best_model.pt by hand", "`weights` best_model.pt",
                     f"`imrseg weights import best_model.pt --out {default} --benchmark coco --fold 2`"):
        assert expected in message
    assert "\n" not in message
    with pytest.raises(ImrsegError, match=f"imr-hsnet-vgg16-coco-fold2: the authors' VGG-16 COCO-20i fold 2 "
                                          f"checkpoint is not on the Hub yet; `source` authors .*{DRIVE}"):
        hub.fetch_weights(hub.locate_weights("imr-hsnet-vgg16-coco-fold2"), "hub")
    assert fake_hub.requests == [] and time.perf_counter() - started < 5


def test_an_unreachable_hub_is_asked_once(fake_hub, monkeypatch):
    import time

    fake_hub.failing = 503  # every answer a server error, which huggingface_hub retries for ~25 s
    started = time.perf_counter()
    with pytest.raises(NetworkError, match=f"someone/weights: cannot reach {fake_hub.url} \\(HTTP 503\\) and "
                                           "config.json of someone/weights@main is not in the cache"):
        hub.resolve_weights("someone/weights")
    assert len(fake_hub.requests) == 1 and time.perf_counter() - started < 5

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(NetworkError, match="cannot reach http://127.0.0.1:9 .*run `imrseg weights download "
                                           "someone/weights` where there is network"):
        hub.resolve_weights("someone/weights")
    assert time.perf_counter() - started < 10
