"""A stage's state read from the store, Ray-free: the one reading `status`, the run's summary and the
reports share. Precedence: result.json, then attempts.json (retrying / failed), then error.txt
(failed), then epochs in metrics.jsonl (running), else the parent's state decides (`state_before_start`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.schedule.failures import last_line, stage_failure_status
from orchestrator.store.format import StageState, stage_state, state_before_start
from orchestrator.store.store import Store

ERROR_CHARS = 200  # the longest error line a view keeps (a table cell, a status row)


@dataclass(frozen=True)
class StageView:
    stage_id: str
    state: StageState
    result: Mapping[str, Any] | None = None
    reason: str = ""  # why it is in its state: the failure's error line, or a collapse / skip reason
    detail: str | None = None  # a failed or retrying stage's `failures.status_text` ("retrying 2/3: …")
    epochs: list[dict[str, Any]] = field(default_factory=list)  # its metrics rows with an integer epoch


def stage_view(
    store: Store, stage_id: str, *, work: bool = True, parent_state: StageState | None = None
) -> StageView:
    """What the store says of stage `stage_id` (`parent_state`: its parent's, for a stage not started)."""
    if not work:  # scratch / imagenet pretrains: nothing to compute
        return StageView(stage_id, StageState.NO_WORK, store.read_result(stage_id))
    epochs = [r for r in store.read_metrics(stage_id) if isinstance(r.get("epoch"), int)]
    result = store.read_result(stage_id, consequence="the stage counts as not finished")
    if result is not None:
        state = stage_state(result)
        reason = result.get("reason") or (result.get("metrics") or {}).get("reason") or ""
        if state == StageState.COLLAPSED and not reason and result.get("collapsed_epoch") is not None:
            reason = f"collapsed at epoch {result['collapsed_epoch']}"
        return StageView(stage_id, state, result, str(reason), epochs=epochs)
    error = store.read_error(stage_id)
    line = (last_line(error)[:ERROR_CHARS] or "(empty error.txt)") if error is not None else ""
    failure = stage_failure_status(store, stage_id)
    if failure is not None:
        state = StageState(failure["state"])
        return StageView(stage_id, state, None, str(failure["error"] or line), failure["status"], epochs)
    if error is not None:
        return StageView(stage_id, StageState.FAILED, None, line, epochs=epochs)
    if epochs:
        return StageView(stage_id, StageState.RUNNING, None, epochs=epochs)
    return StageView(stage_id, state_before_start(parent_state), None)
