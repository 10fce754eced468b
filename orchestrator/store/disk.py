"""Disk use of the store, Ray-free: pruning a finished stage's epoch checkpoints (right after it is
published) and measuring the store for `hsjp-study status`.

A finished stage keeps what later steps read (result.json, config.json, metrics.jsonl, weights.pt); its
Ray Train folder `train/` holds epoch checkpoints (up to two of ~0.5 GB for HRNet-W32) that only a
resume of an *unfinished* stage needs. `prune_stage` removes it, or with `compute.keep_last_checkpoint`
every `checkpoint_*` but the newest; never for a stage not finished, nor one whose result names weights
that are missing (the checkpoints may then be the only copy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from orchestrator.store.format import CHECKPOINT_PREFIX, STAGES_DIR, TRAIN_DIR, WEIGHTS_FILE

if TYPE_CHECKING:
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    stage_id: str
    removed: list[str] = field(default_factory=list)  # folders
    kept: list[str] = field(default_factory=list)  # checkpoint folders kept (keep_last)
    freed_bytes: int = 0
    skipped: str | None = None  # why nothing was pruned

    def line(self) -> str:
        if self.skipped:
            return f"stage {self.stage_id}: checkpoints kept ({self.skipped})"
        kept = f", kept {len(self.kept)} (the last)" if self.kept else ""
        return (
            f"stage {self.stage_id}: pruned {len(self.removed)} checkpoint folder(s), "
            f"freed {format_bytes(self.freed_bytes)}{kept}"
        )


def prune_stage(store: Store, stage_id: str, keep_last: bool = False) -> PruneReport:
    """Remove a finished stage's epoch checkpoints (keep the newest with `keep_last`)."""
    report = PruneReport(stage_id)
    result = store.read_result(stage_id)
    if result is None:
        report.skipped = "the stage is not finished"
        return report
    if result.get("has_weights") and not store.exists(store.stage_path(stage_id, WEIGHTS_FILE)):
        report.skipped = "its result names output weights but weights.pt is missing"
        log.warning("stage %s: %s; its checkpoints are not pruned", stage_id, report.skipped)
        return report
    train = store.stage_path(stage_id, TRAIN_DIR)
    if not store.exists(train):
        report.skipped = "nothing to prune"
        return report
    if not keep_last:
        report.freed_bytes = tree_bytes(store.fs, train)
        store.remove(train)
        report.removed.append(train)
        return report
    infos = store.fs.get_file_info(pafs.FileSelector(train, recursive=True))
    checkpoints = sorted(
        (i for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)),
        key=lambda i: i.base_name,
    )
    if len(checkpoints) <= 1:
        report.kept = [i.path for i in checkpoints]
        report.skipped = "only the last checkpoint is there"
        return report
    for info in checkpoints[:-1]:
        report.freed_bytes += tree_bytes(store.fs, info.path)
        store.remove(info.path)
        report.removed.append(info.path)
    report.kept = [checkpoints[-1].path]
    return report


# ----------------------------------------------------------------------------------------- sizes
def tree_bytes(fs: pafs.FileSystem, path: str) -> int:
    """Bytes under `path` (0 when absent)."""
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return int(info.size or 0) if info.type == pafs.FileType.File else 0
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)


@dataclass(frozen=True)
class StoreUsage:
    total_bytes: int
    files: int
    checkpoint_bytes: int  # under the stages' Ray Train folders (what pruning frees)

    def line(self, uri: str) -> str:
        return (
            f"store {uri}: {format_bytes(self.total_bytes)} in {self.files} files "
            f"({format_bytes(self.checkpoint_bytes)} of them epoch checkpoints)"
        )

    def to_dict(self) -> dict[str, int]:
        return {"bytes": self.total_bytes, "files": self.files, "checkpoint_bytes": self.checkpoint_bytes}


def store_usage(store: Store) -> StoreUsage:
    """Bytes and files of the whole store, and the share in stage checkpoints, in one listing."""
    total = files = ckpt = 0
    marker = f"/{TRAIN_DIR}/"
    stages_root = store.path(STAGES_DIR) + "/"
    for i in store.fs.get_file_info(pafs.FileSelector(store.base, recursive=True, allow_not_found=True)):
        if i.type != pafs.FileType.File:
            continue
        size = int(i.size or 0)
        total += size
        files += 1
        rest = i.path[len(stages_root) :] if i.path.startswith(stages_root) else ""
        if marker in f"/{rest}":
            ckpt += size
    return StoreUsage(total, files, ckpt)


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"
