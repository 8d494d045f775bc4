"""Runs under `torchrun`: torch.distributed (gloo on the CPU, nccl on CUDA), how a global batch
and the evaluation work are shared out, and what only rank 0 does.

Results must not depend on the number of processes, so every choice here is a function of
the global batch and of the data, never of the rank: each rank takes a contiguous slice of
each global batch (padded to the global batch's length, so dropout masks, numbered by global
sample index, are the same as in one process); evaluation batches are the 1-process batches,
dealt out whole; per-language results are gathered to rank 0, which alone writes files.
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

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def slice(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [start, end) of n items (sizes differ by at most 1)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def deal(self, weights: list[float]) -> list[int]:
        """Indices of the items this rank takes: items dealt whole, heaviest first, each to
        the least loaded rank (ties to the lowest rank), so every rank computes the same
        assignment."""
        load = [0.0] * self.size
        mine = []
        for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
            r = min(range(self.size), key=lambda r: (load[r], r))
            load[r] += weights[i]
            if r == self.rank:
                mine.append(i)
        return sorted(mine)


def launched_by_torchrun() -> bool:
    return (
        "WORLD_SIZE" in os.environ
        and "RANK" in os.environ
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def restarted_by_torchrun() -> bool:
    """A worker group restarted by torchrun --max-restarts: continue from the checkpoint."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def init(device: torch.device) -> World:
    """Joins the process group torchrun set up (gloo on the CPU, nccl on CUDA); one process
    without torchrun."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_initialized():
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        # The rendezvous store outlives a restart of the worker group, and gloo's keys in it
        # are not per attempt: a rank that starts early would read a dead peer's address.
        # So each attempt gets keys of its own.
        from datetime import timedelta

        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            size,
            is_master=not agent and rank == 0,
            timeout=timedelta(minutes=10),
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=dist.PrefixStore(f"xpe_fast/attempt_{attempt}", store),
            rank=rank,
            world_size=size,
        )
    return World(dist.get_rank(), dist.get_world_size())


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA, this rank's GPU (torchrun's LOCAL_RANK); else `device`."""
    if launched_by_torchrun() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
