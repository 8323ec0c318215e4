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

With `--commands`, (a) and (b) run as whole `imrseg segment` commands on a folder
of --queries images (fresh processes, each paying Python start-up and model
loading once): one command with a --class per label against one --label command
per class, with recipe weight files written to a temporary folder.

With `--flops` the paths' work is counted instead of timed: GFLOP per query, from
the counted pieces (a measure that does not depend on what else the machine runs).
Otherwise each pair is timed in alternation, `--repeats` times, after a warm-up at the same
steps and batch size; figures are medians of seconds per query, wall-clock and
process CPU time (all threads: on a machine shared with other work the CPU time
is the steadier measure of the work done). The LAST stdout line is one JSON object.

    python benchmarks/bench_labelling.py --queries 4 --steps 2
    python benchmarks/bench_labelling.py --commands --queries 4 --steps 2
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import gflop, images, recipe_clip, recipe_network, report, timed, write_recipe_weight_files
from imrseg.clip.cam import ClipCAM
from imrseg.devices import resolve_device
from imrseg.predictor import Predictor
from imrseg.transforms import network_input

CLASSES = ["dog", "cat", "bird", "car"]


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
        cams = predictor.cams(batch, ["dog"])[0]
        sizes = [(im.height, im.width) for im in batch]
        with predictor.inference():
            query = predictor.model.encode(predictor.network_inputs(batch))
            predictor.model.segment(query, cams, [(query.index(slice(None)), cams.clone())], predictor.steps,
                                    sizes, every_step=True)


def command(folder: Path, device, steps: int, classes: list[str], separate: bool) -> None:
    """`imrseg segment` over folder/queries, as fresh processes: one command with a
    --class per label, or with `separate` one --label command per class."""
    common = ["-q", folder / "queries", "--steps", steps, "--quiet", "--device", device.type,
              "--weights", folder / "best_model.pt", "--clip-weights", folder / "clip_rn50.pt"]
    if separate:
        runs = [["--label", label, "-s", folder / f"{label}.jpg"] for label in classes]
    else:
        runs = [[arg for label in classes for arg in ("--class", f"{label}={folder / f'{label}.jpg'}")]]
    for i, run in enumerate(runs):
        out = folder / f"out{i}"
        subprocess.run([sys.executable, "-m", "imrseg", "segment", *map(str, run + common), "-o", str(out)],
                       check=True)
        shutil.rmtree(out)


def time_commands(device, steps: int, queries: int, repeats: int) -> dict:
    """Whole commands on a small folder, with what a command pays once (Python start,
    imports, loading the network and CLIP) in each: seconds per query of one command
    for C classes against C commands, alternated `repeats` times (medians)."""
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_recipe_weight_files(folder)
        (folder / "queries").mkdir()
        for i, image in enumerate(images(queries, 1)):
            image.save(folder / "queries" / f"q{i}.jpg", quality=95)
        for label, image in zip(CLASSES, images(len(CLASSES), 2)):
            image.save(folder / f"{label}.jpg", quality=95)
        command(folder, device, steps, CLASSES[:1], separate=False)  # warm-up: files into the page cache
        for count in (1, 2, 4):
            labels = CLASSES[:count]
            result[count] = alternate(lambda: command(folder, device, steps, labels, separate=False),
                                      lambda: command(folder, device, steps, labels, separate=True),
                                      ("one_command", "separate_commands"), repeats, device, queries)
            print(f"{count} class(es) as commands: one vs separate, speedup {result[count]['wall']['speedup']:.2f}x "
                  f"wall, {result[count]['cpu']['speedup']:.2f}x CPU", file=sys.stderr)
    return result


def alternate(first, second, names: tuple[str, str], repeats, device, queries: int) -> dict:
    """Per-query medians of both, wall and CPU, and second / first (the speedup)."""
    times = ([], [])
    for _ in range(repeats):
        times[0].append(timed(first, device))
        times[1].append(timed(second, device))
    out = {}
    for clock in ("wall", "cpu"):
        a, b = (statistics.median(getattr(t, clock) for t in ts) / queries for ts in times)
        out[clock] = {f"{names[0]}_s_per_query": round(a, 4), f"{names[1]}_s_per_query": round(b, 4),
                      "speedup": round(b / a, 3)}
    return out


