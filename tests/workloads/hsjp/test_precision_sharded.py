"""Pretext precision over ranks: the solved / located counts of each rank's share are summed, so P over
two ranks is P of all puzzles (through a real two-process gloo group)."""

from __future__ import annotations

import torch

from tests.workloads.gloo import run_on_ranks
from workloads.hsjp.train import combine_precision

SHARES = {0: {"precision": 2 / 3, "patch_accuracy": 10 / 12, "puzzles": 3},  # 2 of 3 solved, 10 of 12 patches
          1: {"precision": 0.0, "patch_accuracy": 1 / 4, "puzzles": 1}}  # fmt: skip


def _worker(rank: int) -> dict:
    return combine_precision(SHARES[rank], 4, 2, torch.device("cpu"))


def test_precision_of_two_shards_is_the_precision_of_all_puzzles():
    got = run_on_ranks(_worker)
    for rank in (0, 1):
        assert got[rank]["puzzles"] == 4
        assert got[rank]["precision"] == 2 / 4 and got[rank]["patch_accuracy"] == 11 / 16
    assert combine_precision(SHARES[0], 4, 1, torch.device("cpu")) == SHARES[0]  # one rank: as it is
