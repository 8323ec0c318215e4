"""`imrseg weights ...` end to end, in process, against the fake Hub of test_hub."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi

from imrseg import hub
from imrseg.hub import publish
from imrseg.cli import main
from test_hub import (DRIVE, NAME, REPO, converted, fake_hub, isolated_hf, patch_entry, same_weights,  # noqa: F401
                      tiny_clip_repo)

TINY_CLIP = "someone/tiny-clip"


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `imrseg ARGS...` as the console script does; (exit code, stdout, stderr)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["imrseg", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            main()
        out, err = capsys.readouterr()
        return SimpleNamespace(code=exit_.value.code, out=out, err=err)

    return run


def test_list_shows_the_registry(cli, monkeypatch):
    rows = json.loads(cli("weights", "list", "--json").out)
    assert [r["name"] for r in rows] == list(hub.load_registry().entries)
    assert rows[0] == {"name": NAME, "backbone": "resnet50", "benchmark": "pascal", "fold": 0, "steps": 2,
                       "paper_miou": 62.6, "repo_id": REPO, "revision": "main", "filename": "model.safetensors",
                       "sha256": "", "source": DRIVE, "file_id": "", "on_hub": False, "cached": False,
                       "cached_from": None}
    monkeypatch.setenv("COLUMNS", "200")
    table = cli("weights", "list", "--hub-namespace", "lab").out
    assert all(name in table for name in hub.load_registry().entries)
    assert "Hub repos lab/<name>" in table and "62.6" in table and "unpublished" not in table


def test_list_marks_the_entries_not_on_the_hub(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    patch_entry(monkeypatch, sha256="ab" * 32)
    rows = {r["name"]: r["on_hub"] for r in json.loads(cli("weights", "list", "--json").out)}
    assert rows.pop(NAME) is True and not any(rows.values())
    out = cli("weights", "list").out
    lines = out.splitlines()
    assert [line for line in lines if NAME in line and "unpublished" in line] == []
    assert len([line for line in lines if "unpublished" in line and "imr-hsnet-" in line]) == 15
    words = " ".join(out.split())  # the note below the table, however it is wrapped
    assert f"not on the Hub yet; fetched from the authors' release ({DRIVE}) on first use" in words


def test_download_fetches_weights_and_clip_then_list_marks_them(cli, fake_hub, converted, monkeypatch):
    fake_hub.publish(REPO, converted.files)
    patch_entry(monkeypatch, sha256=converted.sha256)
    fake_hub.publish(TINY_CLIP, tiny_clip_repo())
    result = cli("weights", "download", NAME, "--clip-weights", TINY_CLIP)
    assert result.code == 0
    assert f"{NAME}: " in result.out and f"sha256 {converted.sha256}" in result.out
    assert f"CLIP {TINY_CLIP}: " in result.out and hub.CLIP_WEIGHTS_FILE in result.out
    assert "model.safetensors" in result.err  # the progress bar, on stderr
    rows = json.loads(cli("weights", "list", "--json").out)
    assert [r["name"] for r in rows if r["cached"]] == [NAME]


def test_download_all(cli, fake_hub, monkeypatch):
    fake_hub.publish(TINY_CLIP, tiny_clip_repo())
    result = cli("weights", "download", "--all", "--clip-weights", TINY_CLIP)  # nothing published: the authors'
    assert result.code == 4 and result.out == "" and len(result.err.splitlines()) == 1
    assert result.err.startswith(f"imrseg: error: {NAME}: listing {DRIVE} from the authors' release failed")
    result = cli("weights", "download", "--all", "--source", "hub", "--clip-weights", TINY_CLIP)
    assert result.code == 2 and f"{NAME}: the authors' ResNet-50 PASCAL-5i fold 0 checkpoint is not on the Hub yet; " \
        "--source authors (or auto) fetches it" in result.err

    patch_entry(monkeypatch, None, sha256=hashlib.sha256(b"w").hexdigest())
    for entry in hub.load_registry().entries.values():  # downloading does not load, so any bytes do
        config = publish.checkpoint_config(entry.backbone, entry.benchmark, entry.fold)
        fake_hub.publish(entry.repo_id, {hub.CONFIG_FILE: json.dumps(config).encode(), hub.WEIGHTS_FILE: b"w"})
    result = cli("weights", "download", "--all", "--clip-weights", TINY_CLIP)
    assert result.code == 0 and len(result.out.splitlines()) == 17
    assert all(r["cached"] for r in json.loads(cli("weights", "list", "--json").out))
    result = cli("weights", "download", NAME, "--all")
    assert result.code == 2 and "not both" in result.err


def test_download_without_names_fetches_only_clip(cli, fake_hub):
    fake_hub.publish(TINY_CLIP, tiny_clip_repo())
    result = cli("weights", "download", "--clip-weights", TINY_CLIP)
    assert result.code == 0 and result.out.startswith(f"CLIP {TINY_CLIP}: ")
    assert not any(r["cached"] for r in json.loads(cli("weights", "list", "--json").out))


def test_import_info_load_round_trip_is_bit_exact(cli, converted, tmp_path):
    out = tmp_path / "converted"
    result = cli("weights", "import", converted.pt, "--out", out, "--benchmark", "pascal", "--fold", "0")
    assert result.code == 0
    weights_sha = hashlib.sha256((out / hub.WEIGHTS_FILE).read_bytes()).hexdigest()
    assert f"sha256 {weights_sha}" in result.out and weights_sha == converted.sha256
    assert sorted(p.name for p in out.iterdir()) == [
        ".imrseg-files", ".imrseg.lock", "README.md", "config.json", "model.safetensors"]  # the guard's two

    info = json.loads(cli("weights", "info", out, "--json").out)
    assert {k: info[k] for k in ("kind", "backbone", "benchmark", "fold", "steps", "sha256", "paper_miou")} == {
        "kind": "folder", "backbone": "resnet50", "benchmark": "pascal", "fold": 0, "steps": 2,
        "sha256": weights_sha, "paper_miou": 62.6}
    assert info["class_names"] == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert info["path"] == str(out / hub.WEIGHTS_FILE)

    model, _ = hub.resolve_weights(str(out))
    assert same_weights(model, converted.state_dict)


def test_import_without_a_fold_and_info_as_a_table(cli, converted, tmp_path, monkeypatch):
    out = tmp_path / "plain"
    assert cli("weights", "import", converted.pt, "--out", out).code == 0
    assert json.loads((out / hub.CONFIG_FILE).read_text()) == {
        "backbone": "resnet50", "benchmark": None, "fold": None, "steps": 2, "class_names": None}
    result = cli("weights", "import", converted.pt, "--out", tmp_path / "x", "--fold", "1")
    assert result.code == 2 and "needs a benchmark" in result.err
    monkeypatch.setenv("COLUMNS", "200")
    table = cli("weights", "info", converted.pt).out
    assert "official" in table and "resnet50" in table and hashlib.sha256(converted.pt.read_bytes()).hexdigest() in table


def test_import_writes_what_the_hub_mixin_wrote(converted, tmp_path):
    """The converted files, made in memory, are byte for byte those `save_pretrained`
    wrote before (so a re-import keeps a published sha256)."""
    model, _ = hub.resolve_weights(str(converted.folder))
    model.save_pretrained(tmp_path / "mixin")
    for name in (hub.CONFIG_FILE, hub.WEIGHTS_FILE):
        assert (tmp_path / "mixin" / name).read_bytes() == converted.files[name]


@pytest.mark.parametrize("taken", ["config.json", "model.safetensors", "README.md"])
def test_import_never_replaces_a_user_s_file(cli, converted, tmp_path, taken):
    """Issue 18, defect 1: a file in --out that imrseg did not write is refused in one
    line, before anything is written; the user's file is untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / taken).write_text("the user's\n")
    result = cli("weights", "import", converted.pt, "--out", out)
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert result.err.startswith(f"imrseg: error: {out / taken}: exists and was not written by imrseg; move it, "
                                 "or choose another --out")
    assert (out / taken).read_text() == "the user's\n"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [taken]


