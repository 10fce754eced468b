"""Collapse as the paper means it (Table 2, lr 2e-3: "0.0 (Collapse)", the finetune "Not Available"):
a pretext that failed to learn the puzzle at all.

P = 0 alone is not that: P counts a puzzle only when all N² patches are located, and a healthy hard
puzzle sits at P = 0 for long (the paper's N = 8 ends at P = 0.019, N = 7 at 0.243). The rule reads
signals that are not near zero for a healthy run, from each evaluation's record (`engine` history):

- `patch_accuracy`, the share of located patches. Chance is 1/N²: a network that ignores the image
  does best by naming one cell for every channel, which locates one patch of the N². An evaluation is
  *at chance* when patch accuracy ≤ `chance_factor` / N².
- `heatmap_contrast`, the mean over validation puzzles and channels of (max − mean) of the predicted
  heatmap (precision.py), in units of the target peak (1, targets.py). A network that knows nothing
  regresses the mean target map, whose bumps are 1/N² of the peak; `flat_contrast` sits above that
  for N ≥ 4 and well below a located peak.
- the training `loss` of the evaluation's epoch against the first epoch's: *not falling* when it is
  ≥ `loss_fraction` × the first-epoch loss (the mean target map lowers eq. (2) by only ~1/N²).

An evaluation **failed** when it is at chance AND (its heatmaps are flat OR its loss is not falling).
A run is collapsed when every evaluation at an epoch ≥ `warmup_epochs` (1-based: 0-based epoch e
counts when e + 1 ≥ warm-up) failed: judged at the last epoch, or, with `patience`, as soon as that
many consecutive post-warm-up evaluations have (the stage then ends early). One evaluation above
chance with rising peaks means the run learns, and it is never called collapsed afterwards (a run
that learned and then diverged is the engine's other collapse, `collapse_loss`). P stays report
wording: the reason quotes it. An evaluation record without the signals (a history written before
they were recorded) never counts as failed. Pure functions, plus `PretextCollapse`, the check the
engine calls on every rank after each evaluation (rank 0 evaluates; its decision is broadcast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

SIGNALS = ("patch_accuracy", "heatmap_contrast")
"""The evaluation metrics the rule reads, besides `loss` and `precision` (engine LoopSpec.history_keys)."""


@dataclass(frozen=True)
class CollapseRule:
    """The thresholds of the rule (PretrainConfig.collapse_*; their reasons are documented there)."""

    n: int
    warmup_epochs: int
    patience: int | None
    chance_factor: float
    flat_contrast: float
    loss_fraction: float

    @classmethod
    def of(cls, cfg) -> CollapseRule:
        """The rule of a PretrainConfig."""
        return cls(
            n=cfg.n,
            warmup_epochs=cfg.collapse_warmup_epochs,
            patience=cfg.collapse_patience,
            chance_factor=cfg.collapse_chance_factor,
            flat_contrast=cfg.collapse_flat_contrast,
            loss_fraction=cfg.collapse_loss_fraction,
        )

    @property
    def chance(self) -> float:
        """Patch accuracy of a network that ignores the image: 1/N²."""
        return 1.0 / (self.n * self.n)


def post_warmup(history: Sequence[dict], warmup_epochs: int, key: str = "precision") -> list[dict]:
    """The evaluation records (those holding `key`) at or after the warm-up, in order."""
    return [h for h in history if h.get(key) is not None and int(h["epoch"]) + 1 >= warmup_epochs]


def first_loss(history: Sequence[dict]) -> float | None:
    """The training loss of the earliest epoch in `history` (None when there is none or it is not finite)."""
    if not history:
        return None
    loss = min(history, key=lambda h: int(h["epoch"])).get("loss")
    return float(loss) if loss is not None and math.isfinite(float(loss)) else None


def failure_of(record: dict, rule: CollapseRule, start_loss: float | None) -> str | None:
    """Why one evaluation counts as a failure to learn ('flat heatmaps' / 'loss not falling', both
    at chance), or None (learning, or the signals were not recorded)."""
    accuracy, contrast = record.get("patch_accuracy"), record.get("heatmap_contrast")
    if accuracy is None or contrast is None:
        return None
    if float(accuracy) > rule.chance_factor * rule.chance:
        return None
    if float(contrast) < rule.flat_contrast:
        return "flat heatmaps"
    loss = record.get("loss")
    if start_loss is not None and loss is not None and float(loss) >= rule.loss_fraction * start_loss:
        return "loss not falling"
    return None


def pretext_collapsed(history: Sequence[dict], rule: CollapseRule, final: bool) -> str | None:
    """The reason when the run counts as collapsed (every post-warm-up evaluation failed to learn, see
    the module docstring), else None. `final`: this is the last evaluation of the run."""
    evals = post_warmup(history, rule.warmup_epochs)
    if not evals:
        return None
    start = first_loss(history)
    failures = [failure_of(h, rule, start) for h in evals]
    if any(f is None for f in failures):
        return None
    if not final and (rule.patience is None or len(evals) < rule.patience):
        return None
    epochs = ", ".join(str(int(h["epoch"]) + 1) for h in evals)
    accuracy = ", ".join(f"{float(h['patch_accuracy']):.3f}" for h in evals)
    why = []
    if "flat heatmaps" in failures:
        contrast = ", ".join(f"{float(h['heatmap_contrast']):.3f}" for h in evals)
        why.append(f"flat heatmaps (contrast < {rule.flat_contrast:g}: {contrast})")
    if "loss not falling" in failures:
        losses = ", ".join(f"{float(h['loss']):.3g}" for h in evals)
        why.append(f"a loss not falling (≥ {rule.loss_fraction:g}× the first epoch's {start:.3g}: {losses})")
    precision = max(float(h["precision"]) for h in evals)
    p_text = "P = 0" if precision == 0.0 else f"P ≤ {precision:.3f}"
    ended = "" if final else f"; ended early after {len(evals)} such evaluations"
    return (
        f"collapsed: failed to learn the puzzle ({p_text}): every evaluation after the "
        f"{rule.warmup_epochs}-epoch warm-up (epochs {epochs}) had patch accuracy ≤ {rule.chance_factor:g}× "
        f"chance (1/N² = {rule.chance:.3f}: {accuracy}) with {' or '.join(why)}{ended}"
    )


class PretextCollapse:
    """`LoopSpec.collapse_check` of the pretext stage: rank 0 decides from its history (only rank 0
    evaluates), every rank gets the same answer (a broadcast under DDP) so that all stop together."""

    def __init__(self, rule: CollapseRule, rank: int, world_size: int, device):
        self.rule = rule
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)

    def __call__(self, history: Sequence[dict], final: bool) -> str | None:
        reason = pretext_collapsed(history, self.rule, final) if self.rank == 0 else None
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([1.0 if reason else 0.0], device=self.device)
            dist.broadcast(flag, src=0)
            if flag.item() and reason is None:
                reason = "collapsed: failed to learn the puzzle after the warm-up (decided on rank 0)"
        return reason
