"""Labelling several classes in one run against one run per class, and zero-shot
with its support branch shared against the two-branch path, side by side in one
process with recipe weights (no download).

(a) C classes in one run: `Predictor.set_supports` with C classes (one support
    each), then `predict_classes`: each query decoded, encoded and run through
    CLIP once for all classes; only the refinement is per class;
(b) C separate runs: one single-class predictor per class over the same queries;
(c) zero-shot, shared: `predict_zero_shot` (the query is its own support, and
    the support branch, equal to the query's, is not run);
(d) zero-shot, two branches: the same CAMs and features, but the support passed
    as a separate copy, so `refine` runs both branches as it did before sharing.

Each pair is timed in alternation, `--repeats` times; figures are medians of
seconds per query. The LAST stdout line is one JSON object.

    python benchmarks/bench_labelling.py --queries 4 --steps 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imrseg.cam import ClipCAM, openai_fp16_round_trip
from imrseg.devices import resolve_device
from imrseg.models import IMRHSNet
from imrseg.predictor import Predictor

# The recipe weights are a test fixture: the same deterministic weights the golden outputs use.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from recipe import apply_recipe  # noqa: E402

CLASSES = ["dog", "cat", "bird", "car"]


def images(count: int, seed: int) -> list[Image.Image]:
    """Smooth random pictures of assorted sizes (photo-like, not white noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return out


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def batches(queries, batch_size):
    return [queries[i:i + batch_size] for i in range(0, len(queries), batch_size)]


def one_run(net, cam, device, steps, supports, labels, queries, batch_size) -> None:
    predictor = Predictor(net, cam, device=device, steps=steps)
    predictor.set_supports({label: ([supports[CLASSES.index(label)]], None) for label in labels})
    for batch in batches(queries, batch_size):
        predictor.predict_classes(batch)


def separate_runs(net, cam, device, steps, supports, labels, queries, batch_size) -> None:
    for label in labels:
        one_run(net, cam, device, steps, supports, [label], queries, batch_size)


def zero_shot(predictor, queries, batch_size, two_branches: bool) -> None:
    """Zero-shot over the queries; with `two_branches` the support is a copy of the
    query, which makes `refine` run the support branch as before the sharing."""
    for batch in batches(queries, batch_size):
        if not two_branches:
            predictor.predict_zero_shot(batch, "dog")
            continue
        predictor.set_zero_shot(["dog"])
        cams = predictor._cams(batch, ["dog"])[0]
        sizes = [(im.height, im.width) for im in batch]
        with predictor._network():
            query = predictor.model.encode(predictor._inputs(batch))
            predictor.model.segment(query, cams, [(query.index(slice(None)), cams.clone())], predictor.steps,
                                    sizes, every_step=True)


def alternate(first, second, repeats, device) -> tuple[float, float]:
    times = ([], [])
    for _ in range(repeats):
        times[0].append(timed(first, device))
        times[1].append(timed(second, device))
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 2)

    import open_clip

    net = apply_recipe(IMRHSNet("resnet50")).to(device).eval()
    clip = openai_fp16_round_trip(apply_recipe(open_clip.create_model("RN50-quickgelu", pretrained=None)))
    cam = ClipCAM(clip, device=device)
    queries, supports = images(args.queries, 1), images(len(CLASSES), 2)
    q = args.queries

    one_run(net, cam, device, 1, supports, CLASSES[:2], queries[:1], 1)  # warm-up: kernels, allocations
    result = {"device": str(device), "torch_threads": torch.get_num_threads(), "queries": q,
              "steps": args.steps, "batch_size": batch_size, "classes": {}}
    for count in (1, 2, 4):
        labels = CLASSES[:count]
        together, apart = alternate(
            lambda: one_run(net, cam, device, args.steps, supports, labels, queries, batch_size),
            lambda: separate_runs(net, cam, device, args.steps, supports, labels, queries, batch_size),
            args.repeats, device)
        result["classes"][count] = {"one_run_s_per_query": round(together / q, 4),
                                    "separate_runs_s_per_query": round(apart / q, 4),
                                    "speedup": round(apart / together, 3)}
        print(f"{count} class(es): one run {together / q:.3f} s/query, separate runs {apart / q:.3f} s/query, "
              f"{apart / together:.2f}x", file=sys.stderr)

    predictor = Predictor(net, cam, device=device, steps=args.steps)
    shared, both = alternate(lambda: zero_shot(predictor, queries, batch_size, False),
                             lambda: zero_shot(predictor, queries, batch_size, True), args.repeats, device)
    result["zero_shot"] = {"shared_s_per_query": round(shared / q, 4), "two_branches_s_per_query": round(both / q, 4),
                           "speedup": round(both / shared, 3)}
    print(f"zero-shot: shared {shared / q:.3f} s/query, two branches {both / q:.3f} s/query, "
          f"{both / shared:.2f}x", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
