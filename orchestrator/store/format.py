"""The result store's format (Ray-, torch- and pyarrow-free; docs/architecture.md, "The store"): the
layout, stage ids, study names, the stage states, the config.json / result.json schemas and the
corrupt-JSON policy. Store files are written atomically, so one that does not parse was damaged from
outside: `parse_json` raises StoreError naming it (nothing can stand in); `parse_json_or_warn` warns
with the consequence and reads it as absent (result.json: recomputed; plan.json: study left out of the
report; attempts.json: retry history forgotten; failed_on.json: node unnamed); `parse_json_lines`
skips a partial line of an append-only log with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypedDict

from workloads.user_errors import UserError

log = logging.getLogger(__name__)


class StoreError(UserError, RuntimeError):
    """A store path or file is invalid; the message names it."""


# ------------------------------------------------------------------------------------------ layout
STAGES_DIR, STUDIES_DIR, STALE_DIR, LOCKS_DIR = "stages", "studies", "stale", "locks"
CONFIG_FILE, METRICS_FILE, ERROR_FILE = "config.json", "metrics.jsonl", "error.txt"
RESULT_FILE, WEIGHTS_FILE, STAGING_FILE = "result.json", "weights.pt", "staging.json"
FAILED_ON_FILE = "failed_on.json"
ATTEMPTS_FILE, TB_DIR, TRAIN_DIR = "attempts.json", "tb", "train"
CHECKPOINT_PREFIX, STATE_FILE = "checkpoint_", "state.pt"
STUDY_FILE, PLAN_FILE, TRIALS_FILE, TUNE_DIR = "study.yaml", "plan.json", "trials.csv", "tune"

_STAGE, _STUDY = f"{STAGES_DIR}/<stage id>/", f"{STUDIES_DIR}/<name>/"
LAYOUT: tuple[tuple[str, str], ...] = (  # every path of the store, relative to its root, and what it holds
    (
        _STAGE + CONFIG_FILE,
        "`StageRecord`: what identifies the stage (written when it starts or is published)",
    ),
    (_STAGE + METRICS_FILE, "one row per trained epoch (append-only)"),
    (_STAGE + WEIGHTS_FILE, "the stage's output weights (the best model)"),
    (
        f"{_STAGE}{TRAIN_DIR}/<stage id>/{CHECKPOINT_PREFIX}*/{STATE_FILE}",
        "Ray Train's epoch checkpoints (pruned when the stage finishes)",
    ),
    (_STAGE + TB_DIR + "/", "TensorBoard event files, one scalar per epoch and metric"),
    (_STAGE + STAGING_FILE, "rank 0's summary, published as result.json, then removed"),
    (_STAGE + FAILED_ON_FILE, "the rank and node of a worker whose workload raised"),
    (_STAGE + ATTEMPTS_FILE, "the failed attempts the retry budget counts"),
    (_STAGE + ERROR_FILE, "the last failure's traceback (removed on success)"),
    (_STAGE + RESULT_FILE, "`ResultRecord`, written atomically and last: present = finished"),
    (
        f"{STALE_DIR}/<stage id>-<UTC>/",
        "a stale stage's folder as it was, moved aside by `run --recompute-stale`",
    ),
    (_STUDY + STUDY_FILE, "the study file as run"),
    (_STUDY + PLAN_FILE, "its plan: every stage and trial"),
    (_STUDY + TRIALS_FILE, "one row per trial of the last run"),
    (_STUDY + TUNE_DIR + "/", "Ray Tune's experiment state (restored by the next run)"),
    (f"{LOCKS_DIR}/", "file locks of local stores: one per study run and per stage being computed"),
)


class StageKind(StrEnum):
    """The three kinds of stage; a stage id starts with its kind."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"
    EVALUATE = "evaluate"


STAGE_ID = re.compile(rf"^({'|'.join(StageKind)})-[0-9a-f]{{8,64}}$")  # <kind>-<content hash>
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def is_stage_id(name: str) -> bool:
    return isinstance(name, str) and STAGE_ID.fullmatch(name) is not None


def check_stage_id(stage_id: str) -> str:
    if not is_stage_id(stage_id):
        raise StoreError(f"invalid stage id {stage_id!r}: expected '<pretrain|finetune|evaluate>-<hex hash>'")
    return stage_id


