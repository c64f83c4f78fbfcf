"""torch.distributed helpers of the pipeline stages (``torchrun`` sets RANK / WORLD_SIZE).

Slides are sharded deterministically with greedy longest-processing-time
scheduling on their tile counts, so every rank gets about the same work and the
assignment only depends on the slide list. Per-rank ledgers are merged by
rank 0 after a barrier.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from loguru import logger

from wsi_mil.io.ledger import StatusLedger

T = TypeVar("T")


def init_from_env(device: str = "auto") -> tuple[int, int]:
    """(rank, world_size); initialises the process group under torchrun.

    Backend: nccl when the stage runs on CUDA, gloo otherwise. Outside torchrun
    (no WORLD_SIZE, or 1) nothing is initialised and (0, 1) is returned.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        on_gpu = device != "cpu" and torch.cuda.is_available()
        backend = "nccl" if on_gpu else "gloo"
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(hours=6))
        logger.info("torch.distributed: rank {} / {} ({})", dist.get_rank(),
                    dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size()


def rank_device(device: str, rank: int) -> str:
    """``cuda`` / ``auto`` -> this rank's GPU (``cuda:<LOCAL_RANK>``) under torchrun."""
    if device in ("cuda", "auto") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def shard_by_cost(items: Sequence[T], costs: Sequence[int], rank: int, world: int) -> list[T]:
    """The items of ``rank``: greedy LPT (largest first, to the least loaded rank).

    Ties are broken by position, so every rank computes the same assignment.
    Returned in their original order.
    """
    if world <= 1:
        return list(items)
    load = [0] * world
    owner = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-int(costs[i]), i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += int(costs[i])
    return [item for item, r in zip(items, owner, strict=True) if r == rank]


def barrier(world: int) -> None:
    """Wait for every rank (no-op outside torch.distributed)."""
    if world > 1 and dist.is_initialized():
        dist.barrier()


def merge_rank_ledgers(folder: str | Path, rank: int, world: int) -> StatusLedger:
    """Barrier, then rank 0 merges ``status.rank*.csv`` into ``status.csv``; returns it."""
    dist.barrier()
    ledger = StatusLedger(folder)
    if rank == 0:
        for r in range(world):
            part = StatusLedger(folder, name=f"status.rank{r}.csv")
            ledger.merge(part)
        ledger.flush()
        for r in range(world):
            (Path(folder) / f"status.rank{r}.csv").unlink(missing_ok=True)
    dist.barrier()
    return StatusLedger(folder)
