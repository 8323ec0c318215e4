"""Sharding work over processes and GPUs with torch.distributed.

Started by `torchrun --nproc-per-node N -m imrseg ...`: every rank takes a
disjoint slice of the work (item i goes to rank i mod N) and rank 0 merges."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: list) -> list:
        return items[self.rank::self.world]


def current_shard() -> Shard:
    """The shard torchrun's environment describes (a single one without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    return Shard(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(shard: Shard, device):
    """Join the process group; on CUDA each rank gets its own GPU. Returns the device."""
    if not shard.distributed:
        return device
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", shard.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # NCCL for the GPUs' tensors, gloo for the CPU tensors of merged counts and flags.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return device


def barrier(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_sum(shard: Shard, tensor):
    """Sum a tensor over the ranks (in place; returned for convenience)."""
    if shard.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def stop(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
