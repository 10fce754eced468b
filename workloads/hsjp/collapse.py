"""Collapse as the paper means it (Table 2, lr 2e-3: P = 0, the finetune "Not Available").

A pretrain has collapsed when its HSJP precision P stays 0 at its evaluations after a warm-up: every
evaluation at an epoch ≥ `warmup_epochs` (1-based: 0-based epoch e counts when e + 1 ≥ warm-up) gave
P = 0. It is judged at the last epoch; with `patience` set, as soon as that many post-warm-up
evaluations all gave P = 0 (the stage then ends early). Divergence (NaN / Inf / exploding loss) is
the engine's other collapse (`collapse_loss`). Pure functions, plus `PrecisionCollapse`, the check the
engine calls on every rank after each evaluation (rank 0 evaluates; its decision is broadcast).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def post_warmup(
    history: Sequence[dict], warmup_epochs: int, key: str = "precision"
) -> list[tuple[int, float]]:
    """(epoch, P) of the evaluations at or after the warm-up, in order (`history`: engine records)."""
    return [
        (int(h["epoch"]), float(h[key]))
        for h in history
        if key in h and h[key] is not None and int(h["epoch"]) + 1 >= warmup_epochs
    ]


def precision_collapsed(
    history: Sequence[dict], warmup_epochs: int, final: bool, patience: int | None
) -> str | None:
    """The reason when the run counts as collapsed by P, else None.

    `final`: this is the last evaluation of the run. Collapsed when there is at least one evaluation
    past the warm-up and all of them gave P = 0, at the end (`final`) or, with `patience`, once
    `patience` of them have."""
    evals = post_warmup(history, warmup_epochs)
    if not evals or any(p > 0.0 for _, p in evals):
        return None
    if not final and (patience is None or len(evals) < patience):
        return None
    epochs = ", ".join(str(e + 1) for e, _ in evals)
    ended = "" if final else f"; ended early after {len(evals)} such evaluations"
    return f"collapsed: HSJP precision P = 0 at every evaluation after the {warmup_epochs}-epoch warm-up (epochs {epochs}){ended}"


class PrecisionCollapse:
    """`LoopSpec.collapse_check` of the pretext stage: rank 0 decides from its history (only rank 0
    evaluates), every rank gets the same answer (a broadcast under DDP) so that all stop together."""

    def __init__(self, warmup_epochs: int, patience: int | None, rank: int, world_size: int, device):
        self.warmup_epochs, self.patience = warmup_epochs, patience
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)

    def __call__(self, history: Sequence[dict], final: bool) -> str | None:
        reason = (
            precision_collapsed(history, self.warmup_epochs, final, self.patience) if self.rank == 0 else None
        )
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([1.0 if reason else 0.0], device=self.device)
            dist.broadcast(flag, src=0)
            if flag.item() and reason is None:
                reason = "collapsed: HSJP precision P = 0 after the warm-up (decided on rank 0)"
        return reason
