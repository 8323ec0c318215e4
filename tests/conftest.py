"""Shared fixtures: full-size models with recipe weights (no download)."""
from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def recipe_net():
    import torch

    from imrseg.models import IMRHSNet
    from recipe import apply_recipe

    torch.manual_seed(0)
    return apply_recipe(IMRHSNet("resnet50"))


@pytest.fixture(scope="session")
def recipe_clip():
    import open_clip

    from imrseg.clip.cam import openai_fp16_round_trip
    from recipe import apply_recipe

    model = open_clip.create_model("RN50-quickgelu", pretrained=None)
    return openai_fp16_round_trip(apply_recipe(model))


@pytest.fixture(scope="session")
def recipe_weight_files(recipe_net, tmp_path_factory):
    """An authors'-format best_model.pt and a CLIP state dict file, both recipe weights,
    for the commands' --weights / --clip-weights."""
    from recipe import write_recipe_weight_files

    return write_recipe_weight_files(tmp_path_factory.mktemp("weights"), recipe_net)


def write_image(path: Path, size=(64, 48), seed: int = 0, **save_options) -> Path:
    """A random RGB picture of `size` (W, H)."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save_options)
    return path


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1, for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process) -> None:
    """End a server a test started: SIGTERM, then SIGKILL if it has not gone in 30 s."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
