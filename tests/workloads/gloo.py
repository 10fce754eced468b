"""A real multi-process gloo group on this machine's CPU, for the tests of what the stages do across ranks
(gradient all-reduce, buffer sync, gathered evaluation, combined precision). Not collected as tests."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, fn: Callable[[int], Any], init_file: str, world_size: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        out[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[[int], Any], world_size: int = 2) -> dict[int, Any]:
    """{rank: fn(rank)}, each rank's call in its own spawned process inside one gloo process group.

    `fn` must be picklable (a module-level function) and return something picklable. The group meets
    through a file in a fresh temp dir (torch's FileStore), so no port has to be found free first."""
    with tempfile.TemporaryDirectory(prefix="gloo") as tmp, mp.Manager() as manager:
        out = manager.dict()
        init_file = str(Path(tmp) / "rendezvous")
        mp.spawn(_rank_main, args=(fn, init_file, world_size, out), nprocs=world_size, join=True)
        return dict(out)