def count_work(net, cam, device, steps, image) -> dict:
    """GFLOP per query of each path, from the counted GFLOP of its pieces on one
    image: CLIP's image forward, the backbone encoding, one refinement against a
    support, and zero-shot's refinement with one branch or two. (torch's counter
    cannot follow Grad-CAM's autograd.grad, so its short backward pass, from the
    last block on, is left out of both sides.) Q queries, one support per class:
    one run costs C (clip + encode) for the supports and Q (clip + encode + C refine);
    C separate runs cost C (clip + encode) + C Q (clip + encode + refine)."""
    text = cam.text_features(["dog", "cat"])
    with torch.inference_mode():
        clip = gflop(lambda: cam.probabilities(cam.batch([image]), text))
        features = net.encode(network_input(image)[None].to(device))
        encode = gflop(lambda: net.encode(network_input(image)[None].to(device)))
        cams = torch.rand(1, 50, 50, device=device)
        refine = gflop(lambda: net.refine(features, features.index(slice(None)), cams, cams.clone(), steps,
                                          with_support=False))
        mirrored = gflop(lambda: net.refine(features, features, cams, cams, steps, with_support=False))
    q = 100  # queries per run: the supports' share, per query, is then small
    out = {"steps": steps, "queries_per_run": q,
           "pieces_gflop": {"clip_forward": round(clip, 2), "encode": round(encode, 2),
                            "refine_one_support": round(refine, 2), "zero_shot_refine_shared": round(mirrored, 2)},
           "classes": {}}
    for c in (1, 2, 4):
        one = (c * (clip + encode) + q * (clip + encode + c * refine)) / q
        apart = c * ((clip + encode) + q * (clip + encode + refine)) / q
        out["classes"][c] = {"one_run_gflop_per_query": round(one, 1), "separate_runs_gflop_per_query": round(apart, 1),
                             "ratio": round(apart / one, 3)}
    # Zero-shot before the sharing ran both branches (the same features and CAM as a copy).
    shared, both = clip + encode + mirrored, clip + encode + refine
    out["zero_shot"] = {"shared_gflop_per_query": round(shared, 1), "two_branches_gflop_per_query": round(both, 1),
                        "ratio": round(both / shared, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--flops", action="store_true", help="count GFLOP per query instead of timing")
    parser.add_argument("--commands", action="store_true",
                        help="time whole `imrseg segment` commands on a folder of --queries images instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.commands:
        result = time_commands(device, args.steps, args.queries, args.repeats)
        report({"device": str(device), "queries": args.queries, "steps": args.steps, "repeats": args.repeats,
                "commands": result})
        return
    batch_size = args.batch_size or (8 if device.type == "cuda" else 2)

    net = recipe_network().to(device).eval()
    clip = recipe_clip()
    cam = ClipCAM(clip, device=device)
    queries, supports = images(args.queries, 1), images(len(CLASSES), 2)
    q = args.queries
    if args.flops:
        report(count_work(net, cam, device, args.steps, queries[0]))
        return
    # Warm-up at the measured steps and batch size: first calls allocate and pick kernels.
    one_run(net, cam, device, args.steps, supports, CLASSES[:2], queries[:batch_size], batch_size)
    result = {"device": str(device), "torch_threads": torch.get_num_threads(), "queries": q,
              "steps": args.steps, "batch_size": batch_size, "repeats": args.repeats, "classes": {}}
    for count in (1, 2, 4):
        labels = CLASSES[:count]
        timing = alternate(
            lambda: one_run(net, cam, device, args.steps, supports, labels, queries, batch_size),
            lambda: separate_runs(net, cam, device, args.steps, supports, labels, queries, batch_size),
            ("one_run", "separate_runs"), args.repeats, device, q)
        result["classes"][count] = timing
        print(f"{count} class(es): one run vs separate runs, speedup {timing['wall']['speedup']:.2f}x wall, "
              f"{timing['cpu']['speedup']:.2f}x CPU", file=sys.stderr)

    predictor = Predictor(net, cam, device=device, steps=args.steps)
    timing = alternate(lambda: zero_shot(predictor, queries, batch_size, False),
                       lambda: zero_shot(predictor, queries, batch_size, True), ("shared", "two_branches"),
                       args.repeats, device, q)
    result["zero_shot"] = timing
    report(result, f"zero-shot: shared vs two branches, speedup {timing['wall']['speedup']:.2f}x wall, "
                   f"{timing['cpu']['speedup']:.2f}x CPU")


if __name__ == "__main__":
    main()