def test_import_never_writes_through_a_link(cli, converted, tmp_path):
    """Issue 18, defect 1: a README.md in --out that links outside it is refused, and
    the file it points to is untouched."""
    outside = tmp_path / "outside.md"
    outside.write_text("my notes\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").symlink_to(outside)
    result = cli("weights", "import", converted.pt, "--out", out)
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert f"{out / 'README.md'}: is a symbolic link inside --out" in result.err
    assert outside.read_text() == "my notes\n"
    assert not (out / hub.CONFIG_FILE).exists() and not (out / hub.WEIGHTS_FILE).exists()


def test_import_again_replaces_its_own_files_one_run_at_a_time(cli, converted, tmp_path):
    from imrseg.guard import OwnedFolder

    out = tmp_path / "out"
    assert cli("weights", "import", converted.pt, "--out", out).code == 0
    first = {name: (out / name).read_bytes() for name in (hub.CONFIG_FILE, hub.WEIGHTS_FILE, "README.md")}
    result = cli("weights", "import", converted.pt, "--out", out, "--benchmark", "pascal", "--fold", "0")
    assert result.code == 0, result.err
    assert (out / hub.WEIGHTS_FILE).read_bytes() == first[hub.WEIGHTS_FILE] == converted.files[hub.WEIGHTS_FILE]
    assert (out / hub.CONFIG_FILE).read_bytes() == converted.files[hub.CONFIG_FILE] != first[hub.CONFIG_FILE]
    assert "aeroplane" in (out / "README.md").read_text() and "aeroplane" not in first["README.md"].decode()
    with OwnedFolder(out):  # another run writing there
        result = cli("weights", "import", converted.pt, "--out", out)
    assert result.code == 2 and "another imrseg run is writing into this folder" in result.err


