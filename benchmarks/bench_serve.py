"""`imrseg serve` under concurrent clients, side by side with `run_folder` in one process.

(a) `run_folder` (what `imrseg segment` runs) over the same queries and support with the
    same weights and batch size. Its rate is the marginal one, (Q - 1) extra queries over
    the time they added beyond a run of one query, so loading the model and writing the
    folder's bookkeeping once are left out, as the warm server leaves them out.
(b) the server: the app on a real uvicorn on 127.0.0.1 (ephemeral port), a `Segmenter`
    around a predictor with the same weights; for each client count (1, 4, 16), `--rounds`
    rounds in which every client sends one query (upload) with the one support (upload)
    at the same moment. Throughput is requests answered over the rounds' wall time;
    latency is each request's, p50 and p99 over all of them. One warm-up request first
    (the support set is then cached, as for a server that has been running).

Full-size network and CLIP with recipe weights (no download). The LAST stdout line is
one JSON object.

    python benchmarks/bench_serve.py --queries 16 --rounds 3 --steps 1
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from common import LABEL, images, report, serve_in_thread, write_recipe_weight_files
from imrseg.predictor import Predictor
from imrseg.runner import RunSettings, run_folder
from imrseg.serve.app import create_app
from imrseg.serve.limits import Limits
from imrseg.serve.service import Segmenter


def folder_rate(queries: list[Path], support: Path, weights: dict, steps: int, batch_size: int, work: Path,
                device: str) -> dict:
    """run_folder's queries per second beyond a one-query run (see the module's note)."""
    def run(files, name):
        folder = work / name
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        settings = RunSettings(queries=(folder,), out=work / f"{name}-out", label=LABEL, supports=(support,),
                               weights=weights["weights"], clip_weights=weights["clip"], steps=steps, device=device,
                               batch_size=batch_size)
        start = time.perf_counter()
        run_folder(settings)
        return time.perf_counter() - start

    one = run(queries[:1], "one")
    every = run(queries, "every")
    return {"queries": len(queries), "seconds_one": one, "seconds_all": every,
            "per_second": (len(queries) - 1) / max(every - one, 1e-9)}


def serve_rates(predictor: Predictor, queries: list[bytes], support: bytes, clients: list[int], rounds: int,
                batch_size: int, max_wait_ms: float) -> list[dict]:
    limits = Limits(max_queue=4 * max(clients), timeout_s=3600)  # measured, not cut short
    segmenter = Segmenter(predictor, batch_size=batch_size, max_wait_ms=max_wait_ms, max_queue=limits.max_queue,
                          timeout_s=limits.timeout_s)
    served = serve_in_thread(create_app(segmenter, limits))
    url = f"{served.url}/v1/segment"

    def send(query: bytes) -> float:
        start = time.perf_counter()
        response = httpx.post(url, data={"label": LABEL}, timeout=600,
                              files=[("queries", ("q.png", query)), ("supports", ("s.png", support))])
        response.raise_for_status()
        return time.perf_counter() - start

    try:
        send(queries[0])  # warm-up: the support set is cached from here on
        rows = []
        for n in clients:
            latencies, forwards, wall = [], segmenter.forwards, 0.0
            with ThreadPoolExecutor(n) as pool:
                for r in range(rounds):
                    start = time.perf_counter()
                    latencies += pool.map(send, [queries[(r * n + i) % len(queries)] for i in range(n)])
                    wall += time.perf_counter() - start
            rows.append({"clients": n, "requests": len(latencies), "per_second": len(latencies) / wall,
                         "p50_s": statistics.median(latencies), "p99_s": float(np.percentile(latencies, 99)),
                         "forwards": segmenter.forwards - forwards})
            print(f"serve, {n} clients: {rows[-1]}", file=sys.stderr, flush=True)
        return rows
    finally:
        served.stop()
        segmenter.close()


def measure(device: str, queries: int, rounds: int, steps: int, batch_size: int, max_wait_ms: float,
            clients: list[int]) -> dict:
    """run_folder's rate and the server's rows, each row's ratio to run_folder's."""
    pictures = images(queries + 1, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_recipe_weight_files(work)
        files = []
        for i, picture in enumerate(pictures):
            files.append(work / f"{i:03d}.png")
            picture.save(files[-1])
        support, query_files = files[0], files[1:]
        folder = folder_rate(query_files, support, weights, steps, batch_size, work, device)
        print(f"run_folder: {folder}", file=sys.stderr, flush=True)
        predictor = Predictor.from_pretrained(weights["weights"], weights["clip"], device=device, steps=steps)
        rows = serve_rates(predictor, [f.read_bytes() for f in query_files], support.read_bytes(), clients,
                           rounds, batch_size, max_wait_ms)
    for row in rows:
        row["vs_run_folder"] = row["per_second"] / folder["per_second"]
        row["p99_over_p50"] = row["p99_s"] / row["p50_s"]
    return {"run_folder": folder, "serve": rows, "steps": steps, "batch_size": batch_size,
            "max_wait_ms": max_wait_ms, "device": device, "threads": torch.get_num_threads()}


def table(result: dict) -> list[str]:
    lines = [f"run_folder: {result['run_folder']['per_second']:.3f} queries/s (batch {result['batch_size']}, "
             f"steps {result['steps']}, {result['device']})",
             "| clients | requests/s | vs run_folder | p50 s | p99 s | p99/p50 | forwards/requests |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['per_second']:.3f} | {r['vs_run_folder']:.0%} | {r['p50_s']:.2f} | "
              f"{r['p99_s']:.2f} | {r['p99_over_p50']:.2f} | {r['forwards']}/{r['requests']} |"
              for r in result["serve"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    torch.manual_seed(0)
    result = measure(args.device, args.queries, args.rounds, args.steps, args.batch_size, args.max_wait_ms,
                     args.clients)
    report(result, "\n".join(table(result)))


if __name__ == "__main__":
    main()
