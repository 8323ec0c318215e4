"""Training under torchrun (2 CPU ranks, gloo): each rank takes one episode of every
batch of two, and the all-reduced gradients and the losses are those of one
process on the whole batch; the sharded validation gives the same figures.

The process alone makes its steps of 2 episodes in forward passes of 1 (gradient
accumulation, `test_training.test_micro_batches_make_the_same_step`), as each rank
does: the sums then run in the same order, so the agreement is float32's, not
an accident of how a batch of 2 is summed. Every process runs on one thread.
Run as a script under torchrun, this file is the probe both sides run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def probe(folder: Path) -> None:
    """Train one epoch (3 steps of 2 episodes) in `folder`/run<world>; rank 0 saves the
    losses, the first step's gradients and the validation figures."""
    from imrseg.distributed import current_shard, start, stop
    from imrseg.clip.cache import CamSource
    from imrseg.clip.vocabulary import folder_vocabulary
    from imrseg.data.folder import open_folder
    from imrseg.models import IMRHSNet
    from imrseg.training.checkpoints import RunFolder
    from imrseg.training.data import EpisodeLoader
    from imrseg.training.loop import Reporter, Validation, fit
    from imrseg.training.settings import TrainSettings
    from training_fixtures import mask_cam

    torch.set_num_threads(1)
    shard = current_shard()
    device = start(shard, torch.device("cpu"))
    data, split, val = open_folder(folder / "data", ["yellow_disc"])
    cams = CamSource(mask_cam(), folder_vocabulary(data.class_names), "mask-cam", folder / f"cache{shard.world}")
    torch.manual_seed(0)
    net = IMRHSNet("resnet50", "folder", None, 1, ["yellow_disc"])

    class Record(Reporter):
        losses, grads = [], None

        def step(self, loss):
            self.losses.append(loss)
            if self.grads is None:
                self.grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    record = Record()
    settings = TrainSettings.paper("folder", None, "resnet50", steps=1, epochs=1, batch_size=2, val_episodes=2,
                                   micro_batch=1)
    state = fit(settings, net, split, EpisodeLoader(data, "folder", cams, workers=1), Validation(val, data, 1),
                RunFolder(folder / f"run{shard.world}"), device, shard, record)
    if shard.is_main:
        torch.save({"losses": record.losses, "grads": record.grads, "history": state.history,
                    "weights": {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}},
                   folder / f"result{shard.world}.pt")
    stop(shard)


def test_two_ranks_at_batch_one_make_the_step_of_one_process_at_batch_two(tmp_path):
    from training_fixtures import make_shapes

    make_shapes(tmp_path / "data", per_class=3, classes=["red_disc", "green_square", "yellow_disc"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            __file__, str(tmp_path)], capture_output=True, text=True, timeout=1200, env=env)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    threads = torch.get_num_threads()
    try:
        probe(tmp_path)
    finally:
        torch.set_num_threads(threads)
    one, two = (torch.load(tmp_path / f"result{w}.pt", weights_only=True) for w in (1, 2))
    assert len(one["losses"]) == len(two["losses"]) == 3
    assert torch.allclose(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5)
    assert set(one["grads"]) == set(two["grads"]) and one["grads"]
    for name, grad in one["grads"].items():
        assert (two["grads"][name] - grad).abs().max() <= 1e-5 * grad.norm() + 1e-12, name
    for name, weight in one["weights"].items():
        assert torch.allclose(two["weights"][name], weight, rtol=1e-4, atol=1e-6), name
    keys = ("val_miou", "val_fb_iou", "episodes", "optimizer_steps")
    assert [{k: r[k] for k in keys} for r in two["history"]] == [{k: r[k] for k in keys} for r in one["history"]]


if __name__ == "__main__":
    probe(Path(sys.argv[1]))
