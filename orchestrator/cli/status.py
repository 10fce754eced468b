"""Where a study stands (`hsjp-study status`, docs/design.md §4–5), read from the result store only.

A stage's state (`StageState`, the words of `hsjp-study run`'s progress lines; `orchestrator.schedule.view`)
comes from its result.json (`done` / `collapsed` / `skipped`: a finetune whose pretrain collapsed), its
attempts.json (`retrying 2/3: <error>` / `failed: <error>`), error.txt without a result (`failed`),
metrics.jsonl epochs without a result (`running`), its pretrain (`blocked`: failed, `waiting`: not done),
else `queued`; `no-work` for a scratch / imagenet pretrain. (`elsewhere`, another run holding the stage's
lease, is known to running schedulers only: here it is `running`.) Progress, the key metric (precision P
/ AP), device-hours and an ETA come from result.json and metrics.jsonl's epoch rows; a finished stage an
older workload version made is marked `stale` (orchestrator.schedule.lineage), with the versions.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from orchestrator.plan import Plan, StageSpec, describe_stage, stage_request
from orchestrator.schedule.lineage import stale_of, stale_summary, stale_text
from orchestrator.schedule.scheduler import total_epochs
from orchestrator.schedule.view import StageView, stage_view
from orchestrator.store.format import FINISHED_STATES, METRICS_FILE, STAGE_STATES, StageKind, StageState

if TYPE_CHECKING:
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

_ETA_WINDOW = 5  # mean of the last epochs' durations
METRIC_OF_KIND: dict[str, str] = {
    StageKind.PRETRAIN: "precision",
    StageKind.FINETUNE: "AP",
    StageKind.EVALUATE: "results",
}
"""The key metric a stage's row shows (an evaluate stage: the number of results it wrote)."""


def study_status(plan: Plan, store: Store) -> list[dict[str, Any]]:
    """One row per stage of the plan, in plan order (each pretrain before the finetunes using it)."""
    users: dict[str, list[str]] = {}
    for t in plan.trials:
        users.setdefault(t.pretrain, []).append(t.trial_id)
        users.setdefault(t.finetune, []).append(t.trial_id)
    rows: dict[str, dict[str, Any]] = {}
    for sid, spec in plan.stages.items():  # a pretrain's row comes before its finetunes'
        parent = rows.get(spec.parent) if spec.parent else None
        view = stage_view(store, sid, work=spec.work, parent_state=parent["state"] if parent else None)
        row = _stage_row(spec, plan, store, view)
        row["trials"] = users.get(sid, [])
        rows[sid] = row
    return list(rows.values())


def _stage_row(spec: StageSpec, plan: Plan, store: Store, view: StageView) -> dict[str, Any]:
    total = total_epochs(spec)  # None for an evaluate stage: it trains nothing
    row: dict[str, Any] = {
        "stage_id": spec.stage_id,
        "kind": spec.kind,
        "work": spec.work,
        "parent": spec.parent,
        "description": describe_stage(spec),
        "state": view.state,
        "epoch": None,
        "epochs": total if spec.work else None,
        "metric": METRIC_OF_KIND.get(spec.kind, "AP"),
        "value": None,
        "gpu_hours": 0.0,
        "device_hours": 0.0,
        "eta_s": None,
        "error": None,
        "detail": view.detail,
        "updated_s_ago": None,
        "stale": None,
    }
    if not spec.work:
        return row
    _progress(row, view.epochs, plan)
    result = view.result
    if result is not None:
        stale = stale_of(result)
        row["stale"] = {w: {"made_with": old, "current": new} for w, (old, new) in stale.items()} or None
        value = (result.get("metrics") or {}).get(row["metric"])
        row["value"] = value if value is not None else row["value"]
        if row["epoch"] is None:
            row["epoch"] = total
        for key in ("gpu_hours", "device_hours"):
            if isinstance(result.get(key), (int, float)):
                row[key] = float(result[key])
        row["eta_s"] = None
    elif view.state in (StageState.FAILED, StageState.RETRYING):
        row["error"], row["eta_s"] = view.reason or None, None
    elif view.state == StageState.RUNNING:
        row["updated_s_ago"] = _age_s(store, store.stage_path(spec.stage_id, METRICS_FILE))
    return row


def _progress(row: dict[str, Any], metrics_rows: list[dict[str, Any]], plan: Plan) -> None:
    """Epochs done, best metric so far, device-hours spent and ETA from the per-epoch rows."""
    if not metrics_rows:
        return
    row["epoch"] = max(r["epoch"] for r in metrics_rows) + 1
    values = [r[row["metric"]] for r in metrics_rows if isinstance(r.get(row["metric"]), (int, float))]
    row["value"] = max(values) if values else None
    seconds = [float(r["seconds"]) for r in metrics_rows if isinstance(r.get("seconds"), (int, float))]
    request = stage_request(plan.compute)  # a training stage's workers
    row["device_hours"] = sum(seconds) * request.workers / 3600.0
    row["gpu_hours"] = sum(seconds) * request.total.get("GPU", 0.0) / 3600.0
    if seconds and row["epochs"]:
        recent = seconds[-_ETA_WINDOW:]
        row["eta_s"] = max(0, row["epochs"] - row["epoch"]) * sum(recent) / len(recent)


