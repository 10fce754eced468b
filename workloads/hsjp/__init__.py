"""The HSJP pretext task (paper §3): puzzle, targets, augmentations, loss, precision P, train loop.

Entry points: `workloads.hsjp.train.run_pretrain` and `workloads.hsjp.figure.write_puzzle_figure` (also
reachable as `workloads.hsjp.run_pretrain` / `.write_puzzle_figure`, imported lazily so the pure modules
stay light).
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_puzzle_figure", "run_pretrain"]


def __getattr__(name: str) -> Any:
    if name == "run_pretrain":
        from workloads.hsjp.train import run_pretrain

        return run_pretrain
    if name == "write_puzzle_figure":
        from workloads.hsjp.figure import write_puzzle_figure

        return write_puzzle_figure
    raise AttributeError(f"module 'workloads.hsjp' has no attribute {name!r}")
