"""The result store's format, read by the orchestrator, `hsjp-study status` and the reports alike.

Ray-free, torch-free and pyarrow-free: `reports` imports this module and nothing else of the
orchestrator (docs/design.md, "Layers"). It holds the layout (folders, file names, stage ids, study
names), the one set of stage state names, the `result.json` schema and the corrupt-JSON policy.

**Layout** (relative to the store root; `orchestrator.store.Store` resolves it on a filesystem):

```
stages/<kind>-<hash>/    config.json    what identifies the stage (written when it starts)
                         metrics.jsonl  one row per epoch (append-only)
                         error.txt      the last failure's traceback (removed on success)
                         result.json    `ResultRecord`, written atomically and last: present = finished
studies/<name>/          study.yaml     the study file as run;  plan.json  its plan;
                         trials.csv     one row per trial of the last run (the report's results.csv
                                        is a different table: every finetune of the store)
```

**Corrupt JSON, one policy.** The store's JSON files are written atomically (a temporary file, then
a rename), so a file that does not parse was damaged from outside (a crash of the filesystem, a
hand edit, a partial copy):

- `parse_json` raises `StoreError` naming the file; it is what `Store.read_json` does.
- `parse_json_or_warn` is for readers that have a safe reading of "absent" (a corrupt `result.json`
  means the stage is not finished and is recomputed; a corrupt `plan.json` leaves its study out of
  the report; a corrupt `attempts.json` forgets the retry history): one warning names the file and
  that consequence, and the reader goes on with None.
- `parse_json_lines` is for the append-only logs (`metrics.jsonl`), where a crash mid-append leaves
  a partial last line: an unreadable line is skipped with a warning naming the file and line.

Files a user hands in (study files, annotation and results files) are not store files: their
readers raise a `UserError` naming the file.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, TypedDict

from workloads.user_errors import UserError

log = logging.getLogger(__name__)


class StoreError(UserError, RuntimeError):
    """A store path or file is invalid; the message names it."""


# ------------------------------------------------------------------------------------------ layout
STAGES_DIR, STUDIES_DIR = "stages", "studies"
CONFIG_FILE, METRICS_FILE, ERROR_FILE, RESULT_FILE = (
    "config.json",
    "metrics.jsonl",
    "error.txt",
    "result.json",
)
STUDY_FILE, PLAN_FILE, TRIALS_FILE = "study.yaml", "plan.json", "trials.csv"
STAGE_KINDS = ("pretrain", "finetune")
STAGE_ID = re.compile(r"^(pretrain|finetune)-[0-9a-f]{8,64}$")
"""`<kind>-<content hash>` (orchestrator.plan names stages by a hash of what changes their result)."""
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def is_stage_id(name: str) -> bool:
    return isinstance(name, str) and STAGE_ID.fullmatch(name) is not None


def check_stage_id(stage_id: str) -> str:
    if not is_stage_id(stage_id):
        raise StoreError(f"invalid stage id {stage_id!r}: expected '<pretrain|finetune>-<hex hash>'")
    return stage_id


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name) or ".." in name:
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
RESULT_STATUSES = ("done", "collapsed", "skipped")
"""`status` of a result.json: trained to the end / ended by a collapse / not trained (its pretrain
collapsed). A no-work pretrain (scratch, ImageNet) is published as "done" with `work` false."""
STAGE_STATES = (
    "done",
    "no-work",
    "collapsed",
    "skipped",
    "running",
    "retrying",
    "failed",
    "waiting",
    "queued",
)
"""Where a stage of a study stands (`hsjp-study status`, the reports): a result status, "no-work", or
one of the unfinished states."""
FINISHED_STATES = ("done", "no-work", "collapsed", "skipped")


# ------------------------------------------------------------------------------------- result.json
SCHEMA_VERSION = 1
"""Version of `ResultRecord`. 1: `schema_version` added (issue 20). A result.json without it was
written before and reads as version 0: the same fields, `status` possibly absent (= "done")."""


class ResultRecord(TypedDict, total=False):
    """What `result.json` holds (`orchestrator.stages.publish` writes it, `Store.write_result` adds the
    id, the time and the version)."""

    schema_version: int
    stage_id: str
    kind: str  # one of STAGE_KINDS
    config: dict  # the stage's config as plain data (a finetune's carries `init`: its pretrain)
    data: dict  # the data config
    parent: str | None  # the pretrain of a finetune
    work: bool  # False for scratch / ImageNet pretrains: nothing was trained
    status: str  # one of RESULT_STATUSES
    reason: str  # why a stage was skipped (optional)
    metrics: dict  # finetune: AP, AP50, ..., ap_per_oks, errors; pretrain: precision, loss summary
    collapsed: bool
    collapsed_epoch: int | None
    epochs_trained: list[int]
    has_weights: bool
    resumed_from: int | None
    wall_seconds: float
    device_hours: float
    gpu_hours: float
    provenance: dict  # git commit + dirty flag, package versions, device, config hash
    finished_at: str  # UTC, ISO 8601


def read_result_record(obj: Any, where: str) -> ResultRecord:
    """A parsed result.json as the current schema: version 0 (no `schema_version`) is upgraded (a
    missing `status` is "done"); a newer version than this code reads is refused, naming the file."""
    if not isinstance(obj, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(
            f"{where}: schema_version {version!r}, this code reads up to {SCHEMA_VERSION} "
            "(written by a newer hsjp-study: update this checkout)"
        )
    record: ResultRecord = {**obj}  # type: ignore[typeddict-item]
    record["schema_version"] = SCHEMA_VERSION
    record.setdefault("status", "done")
    return record


def stage_state(result: ResultRecord) -> str:
    """The state of a finished stage from its result: its status, or "collapsed" for a run that
    ended by a collapse (older results say status "done" with `collapsed` true)."""
    status = result.get("status") or "done"
    return "collapsed" if status == "done" and result.get("collapsed") else status


def parse_json(data: bytes | str | None, where: str) -> Any | None:
    """The parsed JSON of a store file's content, None when the file is absent (`data` None).
    StoreError naming `where` when it does not parse."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{where}: corrupt JSON ({exc})") from exc


def parse_json_or_warn(data: bytes | str | None, where: str, consequence: str) -> Any | None:
    """`parse_json`, but a corrupt file reads as absent, with one warning naming the file and
    `consequence` (what the reader does instead, e.g. "the stage will be recomputed")."""
    try:
        return parse_json(data, where)
    except StoreError as exc:
        log.warning("%s — %s", exc, consequence)
        return None


def parse_json_lines(data: bytes | str | None, where: str) -> list[Any]:
    """The rows of a JSON-lines log; an unreadable line (a crash mid-append) is skipped with a warning
    naming `where` and the line number. An absent file is no rows."""
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


__all__ = [
    "FINISHED_STATES",
    "RESULT_STATUSES",
    "SCHEMA_VERSION",
    "STAGE_KINDS",
    "STAGE_STATES",
    "TRIALS_FILE",
    "ResultRecord",
    "StoreError",
    "check_stage_id",
    "check_study_name",
    "is_stage_id",
    "parse_json",
    "parse_json_lines",
    "parse_json_or_warn",
    "read_result_record",
    "stage_parts",
    "stage_state",
    "study_parts",
]