def is_study_name(name: str) -> bool:
    return isinstance(name, str) and STUDY_NAME.fullmatch(name) is not None and ".." not in name


def check_study_name(name: str) -> str:
    if not is_study_name(name):
        raise StoreError(
            f"invalid study name {name!r}: use letters, digits, '_', '-', '.' (no '..', "
            "not starting with '.' or '-'; at most 100 characters)"
        )
    return name


def stage_parts(stage_id: str, *parts: str) -> tuple[str, ...]:
    """The path parts of a stage's folder (or a file in it) below the store root."""
    return (STAGES_DIR, check_stage_id(stage_id), *parts)


def study_parts(name: str, *parts: str) -> tuple[str, ...]:
    return (STUDIES_DIR, check_study_name(name), *parts)


# ------------------------------------------------------------------------------------------ states
class StageState(StrEnum):
    """Where a stage stands: the one set of names the scheduler, `run`'s progress lines, `status` and the
    reports use. The first four have a result.json; the next run retries failed and blocked stages."""

    DONE = "done"  # trained to the end
    NO_WORK = "no-work"  # a scratch / ImageNet pretrain: published "done" with `work` false
    COLLAPSED = "collapsed"  # ended by a collapse: a collapsed pretrain hands over no weights
    SKIPPED = "skipped"  # not trained: its pretrain collapsed (result.json with its `reason`)
    RUNNING = "running"  # its lease held; in `status`: epochs in metrics.jsonl and no result
    RETRYING = "retrying"  # its last attempt failed; retried after a backoff
    FAILED = "failed"  # its last attempt failed for good (error.txt, attempts.json)
    BLOCKED = "blocked"  # its pretrain failed (or is blocked itself)
    ELSEWHERE = "elsewhere"  # another run holds its lease (runtime only: `status` shows it running)
    WAITING = "waiting"  # its pretrain is unfinished; it holds nothing (no slot, no process)
    QUEUED = "queued"  # it can start; it waits for free resources


RESULT_STATUSES = (StageState.DONE, StageState.COLLAPSED, StageState.SKIPPED)  # a result.json's `status`
STAGE_STATES = tuple(StageState)  # finished ones first (the order `status` counts them in)
SKIP_REASON = "pretrain collapsed"  # the `reason` of a skipped finetune's result.json
FINISHED_STATES = frozenset({StageState.DONE, StageState.NO_WORK, StageState.COLLAPSED, StageState.SKIPPED})
TERMINAL_STATES = FINISHED_STATES | {
    StageState.FAILED,
    StageState.BLOCKED,
}  # a run ends with each stage in one


def state_before_start(parent: StageState | None) -> StageState:
    """The state of a stage nothing has happened to yet, by its pretrain's state (None: no pretrain):
    `waiting` when the pretrain is unfinished, or collapsed and its skip not yet published."""
    if parent is None or parent in (StageState.DONE, StageState.NO_WORK):
        return StageState.QUEUED
    if parent in (StageState.FAILED, StageState.BLOCKED):
        return StageState.BLOCKED
    return StageState.WAITING


class StageHow(StrEnum):
    """How a run got a stage (`run`'s summary table; trials.csv's `pretrain_how` / `finetune_how`). Not a
    state: a `found` stage is one of the FINISHED_STATES."""

    FOUND = "found"  # its result.json was in the store when the run started
    COMPUTED = "computed"  # this run trained it
    WAITED = "waited"  # another run computed it while this one waited (it was `elsewhere`)
    NO_WORK = "no-work"  # published by the scheduler itself: nothing to train
    SKIPPED = "skipped"  # published by the scheduler itself: its pretrain collapsed
    BLOCKED = "blocked"  # not run: its pretrain failed


# ------------------------------------------------------------------------------------- result.json
SCHEMA_VERSION = 3
"""Version of the stage files, written into result.json (their history: docs/architecture.md)."""


class StageRecord(TypedDict):
    """What identifies a stage (`orchestrator.schedule.stage.stage_record`): config.json, written when it
    starts or is published; result.json repeats it at its head."""

    stage_id: str
    kind: str  # a StageKind
    config: dict[str, Any]  # the stage's config as plain data (a finetune's carries `init`: its pretrain's)
    data: dict[str, Any]  # the data config
    parent: str | None  # the pretrain of a finetune, the finetune of an evaluate stage
    work: bool  # False for scratch / ImageNet pretrains: nothing is trained


