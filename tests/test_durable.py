"""imrseg.durable: atomic writes and the append-only results log, under failures and kills.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imrseg import durable
from imrseg.outputs.masks import save_mask_png
from imrseg.errors import ImrsegError, InputError


REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- atomic writes


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if durable.is_temporary(p.name))


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "new" / "deep" / "f.bin"
    durable.atomic_write_bytes(path, b"one")
    durable.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert leftovers(path.parent) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        durable.atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "mask.png"
    path.write_bytes(b"old complete file")
    seen = []

    def fail_after_writing(fd):
        seen.append(os.fstat(fd).st_size)  # the data is already half on disk
        raise failure

    monkeypatch.setattr(durable.os, "fsync", fail_after_writing)
    with pytest.raises(ImrsegError if isinstance(failure, OSError) else KeyboardInterrupt) as exc:
        durable.atomic_write_bytes(path, b"new data " * 1000)
    assert seen == [9000]
    assert path.read_bytes() == b"old complete file"
    assert leftovers(tmp_path) == []
    if isinstance(failure, OSError):
        assert str(exc.value) == f"{path}: cannot write (No space left on device)"


def test_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(durable.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_mask_png(tmp_path / "m.png", np.ones((4, 4), bool))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImrsegError, match="cannot write"):
        durable.atomic_write_bytes(tmp_path / "file" / "m.png", b"x")


# --------------------------------------------------------------------------- results log


def test_results_log_round_trip(tmp_path):
    path = tmp_path / "runs" / "results.jsonl"
    with durable.ResultsLog(path) as log:
        log.write({"image": Path("q/a.jpg"), "iou": np.float32(0.5), "size": np.array([3, 4]), "ok": np.bool_(True)})
        log.write({"image": "q/é.jpg", "iou": None})
        log.write({"image": "q/undecodable\udcff.jpg"})
    assert durable.read_results(path) == [
        {"image": "q/a.jpg", "iou": 0.5, "size": [3, 4], "ok": True},
        {"image": "q/é.jpg", "iou": None},
        {"image": "q/undecodable\udcff.jpg"},
    ]
    assert durable.read_results(tmp_path / "absent.jsonl") == []


def test_torn_last_line_is_ignored_then_dropped(tmp_path):
    path = tmp_path / "results.jsonl"
    with durable.ResultsLog(path) as log:
        log.write({"n": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"n": 2, "ima')  # a write cut short by a kill
    assert durable.read_results(path) == [{"n": 1}]

    with durable.ResultsLog(path) as log:
        log.write({"n": 3})
    assert path.read_bytes() == b'{"n": 1}\n{"n": 3}\n'


def test_torn_only_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"n": 1}')  # even valid JSON counts only with its newline
    assert durable.read_results(path) == []
    with durable.ResultsLog(path) as log:
        log.write({"n": 2})
    assert durable.read_results(path) == [{"n": 2}]


def test_corrupt_middle_line_is_reported(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"n": 1}\n\n{oops\n{"n": 3}\n')
    with pytest.raises(InputError, match=r"results.jsonl:3: not a JSON row"):
        durable.read_results(path)
    path.write_bytes(b"[1, 2]\n")
    with pytest.raises(InputError, match=r"results.jsonl:1: not a JSON object"):
        durable.read_results(path)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_writer_leaves_readable_log(tmp_path):
    path = tmp_path / "results.jsonl"
    script = (
        "import sys, itertools\n"
        "from imrseg.durable import ResultsLog\n"
        "log = ResultsLog(sys.argv[1])\n"
        "for n in itertools.count():\n"
        "    log.write({'n': n, 'pad': 'x' * 5000})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env)
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 50_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = durable.read_results(path)
    assert len(rows) >= 5
    assert [r["n"] for r in rows] == list(range(len(rows)))


def test_results_log_does_not_follow_a_link(tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b'{"n": 1}\n{"torn')
    link = tmp_path / "results.jsonl"
    link.symlink_to(target)
    with pytest.raises(ImrsegError, match="results.jsonl: is a symbolic link"):
        durable.ResultsLog(link)
    assert target.read_bytes() == b'{"n": 1}\n{"torn'


# --------------------------------------------------------------------------- one writer per folder


def test_a_held_folder_refuses_a_second_lock(tmp_path):
    with durable.FolderLock(tmp_path / "out"):
        with pytest.raises(ImrsegError, match="out: another imrseg run is writing into this folder"):
            with durable.FolderLock(tmp_path / "out"):
                pass
    with durable.FolderLock(tmp_path / "out"):  # released on exit
        (tmp_path / "out" / "kept").write_text("x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [durable.LOCK_FILE, "kept"]


def test_a_folder_the_lock_made_and_nothing_used_is_removed(tmp_path):
    with durable.FolderLock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


def test_only_imrseg_temporaries_are_removed(tmp_path):
    durable.atomic_write_bytes(tmp_path / "a.png", b"x")
    ours = tmp_path / f".a.png{durable.TEMPORARY_MARK}0123456789ab"
    ours.write_bytes(b"half")
    theirs = [tmp_path / ".notes.tmp-0123456789ab", tmp_path / "a.png.imrseg-tmp-0123456789ab"]
    for path in theirs:
        path.write_bytes(b"not ours")
    assert durable.remove_temporaries([tmp_path, tmp_path / "absent"]) == 1
    assert not ours.exists() and all(p.exists() for p in theirs)


def test_file_sha256_sees_a_changed_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    os.utime(path, ns=(1, 1))
    assert durable.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two")  # same size and inode: the new mtime tells them apart
    os.utime(path, ns=(2, 2))
    assert durable.file_sha256(path) == hashlib.sha256(b"two").hexdigest()
