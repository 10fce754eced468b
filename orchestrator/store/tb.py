"""TensorBoard event files per stage, written by rank 0 while it trains (no Ray here).

One scalar per epoch and metric into `<store>/stages/<id>/tb/` (`tensorboard --logdir <store>/stages`
names each run by its stage id); tags `train/<key>` for TRAIN_KEYS, `eval/<metric>` for the rest; the
step is the 0-based epoch. tensorboardX's synchronous EventsWriter (it comes with ray[tune]; not its
queue-and-thread SummaryWriter): every epoch is on disk when `write` returns, even if the process is
killed right after. A URI store is written to a local temporary folder and its event file copied whole
into `tb/` after every epoch (no TensorBoard filesystem plugin needed). A resumed stage adds an event file; TensorBoard merges
them. A failure to write is logged once per stage and never fails it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

from orchestrator.store.format import TB_DIR

if TYPE_CHECKING:
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

TRAIN_KEYS = ("loss", "lr", "img_per_s", "seconds", "data_wait_share", "images")
NOT_SCALARS = ("epoch", "epochs", "time", "world_size", "resumed_from", "stage_id", "step", "steps")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers as {tag: value} (booleans, strings, nested values and bookkeeping left out)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[f"train/{key}" if key in TRAIN_KEYS else f"eval/{key}"] = float(value)
    return out


class StageWriter:
    """The event file of one stage in this process (see the module docstring)."""

    def __init__(self, store: Store, stage_id: str):
        from tensorboardX.event_file_writer import EventsWriter  # type: ignore[import-untyped]  # no stubs

        self.store, self.stage_id = store, stage_id
        if store.is_local:
            self.folder = store.stage_path(stage_id, TB_DIR)
            os.makedirs(self.folder, exist_ok=True)
        else:
            self.folder = tempfile.mkdtemp(prefix=f"hsjp-tb-{stage_id}-")
        self.events = EventsWriter(os.path.join(self.folder, "events"))

    def write(self, row: dict[str, Any]) -> None:
        from tensorboardX.proto.event_pb2 import Event  # type: ignore[import-untyped]  # no stubs
        from tensorboardX.summary import scalar  # type: ignore[import-untyped]  # no stubs

        step, now = int(row["epoch"]), time.time()
        for tag, value in scalars(row).items():
            self.events.write_event(Event(wall_time=now, step=step, summary=scalar(tag, value)))
        self.events.flush()
        if not self.store.is_local:
            for name in os.listdir(self.folder):
                with open(os.path.join(self.folder, name), "rb") as f:
                    self.store.write_bytes(self.store.stage_path(self.stage_id, TB_DIR, name), f.read())

    def close(self) -> None:
        self.events.close()


_WRITERS: dict[tuple[str, str], StageWriter | None] = {}


def log_epoch(store: Store, stage_id: str, row: dict[str, Any]) -> None:
    """Append one epoch row of `stage_id` to its TensorBoard events (rank 0 calls this)."""
    if not isinstance(row.get("epoch"), int):
        return
    key = (store.uri, stage_id)
    try:
        if key not in _WRITERS:
            _WRITERS[key] = StageWriter(store, stage_id)
        writer = _WRITERS[key]
        if writer is not None:
            writer.write(row)
    except Exception as exc:  # noqa: BLE001 — TensorBoard output must never fail a stage
        log.warning("stage %s: TensorBoard events not written (%s: %s)", stage_id, type(exc).__name__, exc)
        _WRITERS[key] = None
