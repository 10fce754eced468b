"""Pretext precision over ranks: the solved / located counts of each rank's share are summed, so P over
two ranks is P of all puzzles (through a real two-process gloo group)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workloads.hsjp.train import combine_precision

SHARES = {0: {"precision": 2 / 3, "patch_accuracy": 10 / 12, "puzzles": 3},  # 2 of 3 solved, 10 of 12 patches
          1: {"precision": 0.0, "patch_accuracy": 1 / 4, "puzzles": 1}}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = combine_precision(SHARES[rank], 4, 2, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_precision_of_two_shards_is_the_precision_of_all_puzzles():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        got = dict(out)
    for rank in (0, 1):
        assert got[rank]["puzzles"] == 4
        assert got[rank]["precision"] == 2 / 4 and got[rank]["patch_accuracy"] == 11 / 16
    assert combine_precision(SHARES[0], 4, 1, torch.device("cpu")) == SHARES[0]  # one rank: as it is
