"""The HSJP pretext task (paper §3): puzzle, targets, augmentations, loss, precision P, train loop.

Entry points: `workloads.hsjp.train.run_pretrain` and `workloads.hsjp.figure.draw_puzzle` (also reachable
as `workloads.hsjp.run_pretrain` / `.draw_puzzle`, imported lazily so the pure modules stay light).
"""

from __future__ import annotations

from typing import Any

__all__ = ["draw_puzzle", "run_pretrain"]


def __getattr__(name: str) -> Any:
    if name == "run_pretrain":
        from workloads.hsjp.train import run_pretrain

        return run_pretrain
    if name == "draw_puzzle":
        from workloads.hsjp.figure import draw_puzzle

        return draw_puzzle
    raise AttributeError(f"module 'workloads.hsjp' has no attribute {name!r}")