STAGE_RECORD_KEYS = tuple(StageRecord.__annotations__)


class ResultRecord(StageRecord, total=False):
    """result.json: the `StageRecord`, then the outcome (`orchestrator.schedule.stage.publish`)."""

    schema_version: int
    status: str  # one of RESULT_STATUSES
    reason: str  # why a stage was skipped (optional)
    metrics: dict[str, Any]  # finetune: AP, AP50, ..., ap_per_oks, errors; pretrain: precision, loss summary
    collapsed: bool
    collapsed_epoch: int | None
    epochs_trained: list[int]
    has_weights: bool
    resumed_from: int | None
    wall_seconds: float
    device_hours: float
    gpu_hours: float
    provenance: dict[str, Any]  # git commit + dirty flag, package versions, device, config hash
    workload_versions: dict[str, str]  # {workload: numerics version} of it and the stages it was made from
    execution: dict[str, Any]  # {dotted key: value} of the execution switches it ran with (not in its id)
    finished_at: str  # UTC, ISO 8601


def read_stage_record(config: Any, result: Any, where: str) -> StageRecord | None:
    """A stage's record from its parsed config.json (`config`, at `where`; None: absent), None when the
    stage never started. Before schema version 2 a stage published without a trial had no config.json:
    its parsed result.json (`result`) stands in; a later result without one is a StoreError."""
    if config is None:
        if result is None:
            return None
        record = read_result_record(result, where.rsplit("/", 1)[0] + "/" + RESULT_FILE)
        if result.get("schema_version", 0) >= 2:
            raise StoreError(
                f"{where}: missing beside a result.json of schema_version {result['schema_version']}, "
                "which always has one (the store was changed by hand): restore the file, or remove the "
                "stage's folder to compute it again"
            )
        config = {k: record.get(k) for k in STAGE_RECORD_KEYS}
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise StoreError(f"{where}: expected a stage record {{{', '.join(STAGE_RECORD_KEYS)}}}")
    out: StageRecord = {"data": {}, "parent": None, **config}  # type: ignore[typeddict-item]
    return out


def read_result_record(obj: Any, where: str) -> ResultRecord:
    """A parsed result.json as the current schema (version 0: a missing `status` is "done"); a newer
    version, or a `status` outside RESULT_STATUSES, is a StoreError naming the file."""
    if not isinstance(obj, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(
            f"{where}: schema_version {version!r}, this code reads up to {SCHEMA_VERSION} "
            "(written by a newer hsjp-study: update this checkout)"
        )
    status = obj.get("status", StageState.DONE)
    if status not in RESULT_STATUSES:
        raise StoreError(f"{where}: status {status!r}, expected one of {', '.join(RESULT_STATUSES)}")
    record: ResultRecord = {**obj}  # type: ignore[typeddict-item]
    record["schema_version"] = SCHEMA_VERSION
    record["status"] = StageState(status)
    return record


def stage_state(result: Mapping[str, Any]) -> StageState:
    """The state of a finished stage from its result (older results say "done" with `collapsed` true)."""
    status = StageState(result.get("status") or StageState.DONE)
    if status == StageState.DONE and result.get("collapsed"):
        return StageState.COLLAPSED
    if status == StageState.DONE and result.get("work") is False:
        return StageState.NO_WORK
    return status


def parse_json(data: bytes | str | None, where: str) -> Any | None:
    """The parsed content of a store file (None: absent); StoreError naming `where` when corrupt."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{where}: corrupt JSON ({exc})") from exc


def parse_json_or_warn(data: bytes | str | None, where: str, consequence: str) -> Any | None:
    """`parse_json`, but a corrupt file reads as absent, with a warning naming it and `consequence`."""
    try:
        return parse_json(data, where)
    except StoreError as exc:
        log.warning("%s — %s", exc, consequence)
        return None


def parse_json_lines(data: bytes | str | None, where: str) -> list[Any]:
    """The rows of a JSON-lines log (none when absent); an unreadable line (a crash mid-append) is
    skipped with a warning naming `where` and the line number."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d: unreadable row skipped", where, i + 1)
    return rows


def finite_or_none(value: Any) -> Any:
    """NaN / Inf → None so result.json stays strict JSON (a collapsed loss is NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