def _age_s(store: Store, path: str) -> float | None:
    try:
        mtime = store.fs.get_file_info(path).mtime
    except OSError:
        return None
    if mtime is None:
        return None
    return max(0.0, float((dt.datetime.now(dt.UTC) - mtime.astimezone(dt.UTC)).total_seconds()))


# ---------------------------------------------------------------------------------------- summary
def status_totals(rows: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """Counts per state, device-hours spent and the estimate of what is left."""
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in STAGE_STATES}
    est = plan.estimate()["stage_hours"]
    left = 0.0
    for r in rows:
        if r["state"] in FINISHED_STATES:
            continue
        share = 1.0 - (r["epoch"] or 0) / r["epochs"] if r["epochs"] else 1.0
        left += est.get(r["stage_id"], 0.0) * max(0.0, share)
    return {
        "study": plan.study,
        "stages": len(rows),
        "stale": sum(1 for r in rows if r.get("stale")),
        "trials": len(plan.trials),
        "counts": counts,
        "gpu_hours": sum(r["gpu_hours"] for r in rows),
        "device_hours": sum(r["device_hours"] for r in rows),
        "estimated_hours_left": left,
        "unit": plan.estimate()["unit"],
        "complete": all(r["state"] in FINISHED_STATES for r in rows),
    }


def render_status(rows: list[dict[str, Any]], plan: Plan) -> str:
    """A plain-text table: one line per stage, then totals."""
    s = status_totals(rows, plan)
    counts = ", ".join(f"{n} {state}" for state, n in s["counts"].items() if n)
    lines = [
        f"study {plan.study}: {s['trials']} trials, {s['stages']} stages — {counts}",
        f"spent {s['device_hours']:.2f} device-hours ({s['gpu_hours']:.2f} GPU-hours); estimated "
        f"{s['estimated_hours_left']:.2f} {s['unit']} left",
    ]
    stale = {r["stage_id"]: _stale_pairs(r["stale"]) for r in rows if r.get("stale")}
    if stale:
        lines.append(stale_summary(stale))
    lines.append("")
    header = f"{'STAGE':<26} {'STATE':<9} {'EPOCH':>9} {'METRIC':>17} {'DEV-H':>7} {'ETA':>8}  WHAT (TRIALS)"
    lines.append(header)
    for r in rows:
        epoch = f"{r['epoch'] or 0}/{r['epochs']}" if r["epochs"] else "-"
        if not isinstance(value := r["value"], (int, float)):
            metric = "-"
        elif r["kind"] == StageKind.EVALUATE:  # a count of results
            metric = f"{r['metric']} {value}"
        else:
            metric = f"{r['metric']} {value:.3f}"
        what = f"{r['description']} ({', '.join(t.split('-')[0] for t in r['trials'])})"
        if r.get("detail"):
            what += f" — {r['detail']}"
        elif r["error"]:
            what += f" — error: {r['error']}"
        if r.get("stale"):
            what += f" — stale: made by workload {stale_text(_stale_pairs(r['stale']))}"
        if r["state"] == StageState.WAITING:
            what += f" — waits for {r['parent']}"
        elif r["state"] == StageState.BLOCKED:
            what += f" — its {str(r['parent']).split('-', 1)[0]} {r['parent']} failed"
        lines.append(
            f"{r['stage_id']:<26} {r['state']:<9} {epoch:>9} {metric:>17} {r['device_hours']:>7.2f} "
            f"{format_duration(r['eta_s']):>8}  {what}"
        )
    return "\n".join(lines)


def _stale_pairs(row_stale: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {w: (v["made_with"], v["current"]) for w, v in row_stale.items()}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# ------------------------------------------------------------------------------------------ watching
def watch(
    render: Callable[[], tuple[str, bool]],
    *,
    interval_s: float = 5.0,
    out: TextIO | None = None,
    clear: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_refreshes: int | None = None,
) -> int:
    """Print `render()`'s text every `interval_s` until it says the study is complete (or Ctrl-C);
    returns the number of refreshes. On a terminal the screen is redrawn in place."""
    out = out or sys.stdout
    clear = out.isatty() if clear is None else clear
    n = 0
    try:
        while True:
            text, complete = render()
            n += 1
            stamp = time.strftime("%H:%M:%S")
            tail = "study complete" if complete else f"refreshing every {interval_s:g} s; Ctrl-C to stop"
            out.write(("\033[H\033[J" if clear else ("\n" if n > 1 else "")) + f"{text}\n[{stamp}] {tail}\n")
            out.flush()
            if complete or (max_refreshes is not None and n >= max_refreshes):
                return n
            sleep(interval_s)
    except KeyboardInterrupt:
        out.write("\n")
        return n
