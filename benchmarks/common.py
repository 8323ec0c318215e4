"""What the benchmark scripts share: one clock for timing a piece of work, a peak
memory probe, the test pictures, the networks with recipe weights, a FLOP counter
and the scripts' report (a summary line on stderr, then the result as the LAST
stdout line, one JSON object).

The recipe weights are a test fixture (tests/recipe.py): the same deterministic
weights the golden outputs use, so nothing is downloaded.
"""
from __future__ import annotations

import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from imrseg.clip.cam import openai_fp16_round_trip
from imrseg.models import IMRHSNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# write_recipe_weight_files is for the scripts: the weight files the commands read.
from recipe import apply_recipe, write_recipe_weight_files  # noqa: E402, F401

# The class the single-class benchmarks segment: one of the 20 PASCAL classes, the
# authors' CAM vocabulary.
LABEL = "dog"


class Timing(NamedTuple):
    """What `timed` measured: wall-clock seconds, CPU seconds and what fn returned."""
    wall: float
    cpu: float
    result: Any


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished child processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn, device: torch.device | None = None) -> Timing:
    """fn() timed, wall-clock and CPU (on a machine shared with other work the CPU
    time is the steadier measure of the work done); on CUDA the device is
    synchronized before and after, so its queued work counts."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    if cuda:
        torch.cuda.synchronize(device)
    return Timing(time.perf_counter() - wall, _cpu_seconds() - cpu, result)


class PeakMemory:
    """Peak host RSS (sampled) or peak CUDA allocation above the start, in MiB."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mib = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def gflop(fn) -> float:
    """GFLOP of fn(), counted by torch (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def images(count: int, seed: int) -> list[Image.Image]:
    """Smooth random pictures of assorted sizes (photo-like, not white noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return out


def recipe_network(backbone: str = "resnet50") -> IMRHSNet:
    """The full-size network with recipe weights."""
    return apply_recipe(IMRHSNet(backbone))


def recipe_clip():
    """CLIP RN50 with recipe weights, rounded through fp16 as OpenAI's weights are."""
    import open_clip

    return openai_fp16_round_trip(apply_recipe(open_clip.create_model("RN50-quickgelu", pretrained=None)))


def report(result: dict, summary: str | None = None) -> None:
    """The summary line, if any, on stderr, then `result` as the LAST stdout line."""
    if summary is not None:
        print(summary, file=sys.stderr)
    print(json.dumps(result))


class Served(NamedTuple):
    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def serve_in_thread(app) -> Served:
    """`app` on a real uvicorn on 127.0.0.1 (an ephemeral port), in a thread, once it answers."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return Served(f"http://127.0.0.1:{port}", server, thread)
