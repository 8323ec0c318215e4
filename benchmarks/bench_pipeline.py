"""The ceiling the folder pipeline puts on a run: `imrseg segment`'s batch loop
(`runner.batches.segment_queries`) over a folder of 500x375 JPEGs with a predictor
that costs nothing but the host's share of a real one's preprocessing (both
resizes, the network's 400x400 input and CLIP's 224x224 one, made on the decoding
threads as a run makes them, and the uint8 batches stacked; normalisation is the
device's), so what is timed is decoding, preprocessing and the durable writes of
each query's mask, overlay and row (through the folder's guard, every file fsynced).

A GPU run cannot go faster than this. `queries_per_s_per_core` is queries over
the CPU seconds the process used (all its threads): the pipeline must reach at
least 30 on one core so that it is not what limits a GPU. The LAST stdout line is
one JSON object.

    python benchmarks/bench_pipeline.py --queries 200
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import LABEL, report, timed
from imrseg.guard import OwnedFolder
from imrseg.outputs.naming import plan_outputs
from imrseg.outputs.results import RESULTS_FILE, query_file
from imrseg.predictor import ClassPredictions, Prediction, QueryPixels
from imrseg.runner.batches import Job, segment_queries
from imrseg.runner.writing import OutputOptions
from imrseg.transforms import clip_pixels, network_pixels, to_device

TARGET_PER_CORE = 30.0


def write_queries(folder: Path, count: int) -> list[Path]:
    """Smooth random 500x375 / 375x500 JPEGs (photo-like, not white noise)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        w, h = (500, 375) if i % 2 == 0 else (375, 500)
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        paths.append(folder / f"im{i:04d}.jpg")
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(paths[-1], quality=90)
    return paths


def prepare(image: Image.Image) -> QueryPixels:
    """As `Predictor.prepare` with CLIP's 224 input, on the decoding threads."""
    return QueryPixels(network_pixels(image), clip_pixels(image, 224), image.size)


def free_predict(prepared, sizes) -> list[ClassPredictions]:
    """What a predictor hands the writer, at no cost beyond stacking its inputs' uint8
    batches: an ellipse mask at each query's size."""
    to_device([p.network for p in prepared], torch.device("cpu"))
    to_device([p.clip for p in prepared], torch.device("cpu"))
    out = []
    for w, h in sizes:
        yy, xx = np.ogrid[:h, :w]
        mask = ((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 < 1
        prediction = Prediction(mask, mask.astype(np.float32), np.zeros((50, 50), np.float32), [], 0.9)
        out.append(ClassPredictions({LABEL: prediction}))
    return out


def run(queries: list[Path], root: Path, out: Path, batch_size: int):
    jobs = [Job(query, stem, query_file(query), None, query.name)
            for query, stem in plan_outputs([(q, root) for q in queries], out).items()]
    with OwnedFolder(out) as folder, folder.log(RESULTS_FILE) as log:
        return segment_queries(free_predict, jobs, folder=folder, steps=1, options=OutputOptions(),
                               labels=[LABEL], batch_size=batch_size, max_pixels=None, log=log, prepare=prepare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the work is per image; the figure is per core
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "queries"
        queries = write_queries(root, args.queries)
        runs = []
        for r in range(args.repeats):
            t = timed(lambda: run(queries, root, Path(tmp) / f"out{r}", args.batch_size))
            assert t.result.done == len(queries), t.result.to_dict()
            runs.append(t)
    best = min(runs, key=lambda t: t.cpu)
    per_core = len(queries) / best.cpu
    result = {"queries": len(queries), "batch_size": args.batch_size, "cores": os.cpu_count(),
              "wall_s": best.wall, "cpu_s": best.cpu, "queries_per_s": len(queries) / best.wall,
              "queries_per_s_per_core": per_core, "target_per_core": TARGET_PER_CORE,
              "meets_target": per_core >= TARGET_PER_CORE}
    report(result, f"pipeline: {per_core:.1f} queries/s per core ({len(queries) / best.wall:.1f}/s wall on "
                   f"{os.cpu_count()} cores; target {TARGET_PER_CORE:.0f} per core)")


if __name__ == "__main__":
    main()
