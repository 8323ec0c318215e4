"""A training iteration (forward, backward, Adam step) of imrseg against the authors'
training computation, on the same weights and batch, in one process.

(a) the authors' train.py step, emulated on imrseg's modules with the pieces of
    benchmarks/authors_pipeline.py: both backbones (as their feature extraction,
    each tap copied), then at every refinement step both branches, with both
    branches' correlation pyramids built before the step, the features masked, the
    full cosine correlation recomputed, HSNet's channel-major 4D convolutions and
    the IMR gates over the whole concatenation; the loss of Eq. 7 as their compute_objective sums it;
(b) imrseg: `IMRHSNet.loss` (each pair's cosine once, the steps' masks as
    per-position factors, channels-last 4D convolutions, the gates' mid-feature
    share once per image).

Both use the full-size network with recipe weights (no download), each with its
own Adam; the two are timed in alternation, `--repeats` times, after one warm-up
iteration; figures are medians. Printed too: the losses and the gradients of the
first iteration against each other, peak memory, and the backbone's share of an
iteration with the size of its features per image (what caching them across
epochs would save and cost). The LAST stdout line is one JSON object.

    python benchmarks/bench_train.py --batch 2 --steps 2
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
import torch.nn.functional as F

import authors_pipeline
from common import PeakMemory, recipe_network, report, timed
from imrseg.devices import resolve_device
from imrseg.models.backbone import extract_taps, stage_slices
from imrseg.models.imr import STATE_SIZE


def authors_loss(net, query_img, support_img, query_cam, support_cam, query_mask, support_mask, steps):
    """Their forward with query_mask given (hsnet_imr.py): the first correlation under
    no-grad, every step's logits upsampled to the image size and scored, summed."""
    with torch.no_grad():
        taps, slices, mids, pyramids = authors_pipeline.encode_episode(net, query_img, support_img, query_cam,
                                                                       support_cam)
    priors = query_cam.unsqueeze(1), support_cam.unsqueeze(1)
    loss = 0
    for logits in authors_pipeline.refine_episode(net, taps, slices, mids, pyramids, priors, steps):
        for logit, mask in zip(logits, (query_mask, support_mask)):
            full = F.interpolate(logit, mask.shape[-2:], mode="bilinear", align_corners=True)
            loss = loss + F.cross_entropy(full.flatten(2), mask.flatten(1))
    return loss


def batch(size: int, seed: int, device) -> tuple:
    """Smooth random images, CAMs and blob masks (photo-like, not white noise)."""
    g = torch.Generator().manual_seed(seed)

    def smooth(shape, cells):
        return F.interpolate(torch.rand(shape[0], shape[1], cells, cells, generator=g), shape[2:], mode="bilinear",
                             align_corners=True)

    images = [(smooth((size, 3, 400, 400), 24) - 0.45) / 0.25 for _ in range(2)]
    cams = [smooth((size, 1, 50, 50), 5)[:, 0] for _ in range(2)]
    masks = [(smooth((size, 1, 400, 400), 6)[:, 0] > 0.6).long() for _ in range(2)]
    return tuple(t.to(device) for t in (images[0], images[1], cams[0], cams[1], masks[0], masks[1]))


def iteration(loss_fn, net, optimizer, inputs, steps):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(net, *inputs, steps)
    loss.backward()
    optimizer.step()
    return loss.detach()


def gradients(loss_fn, net, inputs, steps):
    net.zero_grad(set_to_none=True)
    loss = loss_fn(net, *inputs, steps)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def backbone_share(net, inputs, device) -> dict:
    """Seconds the frozen backbone takes for one iteration's images (query and
    support), and what its features for the correlation and the mid feature weigh
    per image: the cost and the saving of caching them across epochs."""
    images = torch.cat(inputs[:2])
    with torch.no_grad():
        seconds, _, taps = timed(lambda: extract_taps(net.backbone_name, net.backbone, images), device)
        slices = stage_slices(net.spec, len(taps))
        stage_values = sum(t[0].numel() for sl in slices for t in taps[sl])
        positions = sum(len(taps[sl]) * taps[sl][0][0, 0].numel() for sl in slices)  # the norms
        mid_values = taps[slices[1]][0].shape[1] * STATE_SIZE[0] * STATE_SIZE[1]
    per_image = stage_values + positions + mid_values
    return {"backbone_s_per_iteration": seconds, "feature_mib_per_image_fp32": per_image * 4 / 2**20,
            "feature_mib_per_image_fp16": per_image * 2 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50", choices=("resnet50", "vgg16"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    ours = recipe_network(args.backbone).to(device).train()
    theirs = copy.deepcopy(ours)
    inputs = batch(args.batch, 0, device)

    our_loss, our_grads = gradients(lambda n, *a: n.loss(*a), ours, inputs, args.steps)
    their_loss, their_grads = gradients(authors_loss, theirs, inputs, args.steps)
    worst = max(((our_grads[k] - g).abs().max() / g.norm().clamp_min(1e-30)).item() for k, g in their_grads.items())
    agreement = {"loss_ours": our_loss, "loss_authors": their_loss, "loss_rel_diff": abs(our_loss - their_loss) /
                 abs(their_loss), "same_parameters": set(our_grads) == set(their_grads),
                 "max_grad_diff_over_norm": worst}
    print(json.dumps(agreement))

    paths = {"ours": (lambda n, *a: n.loss(*a), ours), "authors": (authors_loss, theirs)}
    optimizers = {k: torch.optim.Adam(net.trainable_parameters(), lr=4e-4) for k, (_, net) in paths.items()}
    seconds = {k: [] for k in paths}
    peak = {}
    for k, (fn, net) in paths.items():  # warm-up, and peak memory of one iteration
        with PeakMemory(device) as memory:
            iteration(fn, net, optimizers[k], inputs, args.steps)
        peak[k] = memory.mib
    for _ in range(args.repeats):
        for k, (fn, net) in paths.items():
            seconds[k].append(timed(lambda: iteration(fn, net, optimizers[k], inputs, args.steps), device).wall)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    result = {"device": str(device), "backbone": args.backbone, "batch": args.batch, "steps": args.steps,
              "threads": torch.get_num_threads(), "s_per_iteration": median,
              "speedup": median["authors"] / median["ours"], "peak_mib": peak, **agreement,
              **backbone_share(ours, inputs, device)}
    result["backbone_share_of_ours"] = result["backbone_s_per_iteration"] / median["ours"]
    print(f"s/iteration: authors {median['authors']:.2f}, imrseg {median['ours']:.2f} "
          f"({result['speedup']:.2f}x); peak MiB authors {peak['authors']:.0f}, imrseg {peak['ours']:.0f}")
    report(result)


if __name__ == "__main__":
    main()
