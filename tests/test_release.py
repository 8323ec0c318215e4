"""Checkpoints from the authors' release, behind a fake Google Drive: gdown's own
functions replaced by a folder tree in memory (several layouts) and downloads that
succeed, stop midway, hit Drive's quota or give a file that is not the checkpoint.
Nothing here reaches the network."""
from __future__ import annotations

import hashlib
import io
import json
import shlex
from pathlib import Path

import gdown
import pytest
import torch
from PIL import Image
from gdown.download import GoogleDriveFileToDownload
from safetensors.torch import save_file

from imrseg import hub
from imrseg.cli import options
from imrseg.errors import CheckpointError, ImrsegError, NetworkError
from imrseg.hub import drive, release
from test_hub import DRIVE, NAME, converted, isolated_hf, patch_entry, same_weights  # noqa: F401
from test_weights_cli import cli  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
QUOTA = ("Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file recently. Please try "
         "accessing the file again later. If the file you are trying to access is particularly large or is shared "
         "with many people, it may take up to 24 hours to be able to view or download the file.\n\nYou may still be "
         "able to access the file from the browser:\n\n\thttps://drive.google.com/uc?id=X\n\nbut Gdown can't. "
         "Please check connections and permissions.")
ENTRIES = list(hub.load_registry().entries.values())
BY_HAND = "download that fold's best_model.pt by hand from the authors' release"


