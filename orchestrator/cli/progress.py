"""Live progress of a study run: one line per event, a summary table at the end (Ray-free).

Events come from the stage scheduler (`{"event": "stage", "state": <StageState>, "how": <StageHow>}`)
and as Ray Tune results of each stage's trial: its own state changes (no `how`) and its Train workers'
epoch reports (`{"stage_id", "epoch", "epochs", "loss", "precision" | "AP", ...}`). Lines name states with
the words `status` shows; the stage intervals kept split the wall time by phase.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from orchestrator.schedule.failures import last_line
from orchestrator.store.format import StageHow, StageState

log = logging.getLogger(__name__)

METRIC_LABELS = (("AP", "AP"), ("precision", "P"))
"""Main metric of a stage as shown in progress lines: pose AP, HSJP precision P (paper eqs. 3–5)."""


@dataclass
class StageProgress:
    stage_id: str
    state: StageState | str = StageState.QUEUED
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    metric: tuple[str, float] | None = None
    started: float | None = None
    ended: float | None = None
    epoch_times: list[tuple[int, float]] = field(default_factory=list)
    first_epoch_s: float | None = None
    """The workload's own duration of the first epoch seen ("seconds"): the ETA after one epoch
    (the time since "running" also holds the trainer's start-up, ~10-30 s)."""


class Progress:
    """Collects trial / stage events; prints a line per event when `enabled`."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        enabled: bool = True,
        t0: float | None = None,
        labels: dict[str, str] | None = None,
    ):
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.t0 = time.time() if t0 is None else t0
        self.stages: dict[str, StageProgress] = {}
        self.labels = dict(labels or {})
        """Stage id → how lines name it (the id, with its trial where one trial owns it)."""

    # --------------------------------------------------------------------------------------- events
    def note(self, text: str) -> None:
        self._print(text)

    def on_result(self, label: str, result: dict[str, Any], now: float | None = None) -> None:
        """A Ray Tune result of a stage's trial: a state change or an epoch report."""
        now = time.time() if now is None else now
        if result.get("event") == "stage":
            self.on_stage_event(result, now)
        elif "stage_id" in result and "epoch" in result:
            self._on_epoch(result, now)

    def on_trial_error(self, label: str, message: str) -> None:
        self._print(f"{label}  trial error: {last_line(message) or '?'}")

    def on_stage_event(self, ev: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        st = self.stages.setdefault(ev["stage_id"], StageProgress(ev["stage_id"]))
        st.epochs = ev.get("epochs") or st.epochs
        state, how = _state(ev["state"]), ev.get("how")
        found = how in (StageHow.FOUND, StageHow.WAITED)
        if state == StageState.QUEUED or (state == StageState.RUNNING and how == StageHow.COMPUTED):
            return  # queued alone says little; after the scheduler's launch the trial's own line follows
        if state == StageState.RUNNING:
            st.state, st.started, st.ended, st.epoch_times = state, ev.get("time", now), None, []
            st.first_epoch_s = None
        elif found or state == StageState.ELSEWHERE:
            if st.state != StageState.RUNNING:
                st.state = state
        else:
            st.state = state
            if st.started is not None:
                st.ended = ev.get("time", now)
        extra = ""
        if ev.get("wall_seconds") is not None and not found:
            extra = f"  in {_duration(ev['wall_seconds'])}"
        if ev.get("error"):
            extra += f"  {ev['error']}"
        if ev.get("reason"):
            extra += f"  ({ev['reason']})"
        by_how: dict[str, str] = {
            StageHow.FOUND: f"{state}: already in the store",
            StageHow.WAITED: f"{state}: computed by another run",
        }
        by_state: dict[str, str] = {
            StageState.ELSEWHERE: "elsewhere: another run is computing it (holds its lease)",
            StageState.NO_WORK: "no-work: nothing to pretrain",
        }
        label = by_how.get(how or "") or by_state.get(state, str(state))
        self._print(f"{self.labels.get(st.stage_id, st.stage_id)}  {label}{extra}", now)

    def _on_epoch(self, r: dict[str, Any], now: float) -> None:
        st = self.stages.setdefault(r["stage_id"], StageProgress(r["stage_id"], state=StageState.RUNNING))
        st.epoch, st.epochs = int(r["epoch"]), r.get("epochs") or st.epochs
        st.loss = r.get("loss")
        for key, label in METRIC_LABELS:
            if isinstance(r.get(key), (int, float)):
                st.metric = (label, float(r[key]))
        st.epoch_times.append((st.epoch, now))
        if len(st.epoch_times) == 1 and isinstance(r.get("seconds"), (int, float)):
            st.first_epoch_s = float(r["seconds"])
        parts = [f"{self.labels.get(st.stage_id, st.stage_id)}  epoch {st.epoch + 1}/{st.epochs or '?'}"]
        if isinstance(st.loss, (int, float)):
            parts.append(f"loss {st.loss:.4g}")
        if st.metric:
            parts.append(f"{st.metric[0]} {st.metric[1]:.3f}")
        if st.started is not None:
            parts.append(f"elapsed {_duration(now - st.started)}")
        eta = self.eta(st, now)
        if eta is not None:
            parts.append(f"eta {_duration(eta)}")
        self._print("  ".join(parts), now)

    @staticmethod
    def eta(st: StageProgress, now: float) -> float | None:
        """Seconds left: mean time per epoch in this attempt × epochs left (after a single epoch: that
        epoch's own duration, else the time since the stage started)."""
        if not st.epochs or not st.epoch_times:
            return None
        left = st.epochs - (st.epoch_times[-1][0] + 1)
        if len(st.epoch_times) >= 2:
            (e0, t0), (e1, t1) = st.epoch_times[0], st.epoch_times[-1]
            per_epoch = (t1 - t0) / max(1, e1 - e0)
        elif st.first_epoch_s is not None:
            per_epoch = st.first_epoch_s
        elif st.started is not None:
            per_epoch = now - st.started
        else:
            return None
        return max(0.0, left * per_epoch)

    def _print(self, text: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        line = f"[{_duration(now - self.t0):>8}] {text}"
        log.debug(line)
        if self.enabled:
            print(line, file=self.stream, flush=True)

    # ------------------------------------------------------------------------------------- phases
    def stage_seconds(self, now: float | None = None) -> float:
        """Length of the union of the intervals in which at least one stage was computing."""
        now = time.time() if now is None else now
        spans = sorted(
            (s.started, s.ended if s.ended is not None else now)
            for s in self.stages.values()
            if s.started is not None
        )
        total, lo, hi = 0.0, 0.0, -math.inf  # the merged interval [lo, hi] being extended
        for start, end in spans:
            if start > hi:
                total, lo, hi = total + max(0.0, hi - lo), start, end
            else:
                hi = max(hi, end)
        return total + max(0.0, hi - lo)

    def phases(self, wall_s: float, ray_start_s: float, now: float | None = None) -> dict[str, float]:
        stages_s = min(self.stage_seconds(now), max(0.0, wall_s - ray_start_s))
        return {
            "ray_start_s": round(ray_start_s, 2),
            "stages_s": round(stages_s, 2),
            "idle_s": round(max(0.0, wall_s - ray_start_s - stages_s), 2),
        }

    # ------------------------------------------------------------------------------------ summary
    def print_summary(self, summary: dict[str, Any]) -> None:
        if not self.enabled:
            return
        print(format_summary(summary), file=self.stream, flush=True)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table: one row per trial, then counts, failures and the wall-time split."""
    header = ("trial", "status", "pretrain", "pretrain how", "P", "finetune", "finetune how", "AP")
    rows: list[tuple[Any, ...]] = [header]
    for t in summary["trials"]:
        pre = (t["trial_id"], t["status"], t["pretrain"], t.get("pretrain_how", ""), _fmt(t.get("precision")))
        rows.append((*pre, t["finetune"], t.get("finetune_how", ""), _fmt(t.get("AP"))))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
    ph = summary.get("phases", {})
    lines.append(
        f"study {summary['study']}: {len(summary['trials'])} trials ({counts}); "
        f"wall {_duration(summary['wall_seconds'])} = Ray start {_duration(ph.get('ray_start_s', 0))}"
        f" + stages {_duration(ph.get('stages_s', 0))} + idle {_duration(ph.get('idle_s', 0))}"
    )
    for f in summary.get("failures", []):
        lines.append(f"FAILED {f['trial_id']} {f.get('stage_id') or ''}: {f['error']}")
    return "\n".join(lines)


def _state(word: str) -> StageState | str:
    """An event's state; a word outside the vocabulary is shown as it is (a line, not a crash)."""
    try:
        return StageState(word)
    except ValueError:
        log.debug("progress: unknown stage state %r", word)
        return word


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"
