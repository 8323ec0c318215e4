"""The one GPU check: parity of every precision against CPU fp32, end-to-end
`imrseg segment` throughput, where a batch's time goes, and training speed and
memory, and the server under concurrent clients, in one command (about 6 minutes on an
H100/H200).

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
   episodes/s and peak memory, with recomputation (the default) and without;
5. speed modes: the network's GPU stages (encode, refine-and-vote) at batch 16 in
   fp32 and bf16, plain and with channels-last, cudnn.benchmark, torch.compile and
   CUDA graphs (these two for one stage at a time): ms/query, the speed-up over
   plain and the share of mask pixels equal to plain's (every flag and the memory
   format are restored after each mode);
6. serve: `imrseg serve` under 1, 4 and 16 concurrent clients (one query each, one
   support set) against `run_folder` on the same queries (benchmarks/bench_serve.py):
   requests/s, its ratio to run_folder's queries/s, p50 and p99 latency.

Recipe weights (tests/recipe.py), nothing downloaded. Summary table on stderr, the
LAST stdout line is one JSON object. `--quick` shrinks every size for a CPU dry run;
`--only SECTION` (repeatable) runs only those sections.

    python benchmarks/bench_gpu.py                  # on the GPU
    python benchmarks/bench_gpu.py --device cpu --quick
    python benchmarks/bench_gpu.py --only speed_modes
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import bench_serve
from common import LABEL, PeakMemory, images, recipe_clip, recipe_network, report, timed, write_recipe_weight_files
from imrseg.clip.cam import ClipCAM
from imrseg.data.classes import PASCAL_CLASSES
from imrseg.devices import PRECISIONS, autocast, default_batch_size, float32_mode, is_out_of_memory, resolve_device
from imrseg.images import load_image
from imrseg.models.voting import refine_and_vote
from imrseg.predictor import Predictor
from imrseg.runner.writing import OutputOptions, write_outputs

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden"
SECTIONS = ("parity", "segment", "stages", "training", "speed_modes", "serve")
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
    """Each configuration with recomputation (`imrseg train`'s default), then without
    it (keys ending `_no_recompute`: the memory it saves, one timed iteration)."""
    out = {}
    for precision in ("fp32", "bf16"):
        for size in batches:
            row = out[f"{precision}_b{size}"] = {}
            for recompute, suffix in ((True, ""), (False, "_no_recompute")):
                try:
                    got = training_speed(device, precision, size, steps, repeats if recompute else 1, recompute)
                except RuntimeError as exc:
                    if not is_out_of_memory(exc):
                        raise
                    got = {"error": "out of memory"}
                row.update({k + suffix: v for k, v in got.items()})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return out


def training_speed(device, precision: str, size: int, steps: int, repeats: int, recompute: bool = True) -> dict:
    """One configuration's iterations (a fresh network and Adam; freed on return)."""
    from bench_train import batch as training_batch, iteration

    net = recipe_network().to(device).train()
    optimizer = torch.optim.Adam(net.trainable_parameters(), lr=4e-4)
    inputs = training_batch(size, 0, device)

    def step():
        with float32_mode(precision), autocast(device, precision):
            return iteration(lambda n, *a: n.loss(*a, recompute=recompute), net, optimizer, inputs, steps)

    with PeakMemory(device) as memory:
        step()
    seconds = sorted(timed(step, device).wall for _ in range(repeats))[repeats // 2]
    return {"s_per_iteration": seconds, "episodes_per_s": size / seconds, "peak_mib": memory.mib}


# ------------------------------------------------------------------ 5. speed modes
SPEED_MODES = ("plain", "channels_last", "cudnn_benchmark", "compile_encode", "compile_refine",
               "graphs_encode", "graphs_refine")
# max-autotune's kernel search would spend minutes of the script's 5-minute budget; so
# would compiling refine twice (over a minute and a half each on a CPU): torch.compile is
# timed at bf16, the precision a speed-up is wanted at.
COMPILE_MODE = "default"
COMPILE_PRECISIONS = ("bf16",)
SPEED_STEPS = 2


class ModeSkipped(Exception):
    """A speed mode that cannot run on this device; the message says why."""


def vote_masks(network, query, cams: torch.Tensor, shots, sizes) -> list[torch.Tensor]:
    """Refine-and-vote as `model.segment` runs it, with `network.refine` (the model's own
    or a mode's stand-in), the masks brought to the host."""
    return [r.mask.cpu() for r in refine_and_vote(network, query, cams, shots, SPEED_STEPS, sizes)]


@contextlib.contextmanager
def speed_mode(name: str, model, device, precision: str, x: torch.Tensor, cams: torch.Tensor, shots, sizes):
    """(input, encode, refine) of one mode: `encode(input)` gives the query features,
    `refine(features, cams)` the host masks. torch.compile and CUDA graphs apply to one
    stage per mode (the other runs as plain), so a stage that cannot be compiled or
    captured leaves the other's figure standing. The mode's flags and the model's
    memory format are restored when the block ends, whatever happened in it."""
    def eager(network):
        return lambda query, query_cams: vote_masks(network, query, query_cams, shots, sizes)

    if name == "plain":
        yield x, model.encode, eager(model)
    elif name == "channels_last":
        model.to(memory_format=torch.channels_last)
        try:
            yield x.contiguous(memory_format=torch.channels_last), model.encode, eager(model)
        finally:
            model.to(memory_format=torch.contiguous_format)
    elif name == "cudnn_benchmark":
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield x, model.encode, eager(model)
        finally:
            torch.backends.cudnn.benchmark = before
    elif name in ("compile_encode", "compile_refine"):
        try:
            if name == "compile_encode":
                yield x, torch.compile(model.encode, mode=COMPILE_MODE), eager(model)
            else:
                yield x, model.encode, eager(SimpleNamespace(refine=torch.compile(model.refine, mode=COMPILE_MODE)))
        finally:
            torch.compiler.reset()
    elif name == "graphs_encode":
        static_x = x.clone()
        graph, features = capture(device, precision, lambda: model.encode(static_x))

        def encode(batch):
            static_x.copy_(batch)
            graph.replay()
            return features

        yield x, encode, eager(model)
    elif name == "graphs_refine":
        static_query, static_cams = model.encode(x), cams.clone()
        graph, logits = capture(device, precision, lambda: {
            id(f): model.refine(static_query, f, static_cams, c, SPEED_STEPS, with_support=False) for f, c in shots})
        replayed = SimpleNamespace(refine=lambda query, support, *args, **kwargs: logits[id(support)])

        def refine(query, query_cams):
            for buffer, value in zip(feature_tensors(static_query), feature_tensors(query)):
                buffer.copy_(value)
            static_cams.copy_(query_cams)
            graph.replay()
            return vote_masks(replayed, static_query, static_cams, shots, sizes)

        yield x, model.encode, refine
    else:
        raise ValueError(f"unknown speed mode {name!r}")


def feature_tensors(features) -> list[torch.Tensor]:
    """Every tensor of a batch's ImageFeatures, in a fixed order."""
    return [t for stage in features.stages for t in (stage.unit, stage.norm)] + [features.mid_gates]


def capture(device, precision: str, fn):
    """fn() captured as a CUDA graph over the static buffers it reads, after a warm-up
    on a side stream: (graph, what fn returned, overwritten by each replay)."""
    if device.type != "cuda":
        raise ModeSkipped(f"CUDA graphs need a CUDA device; this run is on {device.type}")
    amp = autocast(device, precision)
    if isinstance(amp, torch.autocast):  # a replay repeats the captured casts: no cached casts while capturing
        amp = torch.autocast(device.type, dtype=amp.fast_dtype, cache_enabled=False)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with amp, torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with amp, torch.cuda.graph(graph):
        out = fn()
    return graph, out


def backend_flags() -> tuple:
    """The torch flags the speed modes and precisions change, to check they were restored."""
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def one_line(exc: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:400]}"


def speed_modes(device, batch: int, repeats: int) -> dict:
    """The network's GPU stages, encode and refine-and-vote (the Predictor's model,
    its support and CAMs), at `batch` queries in fp32 and bf16, for each of
    SPEED_MODES: ms/query (median of `repeats` after one warm-up, whose time, with the
    mode's compile, capture or autotuning, is `setup_s`), the speed-up over plain and
    the share of mask pixels equal to plain's. The supports are encoded once (fp32,
    plain), so the modes differ in the query's stages only."""
    before = backend_flags()
    predictor = Predictor(recipe_network().to(device), ClipCAM(recipe_clip(), device=device), device=device,
                          steps=SPEED_STEPS, vocabulary=PASCAL_CLASSES)
    predictor.set_support(images(1, 2), LABEL)
    pictures = images(batch, 3)
    x = predictor.network_inputs(pictures)
    cams = predictor.cams(pictures, [LABEL])[0]
    shots, sizes = predictor.shots(LABEL), [(p.size[1], p.size[0]) for p in pictures]
    model = predictor.model
    out = {"batch": batch, "compile_mode": COMPILE_MODE}
    for precision in ("fp32", "bf16"):
        rows, plain = {}, None
        for name in SPEED_MODES:
            try:
                if name.startswith("compile_") and precision not in COMPILE_PRECISIONS:
                    raise ModeSkipped(f"torch.compile is timed at {', '.join(COMPILE_PRECISIONS)} only")
                rows[name], masks = speed_row(name, model, device, precision, x, cams, shots, sizes, repeats)
            except ModeSkipped as exc:
                rows[name] = {"skipped": str(exc)}
                continue
            except Exception as exc:
                if name == "plain":
                    raise
                rows[name] = {"error": one_line(exc)}
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if plain is None:
                plain, plain_masks = rows[name], masks
            row = rows[name]
            for stage in ("encode", "refine", "total"):
                row[f"speedup_{stage}"] = plain[f"{stage}_ms"] / row[f"{stage}_ms"]
            row["mask_equal"] = (sum((a == b).sum().item() for a, b in zip(masks, plain_masks))
                                 / sum(a.numel() for a in plain_masks))
        out[precision] = rows
    out["flags_restored"] = backend_flags() == before and all(p.is_contiguous() for p in model.parameters())
    return out


def speed_row(name: str, model, device, precision: str, x, cams, shots, sizes, repeats: int):
    """One mode at one precision: its timings and its last masks."""
    started = time.perf_counter()
    with torch.inference_mode(), float32_mode(precision), autocast(device, precision), \
            speed_mode(name, model, device, precision, x, cams, shots, sizes) as (batch, encode, refine):
        refine(encode(batch), cams)
        sync(device)
        setup = time.perf_counter() - started
        encodes, refines = [], []
        for _ in range(repeats):
            encoded = timed(lambda: encode(batch), device)
            refined = timed(lambda: refine(encoded.result, cams), device)
            encodes.append(encoded.wall)
            refines.append(refined.wall)
    row = {"encode_ms": median(encodes) * 1e3 / len(sizes), "refine_ms": median(refines) * 1e3 / len(sizes)}
    row["total_ms"] = row["encode_ms"] + row["refine_ms"]
    row["setup_s"] = setup
    return row, refined.result


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def speed_table(result: dict) -> list[str]:
    lines = [f"speed modes (batch {result['batch']}, ms/query, x = speed-up over plain, torch.compile "
             f"mode {result['compile_mode']}, flags restored: {result['flags_restored']}):",
             "| precision | mode | encode | refine | x encode | x refine | x both | masks = plain | setup s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for precision in ("fp32", "bf16"):
        for name, row in result[precision].items():
            if "encode_ms" not in row:
                lines.append(f"| {precision} | {name} | {row.get('error') or row.get('skipped')} |")
                continue
            lines.append(f"| {precision} | {name} | {row['encode_ms']:.2f} | {row['refine_ms']:.2f} | "
                         f"{row['speedup_encode']:.2f} | {row['speedup_refine']:.2f} | {row['speedup_total']:.2f} | "
                         f"{row['mask_equal']:.4%} | {row['setup_s']:.1f} |")
    return lines


def table(result: dict) -> str:
    lines = []
    if "parity" in result:
        lines += ["| precision | logits vs CPU fp32 | masks agree | CAM vs CPU fp32 | train loss rel | grads/norm |",
                  "|---|---|---|---|---|---|"]
    for p in PRECISIONS:
        row = result.get("parity", {}).get(p)
        if row:
            cam = f"{row['cam_maxdiff']:.1e}" if "cam_maxdiff" in row else "(tf32's)"
            lines.append(f"| {p} | {row['logits_maxdiff']:.1e} | {row['mask_agreement']:.4%} | {cam} | "
                         f"{row['train_loss_rel_diff']:.1e} | {row['train_grad_maxdiff_over_norm']:.1e} |")
    seg = result.get("segment")
    if seg:
        lines.append(f"segment: default (fp32, batch {seg['default_batch']}) {seg['default_fp32']:.1f} queries/s; "
                     f"bf16 best {seg['bf16_best']:.1f} queries/s {seg['bf16_by_batch']}")
    if "stages" in result:
        lines.append("stages (ms/query): " + ", ".join(f"{k} {v}" for k, v in result["stages"].items()))
    if "training" in result:
        # One line per configuration: with recomputation, then `_no_recompute`.
        lines += [f"training {key}: " + json.dumps(row) for key, row in result["training"].items()]
    if "speed_modes" in result:
        lines += speed_table(result["speed_modes"])
    if "serve" in result:
        lines += bench_serve.table(result["serve"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run on the CPU")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    quick = args.quick
    run = set(args.only or SECTIONS)
    started = time.perf_counter()
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__}
    if "parity" in run:
        result["parity"] = parity(device)
    if run & {"segment", "stages"}:
        with tempfile.TemporaryDirectory() as folder:
            data = Path(folder)
            write_recipe_weight_files(data)
            (data / "supports").mkdir()
            images(1, 2)[0].save(data / "supports" / "s.jpg")
            write_queries(data / "stages", 2 if quick else 16)
            if "segment" in run:
                result["segment"] = segment_throughput(data, device, 2 if quick else 32, 4 if quick else 256,
                                                       [2] if quick else [16, 32, 64])
            if "stages" in run:
                result["stages"] = stages(data, device, 2 if quick else 16,
                                          "bf16" if device.type == "cuda" else "fp32")
    if "training" in run:
        result["training"] = training(device, [1, 2] if quick else [8, 40], 2, 1 if quick else 3)
    if "speed_modes" in run:
        result["speed_modes"] = speed_modes(device, 2 if quick else 16, 1 if quick else 3)
    if "serve" in run:
        result["serve"] = bench_serve.measure(str(device), 3 if quick else 64, 1 if quick else 5, 1 if quick else 2,
                                              2 if quick else 16, 20.0, [1, 2] if quick else [1, 4, 16])
    result["seconds"] = time.perf_counter() - started
    report(result, table(result))


if __name__ == "__main__":
    main()
