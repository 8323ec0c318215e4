"""The one GPU check: parity of every precision against CPU fp32, end-to-end
`imrseg segment` throughput, where a batch's time goes, and training speed and
memory, in one command (about 5 minutes on an H100/H200).

1. parity: the network's logits and masks, the CLIP-CAM and a training step (loss
   and gradients) on the device in fp32, tf32, bf16 and fp16, each against the same
   computation in fp32 on the CPU (and fp32 against the authors' golden outputs);
2. segment: `imrseg segment` over a folder of 500x375 JPEGs, masks and overlays
   written durably, at the default settings and at bf16 with the best of a few batch
   sizes; queries/s is the marginal rate between a short and a long folder, so
   loading the model does not count;
3. stages: one batch split into decode, preprocessing, CAM, encode, refine and
   write, and the share of a batch's wall time the GPU is busy (torch.profiler);
4. training: iterations at batch 8 and 40 in fp32 and bf16: s/iteration,
   episodes/s and peak memory.

Recipe weights (tests/recipe.py), nothing downloaded. Summary table on stderr, the
LAST stdout line is one JSON object. `--quick` shrinks every size for a CPU dry run.

    python benchmarks/bench_gpu.py                  # on the GPU
    python benchmarks/bench_gpu.py --device cpu --quick
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common import LABEL, PeakMemory, images, recipe_clip, recipe_network, report, timed, write_recipe_weight_files
from imrseg.clip.cam import ClipCAM
from imrseg.data.classes import PASCAL_CLASSES
from imrseg.devices import PRECISIONS, autocast, default_batch_size, float32_mode, is_out_of_memory, resolve_device
from imrseg.images import load_image
from imrseg.predictor import Predictor
from imrseg.runner.writing import OutputOptions, write_outputs

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"
CAM_TARGETS = [11, 14]


def golden(name: str) -> dict:
    return dict(np.load(GOLDEN / name))


def network_input(x: np.ndarray, device) -> torch.Tensor:
    return F.interpolate(torch.from_numpy(x), (400, 400), mode="bilinear", align_corners=True).to(device)


def precisions(device) -> list[str]:
    return [p for p in PRECISIONS if p != "fp16" or device.type == "cuda"]


# ------------------------------------------------------------------ 1. parity
def network_logits(net, device, precision: str) -> torch.Tensor:
    g = golden("imr_hsnet_resnet50.npz")
    args = (network_input(g["base_query"], device), network_input(g["base_support"][:, 0], device),
            torch.from_numpy(g["cam_query"]).to(device), torch.from_numpy(g["cam_support"][:, 0]).to(device))
    with torch.inference_mode(), float32_mode(precision), autocast(device, precision):
        query, _ = net(*args, steps=2)
    return query.float().cpu()


def cam_maps(clip, device, precision: str) -> np.ndarray:
    image = Image.open(GOLDEN / "cam_input.png")
    with float32_mode(precision):
        return ClipCAM(clip, device=device)([image, image], PASCAL_CLASSES, CAM_TARGETS, size=50).cpu().numpy()


def training_step(net, device, precision: str) -> tuple[float, dict]:
    g = golden("train_resnet50_stage2.npz")
    net.zero_grad(set_to_none=True)
    with float32_mode(precision), autocast(device, precision):
        loss = net.loss(network_input(g["base_query"], device), network_input(g["base_support"], device),
                        torch.from_numpy(g["cam_query"]).to(device), torch.from_numpy(g["cam_support"]).to(device),
                        torch.from_numpy(g["mask_query"]).long().to(device),
                        torch.from_numpy(g["mask_support"]).long().to(device), steps=int(g["stage"]))
    loss.backward()
    return loss.item(), {n: p.grad.float().cpu() for n, p in net.named_parameters() if p.grad is not None}


def parity(device) -> dict:
    cpu = torch.device("cpu")
    net, clip = recipe_network(), recipe_clip()
    trainee = recipe_network().train()
    reference = {"logits": network_logits(net, cpu, "fp32"), "cam": cam_maps(clip, cpu, "fp32"),
                 "train": training_step(trainee, cpu, "fp32")}
    g = golden("imr_hsnet_resnet50.npz")
    out = {"fp32_cpu_vs_authors_logits": float(np.abs(reference["logits"][:, :, ::4, ::4].numpy()
                                                      - g["logits_query_stage2"]).max())}
    on_device = (copy.deepcopy(net).to(device), copy.deepcopy(clip).to(device), copy.deepcopy(trainee).to(device))
    ref_mask = reference["logits"].argmax(1)
    ref_loss, ref_grads = reference["train"]
    for precision in precisions(device):
        logits = network_logits(on_device[0], device, precision)
        row = {"logits_maxdiff": (logits - reference["logits"]).abs().max().item(),
               "mask_agreement": (logits.argmax(1) == ref_mask).float().mean().item()}
        if precision in ("fp32", "tf32"):  # the CAM runs in fp32 storage: bf16/fp16 use tf32's
            row["cam_maxdiff"] = float(np.abs(cam_maps(on_device[1], device, precision) - reference["cam"]).max())
        loss, grads = training_step(on_device[2], device, precision)
        row["train_loss_rel_diff"] = abs(loss - ref_loss) / abs(ref_loss)
        row["train_grad_maxdiff_over_norm"] = max(
            ((grads[k] - r).abs().max() / r.norm().clamp_min(1e-30)).item() for k, r in ref_grads.items())
        out[precision] = row
    return out


# ------------------------------------------------------------------ 2. segment
def write_queries(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        w, h = (500, 375) if i % 2 == 0 else (375, 500)
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"im{i:04d}.jpg", quality=90)


def segment_seconds(data: Path, queries: Path, out: Path, device, extra: list[str]) -> float:
    command = [sys.executable, "-m", "imrseg", "segment", "-l", LABEL, "-s", str(data / "supports"),
               "-q", str(queries), "-o", str(out), "--weights", str(data / "best_model.pt"),
               "--clip-weights", str(data / "clip_rn50.pt"), "--device", str(device), "--quiet", "--json", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"imrseg segment {' '.join(extra)} failed: {done.stderr.strip()[-400:]}")
    return seconds


def segment_throughput(data: Path, device, short: int, long: int, batches: list[int]) -> dict:
    """Queries/s between a folder of `short` and one of `long` queries (model loading cancels out)."""
    folders = {n: data / f"queries{n}" for n in (short, long)}
    for n, folder in folders.items():
        write_queries(folder, n)

    def rate(name: str, extra: list[str]) -> float:
        seconds = {n: segment_seconds(data, folder, data / f"out_{name}_{n}", device, extra)
                   for n, folder in folders.items()}
        return (long - short) / max(seconds[long] - seconds[short], 1e-9)

    result = {"default_fp32": rate("default", []), "default_batch": default_batch_size(device)}
    best = {b: rate(f"bf16_b{b}", ["--precision", "bf16", "--batch-size", str(b)]) for b in batches}
    result["bf16_by_batch"] = best
    result["bf16_best"] = max(best.values())
    return result


# ------------------------------------------------------------------ 3. stages
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stages(data: Path, device, batch: int, precision: str) -> dict:
    """Milliseconds per query of each stage of one batch, and the GPU's busy share."""
    predictor = Predictor(recipe_network().to(device), ClipCAM(recipe_clip(), device=device), device=device, steps=2,
                          precision=precision, vocabulary=PASCAL_CLASSES)
    predictor.set_support(images(1, 2), LABEL)
    files = sorted((data / "stages").glob("*.jpg"))[:batch]
    predictor.predict_classes([load_image(f).image for f in files])  # warm-up
    times = {}

    def stage(name, fn):
        result = timed(fn, device)
        times[name] = result.wall * 1e3 / len(files)
        return result.result

    loaded = stage("decode", lambda: [load_image(f) for f in files])
    pictures = [item.image for item in loaded]
    x = stage("preprocessing", lambda: predictor.network_inputs(pictures))
    cams = stage("cam", lambda: predictor.cams(pictures, [LABEL]))

    def encode():
        with predictor.inference():
            return predictor.model.encode(x)

    query = stage("encode", encode)
    sizes = [(item.image.size[1], item.image.size[0]) for item in loaded]

    def refine():
        with predictor.inference():
            results = predictor.model.segment(query, cams[0], predictor.shots(LABEL), 2, sizes, every_step=True)
            return [r.mask.cpu() for r in results]

    stage("refine", refine)
    results = predictor.predict_classes(pictures)
    with tempfile.TemporaryDirectory() as out:
        stage("write", lambda: [write_outputs(Path(out) / f.stem, item, result, OutputOptions(), [LABEL])
                                for f, item, result in zip(files, loaded, results)])
    whole = timed(lambda: predictor.predict_classes(pictures), device).wall
    times["whole_predict"] = whole * 1e3 / len(files)
    times["gpu_busy_share"] = gpu_busy_share(lambda: predictor.predict_classes(pictures), device)
    return {k: (round(v, 3) if v is not None else None) for k, v in times.items()}


