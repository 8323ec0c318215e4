"""Killing a run mid-folder (SIGINT, SIGKILL) loses nothing: no partial files, and a
re-run finishes with the same masks as an uninterrupted run."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_image
from imrseg.durable import is_temporary
from imrseg.errors import ImrsegError
from imrseg.runner.batches import predict_with_backoff

pytestmark = pytest.mark.slow
QUERIES = 5


@pytest.fixture(scope="module")
def job(tmp_path_factory, recipe_weight_files):
    root = tmp_path_factory.mktemp("interrupt")
    for i in range(QUERIES):
        write_image(root / "q" / f"img{i}.jpg", (48 + i, 40), seed=20 + i)
    support = write_image(root / "s.jpg", seed=30)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "imrseg", "segment", "-l", "cat", "-s", str(support), "-q", str(root / "q"),
                "-o", str(out), "--steps", "1", "--batch-size", "1", "--device", "cpu", "--quiet",
                "--weights", recipe_weight_files["weights"], "--clip-weights", recipe_weight_files["clip"]]

    reference = root / "reference"
    subprocess.run(command(reference), check=True, capture_output=True, timeout=600)
    return command, reference, root


def _masks(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("img*.png")) if "_" not in p.stem}


def _interrupt(command, out: Path, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (out / "img0.png").exists():  # the first query is finished: stop mid-folder
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if is_temporary(p.name)]


def _no_partial_files(out: Path) -> None:
    from PIL import Image

    for path in out.rglob("*"):
        if path.suffix in (".png", ".jpg"):
            Image.open(path).load()  # every output present decodes completely


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_to_the_same_masks(job, sig):
    command, reference, root = job
    out = root / f"out-{sig.name}"
    stopped = _interrupt(command(out), out, sig)
    if sig == signal.SIGINT:
        assert stopped.returncode == 130, stopped.stderr
        assert "interrupted" in stopped.stderr
        assert not temporaries(out)
    else:
        assert stopped.returncode == -signal.SIGKILL
    _no_partial_files(out)
    assert len(_masks(out)) < QUERIES

    again = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _masks(out) == _masks(reference)
    assert not temporaries(out)  # a killed run's temporaries are cleaned up


def test_out_of_memory_retries_in_halves():
    calls = []

    def predict(images, sizes):
        calls.append(len(images))
        if len(images) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [f"pred-{images[0]}"]

    assert predict_with_backoff(predict, [1, 2, 3], [None] * 3, "cuda:0") == ["pred-1", "pred-2", "pred-3"]
    assert calls == [3, 1, 2, 1, 1]

    def never(images, sizes):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(ImrsegError, match="out of memory on cuda:0 even for one image; "
                                          "try `device` cpu or a smaller `batch_size`"):
        predict_with_backoff(never, [1, 2], [None] * 2, "cuda:0")

    def broken(images, sizes):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict_with_backoff(broken, [1], [None], "cpu")
