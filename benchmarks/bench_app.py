"""`imrseg app`: from Run to the first mask a page is told of, and to the last, side by
side with `imrseg segment` (`run_folder`) on the same folder, in one process.

(a) `run_folder` over the folder with one support image, saving the CAM and step files
    as the app does, same weights, steps and batch size, after the app's runs (so the
    process's first forwards are behind it too). Its time is from the moment its model is
    loaded (the progress bar opens) to the end: the app's model is loaded before Run is
    pressed, so loading is left out of both.
(b) the app: its routes on a real uvicorn on 127.0.0.1 (ephemeral port) over the same
    folder into another output folder, the class set through PUT /app/api/classes, then
    POST /app/api/run; the clock stops at the first `result` event read from
    /app/api/events (as the page receives it) and at the `run` event that says finished.
    Two Runs: the first at once after the server starts, as `imrseg app` starts it
    (warming up in the background: the first Run waits for what is left of it), then
    another support, which recomputes every image on the warm server: segment's run uses
    that support. The support set (features and CLIP-CAM of
    the support) is computed within the first forward of a Run; its own time, measured
    alone on the same warm predictor, is reported beside it, and the first mask's time
    after it. The masks are compared pixel by pixel with segment's.

Full-size network and CLIP with recipe weights (no download). The LAST stdout line is
one JSON object.

    python benchmarks/bench_app.py --images 50 --steps 1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from common import LABEL, images, report, serve_in_thread, write_recipe_weight_files
from imrseg.images import load_image
from imrseg.predictor import Predictor
from imrseg.runner import OutputOptions, RunSettings, run_folder
from imrseg.serve.app import create_app
from imrseg.serve.limits import Limits
from imrseg.serve.service import Segmenter
from imrseg.studio import Runner, Workspace, router


def segment_seconds(folder: Path, support: Path, out: Path, weights: dict, steps: int, batch_size: int,
                    device: str) -> float:
    """run_folder's time once its model is loaded (its progress opens then)."""
    opened = []

    @contextlib.contextmanager
    def progress(total):
        opened.append(time.perf_counter())
        yield lambda outcome: None

    settings = RunSettings(queries=(folder,), out=out, label=LABEL, supports=(support,), weights=weights["weights"],
                           clip_weights=weights["clip"], steps=steps, device=device, batch_size=batch_size,
                           outputs=OutputOptions(save_cam=True, save_steps=True))
    run_folder(settings, progress)
    return time.perf_counter() - opened[0]


def app_seconds(predictor: Predictor, folder: Path, out: Path, batch_size: int) -> dict:
    """(first mask, last mask) seconds after POST /app/api/run, read off the event stream,
    for the first Run after the server started ("cold") and a second with another support."""
    limits = Limits(timeout_s=3600)
    segmenter = Segmenter(predictor, batch_size=batch_size, max_wait_ms=5, timeout_s=limits.timeout_s, warm_up=True)
    workspace = Workspace(folder, out).open()
    runner = Runner(workspace, segmenter, batch_size)
    app = create_app(segmenter, limits)
    app.include_router(router(workspace, runner, segmenter, limits))
    served = serve_in_thread(app)
    url = f"{served.url}/app/api"

    def run(support: int) -> dict:
        httpx.put(f"{url}/classes", json={"classes": [{"label": LABEL, "supports": [
            {"kind": "image", "ref": support}]}]}).raise_for_status()
        first = None
        with httpx.Client(timeout=None) as client, client.stream("GET", f"{url}/events") as events:
            started = time.perf_counter()
            client.post(f"{url}/run").raise_for_status()
            event = None
            for line in events.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "result" and first is None:
                        first = time.perf_counter() - started
                    if event == "run" and data["status"] != "started":
                        if data["status"] != "finished":
                            raise RuntimeError(f"the run ended {data['status']}: {data['error']}")
                        return {"first_s": first, "last_s": time.perf_counter() - started,
                                "masks": workspace.counts()["proposed"]}
        raise RuntimeError("the event stream ended before the run")

    try:
        # The first Run after the server starts pays for the model's first forwards at these
        # shapes; the second, with another support, recomputes every image on a warm server.
        return {"cold": run(0), "warm": run(1)}
    finally:
        served.stop()
        segmenter.close()
        workspace.close()


def support_seconds(predictor: Predictor, support: Path) -> float:
    """The support set alone (its features and CLIP-CAM), on the warm predictor; the best of three."""
    image = load_image(support, draft_size=0).image
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        predictor.support_set({LABEL: ([image], None)})
        best = min(best, time.perf_counter() - start)
    return best


def measure(device: str, count: int, steps: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_recipe_weight_files(work)
        folder = work / "photos"
        folder.mkdir()
        for i, picture in enumerate(images(count, seed=0)):
            picture.save(folder / f"{i:03d}.jpg", quality=90)
        files = sorted(folder.iterdir())
        predictor = Predictor.from_pretrained(weights["weights"], weights["clip"], device=device, steps=steps)
        app = app_seconds(predictor, folder, work / "app-out", batch_size)
        print(f"app: {app}", file=sys.stderr, flush=True)
        supports = support_seconds(predictor, files[1])
        # After the app's runs, so that segment's first forwards are as warm as the app's second Run's.
        segment = segment_seconds(folder, files[1], work / "segment-out", weights, steps, batch_size, device)
        # Batched differently (the app's first query goes alone), the masks agree to the last
        # few pixels where the probability sits at the threshold (batches agree to 1e-4).
        differing = total = 0
        for file in files:
            ours = np.asarray(Image.open(work / "app-out" / f"{file.stem}.png")) > 0
            theirs = np.asarray(Image.open(work / "segment-out" / f"{file.stem}.png")) > 0
            differing, total = differing + int((ours != theirs).sum()), total + ours.size
    warm = app["warm"]
    return {"images": count, "steps": steps, "batch_size": batch_size, "device": device,
            "threads": torch.get_num_threads(), "segment_s": segment, "cold": app["cold"], "app_first_s": warm["first_s"],
            "support_set_s": supports, "app_first_after_supports_s": warm["first_s"] - supports,
            "app_last_s": warm["last_s"], "app_over_segment": warm["last_s"] / segment, "masks": warm["masks"],
            "pixels_differing_from_segment": differing / total}


def table(r: dict) -> str:
    return "\n".join([
        f"{r['images']} images, steps {r['steps']}, batch {r['batch_size']}, {r['device']} ({r['threads']} threads)",
        "| | seconds |", "|---|---|",
        f"| `imrseg segment` (model loaded) | {r['segment_s']:.1f} |",
        f"| app: Run to the first mask | {r['app_first_s']:.2f} |",
        f"| of which the support set | {r['support_set_s']:.2f} |",
        f"| app: first mask after the support set | {r['app_first_after_supports_s']:.2f} |",
        f"| app: Run to the last mask | {r['app_last_s']:.1f} ({r['app_over_segment']:.0%} of segment) |",
        f"| app, first Run after start: first / last mask | {r['cold']['first_s']:.2f} / {r['cold']['last_s']:.1f} |",
        f"mask pixels differing from segment's: {r['pixels_differing_from_segment']:.2e}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = measure(args.device, args.images, args.steps, args.batch_size)
    report(result, table(result))


if __name__ == "__main__":
    main()
