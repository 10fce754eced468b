"""Bounded, explained retries of a failed stage, Ray-free.

A stage that raises is retried at most `compute.max_failures` times, after a growing backoff, and fails
at once when the same error (type and message) comes twice in a row, so a deterministic bug fails in
seconds. A planned preemption (Ray Train's `PreemptionError`, or a worker that died with its drained
node) never counts as a repeat and has its own budget (`PREEMPTION_BUDGET`), as Ray Train V2 keeps
`max_preemption_failures` apart. `record_failure` writes attempts.json and error.txt.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.store.format import ATTEMPTS_FILE, LOCKS_DIR, StageState, is_study_name, parse_json_or_warn

if TYPE_CHECKING:
    from orchestrator.spec.inputs import ComputeConfig
    from orchestrator.store.store import Store

PREEMPTION_BUDGET = 100  # planned preemptions tolerated per stage and run (they do not use max_failures)
PREEMPTION_TYPES = frozenset({"PreemptionError"})  # a planned node drain (ray.train, Ray 2.60)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_MESSAGE_LIMIT = 500


@dataclass(frozen=True)
class FailurePolicy:
    """The retry budget and backoff of a stage (from the study's `compute` section)."""

    max_failures: int = 3
    backoff_s: float = 10.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 300.0
    max_preemptions: int = PREEMPTION_BUDGET

    def __post_init__(self) -> None:
        if self.max_failures < 0:
            raise ValueError(f"max_failures = {self.max_failures}: must be ≥ 0 (a budget, not unlimited)")

    @classmethod
    def from_compute(cls, compute: ComputeConfig) -> FailurePolicy:
        return cls(
            max_failures=compute.max_failures,
            backoff_s=compute.retry_backoff_s,
            backoff_factor=compute.retry_backoff_factor,
            backoff_max_s=compute.retry_backoff_max_s,
        )

    def delay_s(self, retry: int) -> float:
        """Wait before retry number `retry` (1 = the first retry)."""
        return float(min(self.backoff_max_s, self.backoff_s * self.backoff_factor ** max(0, retry - 1)))


@dataclass(frozen=True)
class Attempt:
    """One failed attempt of a stage. `drained`: a worker died with its node's drain (Ray's
    `RayActorError.preempted`) before Ray Train saw the announcement: a preemption too."""

    exc_type: str  # the root exception's (the worker's, not Ray's wrapper)
    message: str
    last_line: str  # the traceback's (`ValueError: boom`): what the summary and status show
    node: str | None = None  # where it ran (a node IP or id), when the caller knows
    traceback: str = ""  # the worker's (error.txt)
    time: float = field(default_factory=time.time)
    run_token: str = ""  # the run that made it: a new `hsjp-study run` starts with a fresh budget
    drained: bool = False

    @property
    def preempted(self) -> bool:
        return self.drained or self.exc_type in PREEMPTION_TYPES

    def signature(self) -> tuple[str, str]:
        """What "the same error" compares: type and message, object addresses (0x7f...) masked."""
        return self.exc_type, _ADDRESS.sub("0x…", self.message.strip())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt."""

    retry: bool
    delay_s: float  # backoff before the retry (0 when failing)
    failures: int  # that count against the budget in this run (preemptions excluded)
    budget: int
    reason: str  # `retry`, `preempted`, `repeated` (the same error twice in a row), `budget`, `preemptions`
    error: str  # the latest attempt's last traceback line
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        state = StageState.RETRYING if self.retry else StageState.FAILED
        return {**dataclasses.asdict(self), "state": state, "status": status_text(self)}


def decide(history: list[Attempt], policy: FailurePolicy) -> Decision:
    """The decision after the last of `history` (this run's failed attempts, oldest first). A preemption
    is retried at once (not the stage's fault, and the node is gone)."""
    if not history:
        raise ValueError("decide() needs at least one failed attempt")
    last = history[-1]
    counted = [a for a in history if not a.preempted]

    def decision(retry: bool, reason: str, delay_s: float = 0.0) -> Decision:
        return Decision(retry, delay_s, len(counted), policy.max_failures, reason, last.last_line, last.node)

    if last.preempted:
        spent = len(history) - len(counted) > policy.max_preemptions
        return decision(not spent, "preemptions" if spent else "preempted")
    previous = next((a for a in reversed(history[:-1]) if not a.preempted), None)
    if previous is not None and previous.signature() == last.signature():
        return decision(False, "repeated")
    if len(counted) > policy.max_failures:
        return decision(False, "budget")
    return decision(True, "retry", policy.delay_s(len(counted)))


# ------------------------------------------------------------------------------------------- text
def status_text(decision: Decision) -> str:
    """`retrying 2/3: <error>`, `retrying after a preemption: <error>` or `failed: <error>`."""
    if decision.reason == "preempted":
        return f"retrying after a preemption: {decision.error}"
    if decision.retry:
        return f"retrying {decision.failures}/{decision.budget}: {decision.error}"
    return f"failed: {decision.error}"


def summary_line(stage_id: str, decision: Decision) -> str:
    """The one line the run prints when an attempt fails."""
    where = f" on {decision.node}" if decision.node else ""
    head = f"stage {stage_id} failed{where}: {decision.error}"
    if decision.reason == "preempted":
        return f"{head} — node preempted; restarting (not counted against max_failures)"
    if decision.retry:
        return (
            f"{head} — retry {decision.failures}/{decision.budget} in {decision.delay_s:g} s "
            "(compute.max_failures)"
        )
    why = {
        "repeated": "the same error twice in a row",
        "budget": f"retry budget spent (compute.max_failures = {decision.budget})",
        "preemptions": f"preempted more than {PREEMPTION_BUDGET} times",
    }[decision.reason]
    return f"{head} — failed: {why}; its dependants are skipped (error.txt in the stage folder)"


def error_text(stage_id: str, attempt: Attempt, decision: Decision, number: int = 1) -> str:
    """error.txt: run, stage, attempt, node, decision, then the worker's traceback (last: `status` shows
    the file's last line)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(attempt.time))
    lines = [
        f"run {attempt.run_token}",
        f"stage {stage_id}",
        f"attempt {number} (failures counted {decision.failures}, max_failures {decision.budget}), at {when}",
        f"node: {attempt.node or 'unknown'}",
        f"decision: {status_text(decision)} ({decision.reason})",
        "",
        attempt.traceback.rstrip() or attempt.last_line,
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- from exceptions
def root_exception(exc: BaseException) -> BaseException:
    """The error a stage's own code raised, under Ray's wrappers (duck-typed): WorkerGroupError
    (`worker_failures`, lowest rank), ControllerError, UserExceptionWithTraceback, RayTaskError."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            exc = failures[min(failures)]
            continue
        for attr in ("controller_failure", "_base_exc", "cause"):
            inner = getattr(exc, attr, None)
            if isinstance(inner, BaseException):
                exc = inner
                break
        else:
            break
    return exc


def attempt_from_exception(
    exc: BaseException, *, node: str | None = None, run_token: str = "", traceback_text: str | None = None
) -> Attempt:
    """An Attempt from what `trainer.fit()` raised; its traceback: the outermost error's text when it
    carries the workers' tracebacks (WorkerGroupError does), else the Python one."""
    import traceback as tb

    root = root_exception(exc)
    drained_nodes = getattr(getattr(root, "preemption_info", None), "preempted_node_ids", None)
    if drained_nodes:  # a PreemptionError: name the drained node(s), not the caller's
        node = ", ".join(str(n) for n in drained_nodes)
    message = str(root).strip()
    exc_type = type(root).__name__
    if traceback_text is None:
        traceback_text = str(exc)
        if "Traceback (most recent call last)" not in traceback_text:
            traceback_text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    one = f"{exc_type}: {message.splitlines()[0] if message else ''}".rstrip(": ")
    last = last_line(traceback_text) or one
    if exc_type not in last:  # a wrapper's text ends elsewhere: name the root error
        last = one
    return Attempt(
        exc_type=exc_type,
        message=message[:_MESSAGE_LIMIT],
        last_line=last[:_MESSAGE_LIMIT],
        node=node,
        traceback=traceback_text,
        run_token=run_token,
        drained=_died_with_drain(exc),
    )


def _died_with_drain(exc: BaseException) -> bool:
    """Whether a worker under Ray's wrappers died with its node's drain (`RayActorError.preempted`): what
    Ray Train 2.60 charges to its preemption budget, not to `max_failures`."""
    stack: list[object] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if getattr(e, "preempted", False) is True:
            return True
        failures = getattr(e, "worker_failures", None)
        stack.extend(failures.values() if isinstance(failures, dict) else ())
        stack.extend(getattr(e, a, None) for a in ("health_check_failure", "cause", "_base_exc"))
    return False


def last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------ store
def attempts_path(store: Store, stage_id: str) -> str:
    return store.stage_path(stage_id, ATTEMPTS_FILE)


def read_attempts(store: Store, stage_id: str) -> dict[str, Any] | None:
    """attempts.json ({run_token, study, attempts, decision}), None when absent or unreadable."""
    path = attempts_path(store, stage_id)
    data = parse_json_or_warn(store.read_bytes(path), path, "its retry history is ignored")
    return data if isinstance(data, dict) else None


def history(store: Store, stage_id: str, run_token: str) -> list[Attempt]:
    """This run's failed attempts of a stage, oldest first (an earlier run's do not count)."""
    data = read_attempts(store, stage_id) or {}
    if data.get("run_token") != run_token:
        return []
    return [Attempt.from_dict(a) for a in data.get("attempts", []) if isinstance(a, dict)]


def record_failure(
    store: Store, stage_id: str, attempt: Attempt, policy: FailurePolicy, study: str = ""
) -> Decision:
    """Append `attempt` to this run's history, decide, write attempts.json and error.txt (`study`: lets
    `status` tell a retry whose run has ended)."""
    past = history(store, stage_id, attempt.run_token)
    decision = decide([*past, attempt], policy)
    store.write_json(
        attempts_path(store, stage_id),
        {
            "run_token": attempt.run_token,
            "study": study,
            "attempts": [a.to_dict() for a in (*past, attempt)],
            "decision": decision.to_dict(),
        },
    )
    store.record_error(stage_id, error_text(stage_id, attempt, decision, number=len(past) + 1))
    return decision


def clear_attempts(store: Store, stage_id: str) -> None:
    """After the stage succeeded (error.txt is cleared by the stage runner)."""
    store.remove(attempts_path(store, stage_id))


def stage_failure_status(store: Store, stage_id: str) -> dict[str, Any] | None:
    """For `status`: {state, status, error, node, reason, study} or None; a `retrying` whose study's run
    has ended (its lock is free) is `failed` ("stopped while retrying 2/3: …")."""
    data = read_attempts(store, stage_id) or {}
    decision = data.get("decision")
    if not isinstance(decision, dict) or decision.get("state") not in (
        StageState.RETRYING,
        StageState.FAILED,
    ):
        return None
    out: dict[str, Any] = {k: decision.get(k) for k in ("state", "status", "error", "node", "reason")}
    out["study"] = data.get("study") or ""
    out["state"] = StageState(out["state"])
    if out["state"] == StageState.RETRYING and out["study"] and run_active(store, out["study"]) is False:
        out["state"], out["status"] = StageState.FAILED, f"stopped while {out['status']} (its run ended)"
    return out


def run_active(store: Store, study: str) -> bool | None:
    """Whether a run of `study` holds its lock now (`orchestrator.cli.run.study_lock`; a non-blocking
    flock on a read-only descriptor); None when it cannot be told (object store, invalid name)."""
    import fcntl

    if not store.is_local or not is_study_name(study):
        return None
    path = os.path.join(store.base, LOCKS_DIR, f"study-{study}.lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # never locked there: no run of it is active
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # closing the descriptor releases it
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
