"""The few-shot benchmarks: split lists, images and masks, test episodes."""
from __future__ import annotations

from .benchmarks import BenchmarkData, ground_truth, nearest_resize
from .episodes import Episode, sample_episodes
from .safe_pickle import safe_loads
from .splits import (SPLIT_SHA256, SPLITS_BASE_URL, Split, cache_root, download_split, load_split,
                     locate_split, split_name)

__all__ = [
    "BenchmarkData", "Episode", "SPLIT_SHA256", "SPLITS_BASE_URL", "Split", "cache_root",
    "download_split", "ground_truth", "load_split", "locate_split", "nearest_resize",
    "safe_loads", "sample_episodes", "split_name",
]
