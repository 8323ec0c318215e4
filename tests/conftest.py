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
    from imrseg.recipe import apply_recipe

    torch.manual_seed(0)
    return apply_recipe(IMRHSNet("resnet50"))


@pytest.fixture(scope="session")
def recipe_clip():
    import open_clip

    from imrseg.cam import openai_fp16_round_trip
    from imrseg.recipe import apply_recipe

    model = open_clip.create_model("RN50-quickgelu", pretrained=None)
    return openai_fp16_round_trip(apply_recipe(model))