def test_errors_are_one_line(cli, fake_hub, monkeypatch, tmp_path):
    result = cli("weights", "info", "imr-hsnet-vgg16-coco-fold9")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("imrseg: error: imr-hsnet-vgg16-coco-fold9: not a registry name")
    assert "imr-hsnet-vgg16-coco-fold" in result.err and len(result.err.splitlines()) == 1
    (tmp_path / "notes.txt").write_text("not weights\n")
    result = cli("weights", "info", tmp_path / "notes.txt")
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert result.err.startswith(f"imrseg: error: {tmp_path / 'notes.txt'}: not a readable PyTorch checkpoint")
    result = cli("weights", "download", NAME)  # not published: the authors' release, out of reach here
    assert result.code == 4 and len(result.err.splitlines()) == 1 and result.out == ""
    assert all(words in result.err for words in (DRIVE, "--weights best_model.pt", "imrseg weights import"))
    patch_entry(monkeypatch, sha256="ab" * 32)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("weights", "info", NAME)
    assert result.code == 4 and f"run `imrseg weights download {NAME}`" in result.err
    assert fake_hub.requests == []


def test_an_unreachable_hub_is_one_line_and_exit_4(tmp_path):
    """As a user sees it: no retries, no warnings from the Hub client, one line."""
    import os
    import time

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "imrseg", "weights", "info", "someone/weights"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 4 and proc.stdout == "" and time.perf_counter() - started < 20
    assert proc.stderr.startswith("imrseg: error: someone/weights: cannot reach http://127.0.0.1:9 (")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_push_publishes_the_folder_with_a_model_card(cli, converted, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **options):
        calls["repo"] = (repo_id, options)

    def create_commit(self, repo_id, operations, commit_message, **options):
        calls["operations"] = {op.path_in_repo: op.path_or_fileobj for op in operations}
        return SimpleNamespace(commit_url=f"{self.endpoint}/{repo_id}/commit/{'a' * 40}", oid="a" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    result = cli("weights", "push", converted.folder, "lab/imr-hsnet", "--private")
    assert result.code == 0, result.err
    assert calls["repo"] == ("lab/imr-hsnet", {"private": True, "exist_ok": True})
    ops = calls["operations"]
    assert ops["config.json"] == str(converted.folder / "config.json")
    assert ops["model.safetensors"] == str(converted.folder / "model.safetensors")
    card = ops["README.md"].decode()
    for expected in (DRIVE, "arXiv:2303.05646", "aeroplane, bicycle, bird, boat, bottle", "62.6 (Table 1",
                     converted.sha256, 'IMRHSNet.from_pretrained("lab/imr-hsnet")'):
        assert expected in card
    assert f'"revision": "{"a" * 40}", "sha256": "{converted.sha256}"' in result.out


def test_the_weights_commands_load_without_torch():
    code = "import sys, imrseg.cli.weights; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