def gpu_busy_share(fn, device) -> float | None:
    """Kernel time on the GPU over wall time, for fn() (None off CUDA)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - start
    busy_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages()
                  if str(getattr(e, "device_type", "")).endswith("CUDA"))
    return busy_us / 1e6 / wall


# ------------------------------------------------------------------ 4. training
def training(device, batches: list[int], steps: int, repeats: int) -> dict:
    out = {}
    for precision in ("fp32", "bf16"):
        for size in batches:
            try:
                out[f"{precision}_b{size}"] = training_speed(device, precision, size, steps, repeats)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                out[f"{precision}_b{size}"] = {"error": "out of memory"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out


def training_speed(device, precision: str, size: int, steps: int, repeats: int) -> dict:
    """One configuration's iterations (a fresh network and Adam; freed on return)."""
    from bench_train import batch as training_batch, iteration

    net = recipe_network().to(device).train()
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=4e-4)
    inputs = training_batch(size, 0, device)

    def step():
        with float32_mode(precision), autocast(device, precision):
            return iteration(lambda n, *a: n.loss(*a), net, optimizer, inputs, steps)

    with PeakMemory(device) as memory:
        step()
    seconds = sorted(timed(step, device).wall for _ in range(repeats))[repeats // 2]
    return {"s_per_iteration": seconds, "episodes_per_s": size / seconds, "peak_mib": memory.mib}


def table(result: dict) -> str:
    lines = ["| precision | logits vs CPU fp32 | masks agree | CAM vs CPU fp32 | train loss rel | grads/norm |",
             "|---|---|---|---|---|---|"]
    for p in PRECISIONS:
        row = result["parity"].get(p)
        if row:
            cam = f"{row['cam_maxdiff']:.1e}" if "cam_maxdiff" in row else "(tf32's)"
            lines.append(f"| {p} | {row['logits_maxdiff']:.1e} | {row['mask_agreement']:.4%} | {cam} | "
                         f"{row['train_loss_rel_diff']:.1e} | {row['train_grad_maxdiff_over_norm']:.1e} |")
    seg = result["segment"]
    lines.append(f"segment: default (fp32, batch {seg['default_batch']}) {seg['default_fp32']:.1f} queries/s; "
                 f"bf16 best {seg['bf16_best']:.1f} queries/s {seg['bf16_by_batch']}")
    lines.append("stages (ms/query): " + ", ".join(f"{k} {v}" for k, v in result["stages"].items()))
    lines.append("training: " + json.dumps(result["training"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run on the CPU")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    quick = args.quick
    started = time.perf_counter()
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "parity": parity(device)}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        write_recipe_weight_files(data)
        (data / "supports").mkdir()
        images(1, 2)[0].save(data / "supports" / "s.jpg")
        write_queries(data / "stages", 2 if quick else 16)
        result["segment"] = segment_throughput(data, device, 2 if quick else 32, 4 if quick else 256,
                                               [2] if quick else [16, 32, 64])
        result["stages"] = stages(data, device, 2 if quick else 16, "bf16" if device.type == "cuda" else "fp32")
    result["training"] = training(device, [1, 2] if quick else [8, 40], 2, 1 if quick else 3)
    result["seconds"] = time.perf_counter() - started
    report(result, table(result))


if __name__ == "__main__":
    main()
