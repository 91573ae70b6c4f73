"""torch.distributed glue for ``torchrun --nproc_per_node=K -m bvit_edge train ...``.

The world is read from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK). Backend: NCCL on CUDA, gloo on
CPU (what the tests use). Each rank sees a disjoint, equally long slice of the epoch's permutation
(a distributed sampler), so every rank takes the same number of steps and DDP stays in lock-step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shard_indices(perm: torch.Tensor, world: World) -> torch.Tensor:
    """Pad the permutation to a multiple of the world size (wrapping around), then take every size-th item."""
    n = perm.numel()
    if world.size == 1:
        return perm
    total = -(-n // world.size) * world.size
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[world.rank : total : world.size]


def all_reduce_mean(value: float, world: World) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