class FakeDrive:
    """A shared folder: path -> (file id, content); what gdown was asked is recorded."""

    def __init__(self):
        self.files: dict[str, tuple[str, bytes]] = {}
        self.listings, self.downloads = 0, []
        self.failure: str | None = None  # "midway" or "quota"

    def add(self, path: str, content: bytes = b"", file_id: str | None = None) -> str:
        file_id = file_id or hashlib.sha1(path.encode()).hexdigest()[:28]
        self.files[path] = (file_id, content)
        return file_id

    def download_folder(self, url=None, skip_download=False, quiet=False, timeout=None, **options):
        assert url == DRIVE and skip_download and quiet and timeout
        self.listings += 1
        return [GoogleDriveFileToDownload(fid, path, f"/nowhere/{path}") for path, (fid, _) in self.files.items()]

    def download(self, url=None, output=None, quiet=False, progress=None, id=None, timeout=None, **options):
        assert quiet and timeout and output
        self.downloads.append(id)
        content = next(c for fid, c in self.files.values() if fid == id)
        if self.failure == "quota":
            raise gdown.FileURLRetrievalError(QUOTA)
        progress(len(content) // 2, len(content))
        if self.failure == "midway":  # gdown keeps the received part beside the output
            Path(output + ".part").write_bytes(content[: len(content) // 2])
            raise gdown.DownloadError(f"Download is incomplete: received {len(content) // 2} bytes but the server "
                                      f"announced {len(content)} bytes.\nThe received bytes are kept in "
                                      f"{output}.part, which resume (--continue on the command line) picks up.")
        Path(output).write_bytes(content)
        progress(len(content), len(content))
        return output


@pytest.fixture
def fake_drive(monkeypatch, tmp_path):
    fake = FakeDrive()
    monkeypatch.setattr(gdown, "download_folder", fake.download_folder)
    monkeypatch.setattr(gdown, "download", fake.download)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # to see that nothing is left there
    (tmp_path / "tmp").mkdir()
    return fake


@pytest.fixture(scope="session")
def best_model(converted):
    return converted.pt.read_bytes()


def torch_bytes(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------ layouts
TITLES = {"resnet50": "ResNet50", "vgg16": "VGG16", "pascal": "PASCAL", "coco": "COCO"}
SHORT = {"resnet50": "res50", "vgg16": "vgg16", "pascal": "pas", "coco": "coco"}


def nested(e) -> list[str]:
    return [f"IMR-HSNet/{TITLES[e.backbone]}/{TITLES[e.benchmark]}/fold{e.fold}/best_model.pt"]


def flat(e) -> list[str]:
    return [f"{SHORT[e.backbone]}_{SHORT[e.benchmark]}_fold{e.fold}.pt"]


def logged(e) -> list[str]:  # a training run's folder: the checkpoint, its log and tensorboard events
    run = f"logs/{e.benchmark}_{e.backbone}_fold_{e.fold}_lr4e-4_bsz40.log"
    return [f"{run}/best_model.pt", f"{run}/log.txt", f"{run}/tbd/runs/events.out.tfevents.1651.host"]


@pytest.mark.parametrize("layout", [nested, flat, logged])
def test_each_entry_is_found_by_its_path(layout):
    fake = FakeDrive()
    for entry in ENTRIES:
        for path in layout(entry):
            fake.add(path)
    files = [drive.DriveFile(fid, path) for path, (fid, _) in fake.files.items()]
    for entry in ENTRIES:
        assert drive.choose(files, entry, entry.name).path == layout(entry)[0]


def test_two_candidates_or_none_are_one_line_errors():
    entry = hub.load_registry().entries[NAME]
    files = [drive.DriveFile("id-a", "res50_pascal_fold0/model_a.pt"), drive.DriveFile("id-b", "r50-voc-f0.pth"),
             drive.DriveFile("id-c", "res50_pascal_fold1/best_model.pt"), drive.DriveFile("id-d", "notes.txt")]
    with pytest.raises(ImrsegError) as err:
        drive.choose(files, entry, NAME)
    message = str(err.value)
    assert message.startswith(f"{NAME}: 2 files in the authors' release {DRIVE} name ResNet-50, PASCAL-5i and fold 0: "
                              "res50_pascal_fold0/model_a.pt (id id-a); r50-voc-f0.pth (id id-b); pick the right "
                              f"file with `imrseg weights download {NAME} --file-id ID`, or {BY_HAND}")
    with pytest.raises(ImrsegError, match=r"no file in the authors' release .* names ResNet-50, PASCAL-5i and fold 0 "
                                          r"in its path \(its checkpoint files: res50_pascal_fold1/best_model.pt "
                                          r"\(id id-c\)\); pick the right file"):
        drive.choose(files[2:], entry, NAME)
    with pytest.raises(ImrsegError, match=r"in its path \(1 files, none a .pt\)"):
        drive.choose(files[3:], entry, NAME)
    assert "\n" not in message


# ------------------------------------------------------------ first use
def test_first_use_downloads_checks_converts_and_records(fake_drive, converted, best_model, capsys, tmp_path):
    for entry in ENTRIES:
        fake_drive.add(nested(entry)[0], best_model if entry.name == NAME else b"")
    file_id = fake_drive.files[nested(hub.load_registry().entries[NAME])[0]][0]
    files = hub.fetch_weights(hub.locate_weights(NAME))
    assert fake_drive.listings == 1 and fake_drive.downloads == [file_id]
    assert NAME in capsys.readouterr().err  # the progress bar
    folder = release.release_folder(hub.load_registry().entries[NAME])
    assert (files.config, files.weights, files.sha256) == (folder / hub.CONFIG_FILE, folder / hub.WEIGHTS_FILE,
                                                          converted.sha256)
    for name in (hub.CONFIG_FILE, hub.WEIGHTS_FILE):  # the Hub layout, as `weights import` writes it
        assert (folder / name).read_bytes() == converted.files[name]
    record = json.loads((folder / release.RECORD_FILE).read_text())
    assert record["file_id"] == file_id and record["path"] == nested(hub.load_registry().entries[NAME])[0]
    assert record["download_sha256"] == hashlib.sha256(best_model).hexdigest() and record["sha256"] == converted.sha256
    assert files.release == f"the authors' release {DRIVE}: {record['path']} (id {file_id})"

    model, info = hub.resolve_weights(NAME)  # later runs: the cache alone
    assert same_weights(model, converted.state_dict)
    assert info.origin() == f"{files.release}, converted at {files.weights}" and info.repo_id is None
    assert fake_drive.listings == 1 and fake_drive.downloads == [file_id]
    assert hub.cached_from(hub.load_registry().entries[NAME]) == "authors"
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("failure, says", [
    ("midway", "downloading IMR-HSNet/ResNet50/PASCAL/fold0/best_model.pt (id {id}) from the authors' release failed: "
               "it stopped midway and nothing was kept (Download is incomplete: received "),
    ("quota", "from the authors' release failed: Google Drive refuses it for now: too many users have downloaded "
              "the file recently"),
    ("network", f"listing {DRIVE} from the authors' release failed: cannot reach Google Drive (no network"),
])
def test_failures_are_one_line_and_leave_nothing(fake_drive, monkeypatch, best_model, tmp_path, failure, says):
    file_id = fake_drive.add("IMR-HSNet/ResNet50/PASCAL/fold0/best_model.pt", best_model)
    fake_drive.failure = failure
    if failure == "network":
        def unreachable(**options):
            raise OSError("no network")  # what requests raises is an OSError
        monkeypatch.setattr(gdown, "download_folder", unreachable)
    with pytest.raises(NetworkError) as err:
        hub.resolve_weights(NAME)
    message = str(err.value)
    assert message.startswith(f"{NAME}: ") and says.format(id=file_id) in message and "\n" not in message
    assert message.endswith(f"and pass `weights` {NAME}") and BY_HAND in message and "try again later" in message
    assert ".part" not in message
    assert not release.release_folder(hub.load_registry().entries[NAME]).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("content", ["html", "another network"])
def test_a_file_that_is_not_the_checkpoint_is_refused(fake_drive, converted, tmp_path, content):
    if content == "html":  # what Drive serves instead of a file it will not give
        data, says = b"<!DOCTYPE html><html>sign in</html>", "not a readable PyTorch checkpoint"
    else:
        data, says = torch_bytes(dict(list(converted.state_dict.items())[:-3])), "3 missing keys"
    file_id = fake_drive.add("res50_pascal_fold0.pt", data)
    with pytest.raises(CheckpointError) as err:
        hub.resolve_weights(NAME)
    message = str(err.value)
    assert message.startswith(f"{NAME}: the authors' file res50_pascal_fold0.pt (id {file_id}) is not the expected "
                              "checkpoint (") and says in message and "\n" not in message
    assert "imrseg-download-" not in message and f"--file-id ID`, or {BY_HAND}" in message
    assert not release.release_folder(hub.load_registry().entries[NAME]).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_offline_asks_nothing(fake_drive, monkeypatch):
    fake_drive.add("res50_pascal_fold0.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkError, match=f"{NAME}: offline \\(HF_HUB_OFFLINE is set\\) and the authors' ResNet-50 "
                                           f"PASCAL-5i fold 0 checkpoint is not in imrseg's cache .*; run `imrseg "
                                           f"weights download {NAME}` where there is network, or {BY_HAND}"):
        hub.resolve_weights(NAME)
    assert fake_drive.listings == 0 and fake_drive.downloads == []


def test_a_file_id_from_the_registry_skips_the_listing(fake_drive, monkeypatch, best_model):
    fake_drive.add("a/b.pt", best_model, file_id="1AbCdEf")
    patch_entry(monkeypatch, file_id="1AbCdEf")
    hub.fetch_weights(hub.locate_weights(NAME))
    assert fake_drive.listings == 0 and fake_drive.downloads == ["1AbCdEf"]


# ------------------------------------------------------------ the command line
def test_a_later_download_that_differs_is_refused_unless_refresh(cli, fake_drive, converted, best_model,
                                                                 recipe_weight_files):
    first = fake_drive.add("res50_pascal_fold0/best_model.pt", best_model)
    changed = dict(converted.state_dict, state=converted.state_dict["state"] + 1)
    other = fake_drive.add("res50_pascal_fold0/old/best_model.pt", torch_bytes(changed))
    clip = ("--clip-weights", recipe_weight_files["clip"])
    result = cli("weights", "download", NAME, *clip)  # two files name the entry: one line, both listed
    assert result.code == 2 and f"(id {first}); res50_pascal_fold0/old/best_model.pt (id {other})" in result.err
    assert len(result.err.splitlines()) == 1 and fake_drive.downloads == []
    result = cli("weights", "download", NAME, "--file-id", first, *clip)
    assert result.code == 0, result.err
    assert f"{NAME}: " in result.out and f"sha256 {converted.sha256}, from the authors' release {DRIVE}" in result.out
    folder = release.release_folder(hub.load_registry().entries[NAME])
    kept = (folder / hub.WEIGHTS_FILE).read_bytes()

    result = cli("weights", "download", NAME, "--file-id", other, *clip)
    assert result.code == 2 and [line for line in result.err.splitlines() if NAME not in line] == []  # bar, error
    assert f"not {hashlib.sha256(best_model).hexdigest()} as downloaded before" in result.err
    assert f"run `imrseg weights download {NAME} --refresh` to accept the new file" in result.err
    assert (folder / hub.WEIGHTS_FILE).read_bytes() == kept
    assert cli("weights", "download", NAME, *clip).code == 0 and fake_drive.downloads == [first, other]

    result = cli("weights", "download", NAME, "--file-id", other, "--refresh", *clip)
    assert result.code == 0, result.err
    assert (folder / hub.WEIGHTS_FILE).read_bytes() != kept
    rows = {r["name"]: r for r in json.loads(cli("weights", "list", "--json").out)}
    assert rows[NAME]["cached_from"] == "authors" and rows[NAME]["cached"]
    assert [n for n, r in rows.items() if r["cached"]] == [NAME]
    result = cli("weights", "download", NAME, "--source", "hub", "--file-id", other, *clip)
    assert result.code == 2 and "--file-id and --refresh are for the authors' release, not --source hub" in result.err


def test_source_choices_are_the_library_s():
    assert [o.value for o in options.Origin] == list(hub.ORIGINS)
    for asked in ({"origin": "authors"}, {"file_id": "1AbC"}, {"refresh": True}):
        with pytest.raises(ImrsegError, match="someone/weights: not a registry name; the authors' release"):
            hub.fetch_weights(hub.locate_weights("someone/weights"), **asked)
    with pytest.raises(ImrsegError, match="`source` must be one of auto, hub, authors, not 'drive'"):
        hub.fetch_weights(hub.locate_weights(NAME), "drive")


# ------------------------------------------------------------ the README's first command
def readme_commands() -> list[str]:
    """The commands of the README's Set-up section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in section.split("```sh\n")[1:] for block in [block.split("```", 1)[0]]]


def fill_clip_cache(hf_cache: Path, recipe_clip_file: str) -> None:
    """The default CLIP weights in the HF cache, as a first run would have left them."""
    source = hub.locate_clip(None)
    owner, name = source.repo_id.split("/")
    repo = hf_cache / f"models--{owner}--{name}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(torch.load(recipe_clip_file, weights_only=True), repo / "snapshots" / commit / source.filename)


def test_the_readme_first_command_needs_no_weights(cli, fake_drive, recipe_weight_files, isolated_hf, tmp_path,
                                                   monkeypatch):
    install, tests = readme_commands()
    assert tests == "python -m pytest -q"
    segment = shlex.split(install.split("&&")[1])
    assert segment[:2] == ["imrseg", "segment"] and "--weights" not in segment and "--clip-weights" not in segment
    default = hub.load_registry().entries[hub.DEFAULT_WEIGHTS]
    for entry in ENTRIES:  # the authors' folder: every checkpoint with its log
        for path in logged(entry):
            fake_drive.add(path, Path(recipe_weight_files["weights"]).read_bytes() if entry.name == default.name else b"")
    fill_clip_cache(isolated_hf, recipe_weight_files["clip"])
    examples = tmp_path / "work" / "examples"  # the bundled cat alone, small: the run's cost is the networks'
    examples.mkdir(parents=True)
    with Image.open(REPO / "examples" / "cat.jpg") as cat:
        cat.reduce(8).save(examples / "cat.jpg")
    monkeypatch.chdir(tmp_path / "work")

    for run in (1, 2):
        result = cli(*segment[1:])  # as the console script runs it
        assert result.code == 0, result.err
        assert fake_drive.listings == 1 and len(fake_drive.downloads) == 1  # the second run downloads nothing
        with Image.open(tmp_path / "work" / "out" / "cat.png") as mask:
            assert mask.size == Image.open(examples / "cat.jpg").size
        assert (tmp_path / "work" / "out" / "cat_step3.png").is_file()  # the default's own 3 steps
    assert hub.cached_from(default) == "authors"
