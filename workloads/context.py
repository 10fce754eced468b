"""The seam between workloads and whoever runs them (docs/design.md, "The seam").

A workload (`run_pretrain`, `run_finetune`) is a plain function of (config, data config, StageContext).
The orchestrator implements StageContext on top of Ray Train (DDP, checkpoints, reporting);
tests and single-process use take `LocalContext`, which keeps checkpoints in a folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)


class StageContext(Protocol):
    """What a workload may ask of whoever runs it."""

    rank: int
    world_size: int
    device: torch.device

    def resume_state(self) -> dict[str, Any] | None:
        """The latest epoch checkpoint of THIS stage (a plain dict as given to `save_epoch`), if any."""

    def parent_weights(self) -> dict[str, Any] | None:
        """The output state dict of the parent stage (the pretrain's best model), if any."""

    def save_epoch(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Persist an epoch checkpoint and its metrics. Called by every rank (a barrier under DDP);
        only rank 0's state is written."""

    def report(self, metrics: dict[str, Any]) -> None:
        """Progress that is not a checkpoint (e.g. within-epoch loss, img/s)."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device and wrap for data parallelism when world_size > 1.
        (Loaders are sharded by the engine's own `EpochSampler` from rank / world_size.)"""


@dataclass
class StageResult:
    """What a stage hands back: plain data. The orchestrator writes `metrics` etc. as result.json and
    `weights` as the stage's output checkpoint."""

    metrics: dict[str, Any]
    """Final metrics (pretrain: precision, best_epoch, loss summary; finetune: AP, AP50, ..., per-OKS, errors)."""
    weights: dict[str, torch.Tensor] | None
    """Output state dict (the best checkpoint's model) — None for collapsed / no-work stages."""
    collapsed: bool = False
    """True when the loss went NaN/Inf or past the configured bound (a result, not a crash)."""
    collapsed_epoch: int | None = None
    epochs_trained: list[int] = field(default_factory=list)
    """Epochs actually trained by this call (after a resume: only the remaining ones)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Code version, packages, device, config hash, what was loaded from the parent."""
    artifacts: dict[str, bytes] = field(default_factory=dict)
    """Further files for the stage folder, {file name: content} (e.g. the test-dev results file + zip)."""

    def summary(self) -> dict[str, Any]:
        """JSON-able description without the weights (what result.json holds)."""
        return {
            "metrics": self.metrics,
            "collapsed": self.collapsed,
            "collapsed_epoch": self.collapsed_epoch,
            "epochs_trained": self.epochs_trained,
            "provenance": self.provenance,
        }


class LocalContext:
    """Single-process StageContext backed by a folder: `epoch-XXXX.pt` checkpoints + `metrics.jsonl`.

    Used by tests and by `benchmarks/throughput.py`, which run a stage's loop without Ray.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        parent_weights: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        keep: int = 2,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank = 0
        self.world_size = 1
        self.device = torch.device(device)
        self._parent = parent_weights
        self._keep = keep
        self.reports: list[dict[str, Any]] = []

    def resume_state(self) -> dict[str, Any] | None:
        for path in sorted(self.folder.glob("epoch-*.pt"), reverse=True):
            try:
                state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
                return state
            except Exception as exc:  # a truncated file left by a dying writer: fall back to the previous one
                log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, exc)
        return None

    def parent_weights(self) -> dict[str, Any] | None:
        return self._parent

    def save_epoch(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        path = self.folder / f"epoch-{int(state['epoch']):04d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for old in sorted(self.folder.glob("epoch-*.pt"))[: -self._keep]:
            old.unlink()

    def report(self, metrics: dict[str, Any]) -> None:
        self.reports.append(dict(metrics))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)
