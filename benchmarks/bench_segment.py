"""Folder segmentation against the per-episode baseline, side by side in one process.

(a) the baseline, an emulation of the authors' per-episode computation
    (benchmarks/authors_pipeline.py), in fp32: their CAM pass first, one CLIP
    Grad-CAM per image, then for every (query, support) episode their whole test
    forward at batch 1 (both backbones, every step of both branches) and, per query,
    their K-shot vote;
(b) imrseg's folder path: `Predictor.set_support` once, then `predict_batch` over
    the queries (CAMs batched, query features reused across supports and steps,
    the last step's support branch skipped), at --precision.

Both use the full-size network and CLIP with recipe weights (no download). The
two paths are timed in alternation, `--repeats` times; the figures are medians,
and (a)'s pieces (one CAM, one episode's network) are timed as they run. After
the timing, (b)'s query logits are recomputed from the folder path's own pieces
(the cached supports, each query's CAM as its Prediction carries it, the model's
`encode` and `refine`) and compared with (a)'s; (b)'s masks are compared with (a)'s
votes. The LAST stdout line is one JSON object.

    python benchmarks/bench_segment.py --queries 6 --supports 1 --steps 2
"""
from __future__ import annotations

import argparse
import copy
import statistics

import numpy as np
import torch

import authors_pipeline
from common import LABEL, PeakMemory, gflop, images, recipe_clip, recipe_network, report, timed
from imrseg.clip.cam import ClipCAM
from imrseg.clip.vocabulary import background_vocabulary
from imrseg.data.classes import PASCAL_CLASSES
from imrseg.devices import check_precision, resolve_device
from imrseg.predictor import Predictor
from imrseg.transforms import network_input


def per_episode(net, clip, cam, vocabulary, queries, supports, steps, device):
    """The baseline: per query, the (K, 2, 100, 100) logits against the K supports and
    the voted (H, W) mask; and the seconds each CAM and each episode's network took."""
    tokens = cam.tokenizer([cam.template.format(c=c) for c in vocabulary]).to(device)
    seconds = {"cam": [], "network": []}

    def coarse_mask(image):
        run = timed(lambda: authors_pipeline.cam(clip, tokens, cam.preprocess(image)[None].to(device), 0), device)
        seconds["cam"].append(run.wall)
        return run.result.to(device)

    # Their CAM pass: every image once, whatever number of episodes it appears in.
    query_cams = [coarse_mask(query) for query in queries]
    support_cams = [coarse_mask(support) for support in supports]
    support_imgs = [network_input(support)[None].to(device) for support in supports]
    logits, masks = [], []
    for query, q_cam in zip(queries, query_cams):
        query_img = network_input(query)[None].to(device)
        shots = []
        for support_img, s_cam in zip(support_imgs, support_cams):
            with torch.no_grad():  # as their test script
                run = timed(lambda: authors_pipeline.forward(net, query_img, support_img, q_cam, s_cam, steps), device)
            seconds["network"].append(run.wall)
            shots.append(run.result[0])
        logits.append(torch.stack(shots).float().cpu())
        masks.append(authors_pipeline.predict_mask_nshot(logits[-1], query.size[::-1]).numpy())
    return logits, masks, seconds


def folder(predictor, queries, supports, steps, batch_size):
    predictor.set_support(supports, LABEL)
    out = []
    for i in range(0, len(queries), batch_size):
        out += predictor.predict_batch(queries[i:i + batch_size], steps)
    return out


def folder_logits(predictor, queries, predictions, steps, batch_size):
    """(b)'s query logits (K, 2, 100, 100) per query, recomputed from the folder path's
    own pieces: the cached supports, each query's CAM as its Prediction carries it,
    and the model's `encode` and `refine`, at (b)'s batch size and precision."""
    device = predictor.device
    out = []
    for i in range(0, len(queries), batch_size):
        images = queries[i:i + batch_size]
        cams = torch.from_numpy(np.stack([p.cam for p in predictions[i:i + batch_size]])).to(device)
        with predictor.inference():
            feats = predictor.model.encode(predictor.network_inputs(images))
            per_shot = [predictor.model.refine(feats, support, cams, support_cam, steps, with_support=False)[0][-1]
                        for support, support_cam in predictor.shots(LABEL)]
        out += [torch.stack([shot[b] for shot in per_shot]).float().cpu() for b in range(len(images))]
    return out


def gflop_per_query(predictor, query, steps) -> tuple[float, float]:
    """(network, CLIP forward) GFLOP for one query against the cached supports. The
    Grad-CAM backward pass (from the last block on) is not counted: the counter
    cannot follow autograd.grad."""

    def network():
        feats = predictor.model.encode(predictor.network_inputs([query]))
        cams = torch.zeros(1, 50, 50, device=predictor.device)
        for support, support_cam in predictor.shots(LABEL):
            predictor.model.refine(feats, support, cams, support_cam, steps, with_support=False)

    with predictor.inference():
        network_gflop = gflop(network)
    text = predictor.cam.text_features(predictor.vocabulary(LABEL))  # once per vocabulary, not per query
    return network_gflop, gflop(lambda: predictor.cam.probabilities(predictor.cam.batch([query]), text))


