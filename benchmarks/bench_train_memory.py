"""What recomputation saves in training (`IMRHSNet.refine(recompute=...)`, `imrseg train
--recompute/--no-recompute`): the bytes autograd keeps for the backward pass per episode
and the seconds per episode of a forward and backward, with the 4D correlations and
learner kept and recomputed, in fp32 and under bf16 autocast.

The saved bytes are counted with `torch.autograd.graph.saved_tensors_hooks`, each
storage once (views of one tensor share it); what a recomputed region needs again is
held by its inputs (the pair's cosines, which exist in either mode) and is not
counted. Peak memory is what one forward and backward adds to what torch had
allocated before it: on CUDA the allocator's peak, on the CPU the peak of the
torch profiler's memory timeline (every tensor allocation and free; the process's
RSS would also count freed memory the C heap keeps). The loss and gradients of the
two modes are compared bit for bit.

The full-size ResNet-50 network with recipe weights at the real 400x400 input (no
download); smooth random episodes (benchmarks/bench_train.py's). The LAST stdout
line is one JSON object.

    python benchmarks/bench_train_memory.py --batch 2 --steps 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from bench_train import batch
from common import PeakMemory, recipe_network, report, timed
from recipe import saved_bytes_and_gradients
from imrseg.devices import autocast, float32_mode, resolve_device

MODES = {"kept": False, "recomputed": True}


def peak_mib(fn, device):
    """(MiB fn() allocates at its peak above what was allocated before, what it returned)."""
    if device.type == "cuda":
        with PeakMemory(device) as memory:
            result = fn()
        return memory.mib, result
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        result = fn()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    totals = [sum(by_category) for by_category in sizes]
    return (max(totals) - totals[0]) / 2**20, result


def measure(net, inputs, steps: int, precision: str, repeats: int, device) -> dict:
    """Both modes at one precision: saved MiB and s per episode, peak MiB, bitwise agreement."""
    size = len(inputs[0])
    out, results = {}, {}
    for name, recompute in MODES.items():
        with float32_mode(precision), autocast(device, precision):
            peak, (saved, loss, grads) = peak_mib(
                lambda: saved_bytes_and_gradients(net, inputs, steps, recompute), device)

            def iteration():
                net.zero_grad(set_to_none=True)
                net.loss(*inputs, steps, recompute=recompute).backward()

            seconds = statistics.median(timed(iteration, device).wall for _ in range(repeats))
        results[name] = loss, grads
        out[name] = {"saved_mib_per_episode": saved / size / 2**20, "peak_mib": peak,
                     "s_per_episode": seconds / size}
    (loss_kept, grads_kept), (loss_again, grads_again) = results["kept"], results["recomputed"]
    out["saved_ratio"] = out["kept"]["saved_mib_per_episode"] / out["recomputed"]["saved_mib_per_episode"]
    out["time_ratio"] = out["recomputed"]["s_per_episode"] / out["kept"]["s_per_episode"]
    out["same_loss_and_gradients"] = bool(torch.equal(loss_kept, loss_again) and grads_kept.keys() == grads_again.keys()
                                          and all(torch.equal(g, grads_again[k]) for k, g in grads_kept.items()))
    return out


def table(result: dict) -> str:
    lines = ["| precision | mode | saved MiB/episode | peak MiB | s/episode | same loss and gradients |",
             "|---|---|---|---|---|---|"]
    for precision in result["precisions"]:
        row = result[precision]
        for name in MODES:
            m = row[name]
            lines.append(f"| {precision} | {name} | {m['saved_mib_per_episode']:.0f} | {m['peak_mib']:.0f} | "
                         f"{m['s_per_episode']:.2f} | {'yes' if row['same_loss_and_gradients'] else 'NO'} |")
        lines.append(f"| {precision} | recomputed / kept | 1/{row['saved_ratio']:.1f} | | "
                     f"{row['time_ratio']:.2f}x | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50", choices=("resnet50", "vgg16"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per mode, after the measured one")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "tf32", "bf16", "fp16"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    net = recipe_network(args.backbone).to(device).train()
    inputs = batch(args.batch, 0, device)
    result = {"device": str(device), "backbone": args.backbone, "batch": args.batch, "steps": args.steps,
              "threads": torch.get_num_threads(), "precisions": args.precisions}
    for precision in args.precisions:
        result[precision] = measure(net, inputs, args.steps, precision, args.repeats, device)
    report(result, table(result))


if __name__ == "__main__":
    main()