def throughput(net, cam, device, steps, supports, queries) -> dict:
    """GPU images/s of the folder path at batch 1 and at the best batch, fp32 and bf16."""
    result = {}
    for precision in ("fp32", "bf16"):
        predictor = Predictor(net, cam, device=device, precision=precision, vocabulary=PASCAL_CLASSES)
        predictor.set_support(supports[:1], LABEL)
        rates = {}
        for batch in (1, 2, 4, 8, 16):
            pool = (queries * (2 * batch // len(queries) + 2))[: 2 * batch]
            try:
                predictor.predict_batch(pool[:batch], steps)  # warm-up
                seconds = timed(lambda: [predictor.predict_batch(pool[i:i + batch], steps)
                                         for i in range(0, len(pool), batch)], device).wall
            except torch.cuda.OutOfMemoryError:
                break
            rates[batch] = len(pool) / seconds
        best = max(rates, key=rates.get)
        result[precision] = {"batch1_images_per_s": rates[1], "best_batch": best,
                             "best_images_per_s": rates[best]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=6)
    parser.add_argument("--supports", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = check_precision(args.precision, device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 2)

    net = recipe_network().to(device).eval()
    clip = recipe_clip()
    authors_clip = copy.deepcopy(clip).to(device).eval()  # with gradients on, as the authors'
    cam = ClipCAM(clip, device=device)
    # The authors' CAM vocabulary: the 20 PASCAL classes (the label is one of them).
    predictor = Predictor(net, cam, device=device, steps=args.steps, precision=precision,
                          vocabulary=PASCAL_CLASSES)
    queries, supports = images(args.queries, 1), images(args.supports, 2)
    vocabulary = background_vocabulary(LABEL, PASCAL_CLASSES)

    # Warm-up: first calls allocate and pick kernels.
    per_episode(net, authors_clip, cam, vocabulary, queries[:1], supports[:1], 1, device)
    folder(predictor, queries[:1], supports[:1], 1, 1)

    times = {"a": [], "b": []}
    memory = {"a": 0.0, "b": 0.0}
    pieces = {"cam": [], "network": []}
    for _ in range(args.repeats):
        with PeakMemory(device) as mem:
            run = timed(lambda: per_episode(net, authors_clip, cam, vocabulary, queries, supports, args.steps, device),
                        device)
        times["a"].append(run.wall)
        logits_a, masks_a, took = run.result
        memory["a"] = max(memory["a"], mem.mib)
        for piece in pieces:
            pieces[piece] += took[piece]
        with PeakMemory(device) as mem:
            run = timed(lambda: folder(predictor, queries, supports, args.steps, batch_size), device)
        times["b"].append(run.wall)
        preds = run.result
        memory["b"] = max(memory["b"], mem.mib)

    logits_b = folder_logits(predictor, queries, preds, args.steps, batch_size)
    diff = max(float((a - b).abs().max()) for a, b in zip(logits_a, logits_b))
    agree = float(np.mean([np.mean(a == p.mask) for a, p in zip(masks_a, preds)]))
    per_episode_s = statistics.median(times["a"]) / args.queries
    per_query_s = statistics.median(times["b"]) / args.queries
    cam_s, network_s = statistics.median(pieces["cam"]), statistics.median(pieces["network"])
    network_gflop, clip_gflop = gflop_per_query(predictor, queries[0], args.steps)
    result = {
        "device": str(device), "torch_threads": torch.get_num_threads(), "precision": precision,
        "queries": args.queries, "supports": args.supports, "steps": args.steps, "batch_size": batch_size,
        "per_episode_s": round(per_episode_s, 4), "per_query_s": round(per_query_s, 4),
        "speedup_vs_per_episode": round(per_episode_s / per_query_s, 3),
        # (a)'s pieces, and what one episode from scratch (two CAMs and the network) costs with them.
        "per_episode_cam_s": round(cam_s, 4), "per_episode_network_s": round(network_s, 4),
        "one_episode_s": round(2 * cam_s + network_s, 4),
        "max_abs_diff": diff, "mask_agreement": agree,
        "peak_mem_mib_per_episode": round(memory["a"], 1), "peak_mem_mib_folder": round(memory["b"], 1),
        "gflop_per_query_network": round(network_gflop, 2), "gflop_per_query_clip": round(clip_gflop, 2),
        "achieved_gflops": round((network_gflop + clip_gflop) / per_query_s, 2),
    }
    if device.type == "cuda":
        result["throughput"] = throughput(net, cam, device, args.steps, supports, queries)
    report(result, f"(a) per episode: {per_episode_s:.3f} s/query (CAM {cam_s:.3f} s, network {network_s:.3f} s)   "
                   f"(b) folder: {per_query_s:.3f} s/query   speedup {per_episode_s / per_query_s:.2f}x   "
                   f"max |diff| {diff:.2e}   masks agree {agree:.4%}")


if __name__ == "__main__":
    main()
