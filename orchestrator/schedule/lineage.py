"""Which workload versions made a stored stage, and which stored stages are stale. Ray-free.

A stage id does not hash the workloads' numerics versions (a version bump must not orphan a store that
cost GPU-weeks, nor be ignored): each result.json records `workload_versions` of the workload that
computed it and of every stage it was made from, and a stage is *stale* when one of those differs from
`workloads.WORKLOAD_VERSIONS`. Stale stages are reused and named (`plan`, `status`, `run`);
`run --recompute-stale` moves each folder to `stale/<stage id>-<UTC>/` and computes it again. A result
from before schema 3 has one `provenance.workload_version` for both workloads and sits under an id of
the earlier recipe, which no current plan finds (`pre_identity_results` counts them).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.store.format import STAGES_DIR, STALE_DIR, StageKind
from workloads import STAGE_WORKLOADS, WORKLOAD_VERSIONS

if TYPE_CHECKING:
    from orchestrator.plan import Plan, StageSpec
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

Stale = dict[str, tuple[str, str]]  # {workload: (recorded version, current version)} of those that differ


def made_with(spec: StageSpec, parent_result: Mapping[str, Any] | None) -> dict[str, str]:
    """The `workload_versions` to record for a stage published now: its own workload's current version
    (a stage with work) and those recorded in its parent's result."""
    out = dict(recorded_versions(parent_result) or {}) if parent_result else {}
    if spec.work:
        workload = STAGE_WORKLOADS[spec.kind]
        out[workload] = WORKLOAD_VERSIONS[workload]
    return out


def recorded_versions(result: Mapping[str, Any]) -> dict[str, str] | None:
    """{workload: version} a result was made with: its `workload_versions`, else (schema < 3)
    `provenance.workload_version` for the workloads of its kind (a finetune from an HSJP pretrain: pose
    and hsjp); None when neither is there."""
    versions = result.get("workload_versions")
    if isinstance(versions, dict):
        return {str(k): str(v) for k, v in versions.items()}
    legacy = (result.get("provenance") or {}).get("workload_version")
    if legacy is None or not result.get("work", True):
        return None
    kinds = [result.get("kind")]
    init = (result.get("config") or {}).get("init") or {}
    if init.get("method") == "hsjp":
        kinds.append(StageKind.PRETRAIN)
    return {STAGE_WORKLOADS[k]: str(legacy) for k in kinds if k in STAGE_WORKLOADS}


def stale_of(result: Mapping[str, Any] | None) -> Stale:
    """The workloads whose recorded version differs from the current one ({} = current or no work)."""
    if not result:
        return {}
    recorded = recorded_versions(result) or {}
    return {
        w: (v, WORKLOAD_VERSIONS[w])
        for w, v in sorted(recorded.items())
        if w in WORKLOAD_VERSIONS and v != WORKLOAD_VERSIONS[w]
    }


def stale_text(stale: Stale) -> str:
    """`hsjp 1 (current 2), pose 1 (current 2)`."""
    return ", ".join(f"{w} {old} (current {new})" for w, (old, new) in stale.items())


def find_stale(plan: Plan, store: Store) -> dict[str, Stale]:
    """{stage id: what is stale} for the plan's stages whose stored result an older workload made."""
    return {sid: stale for sid in plan.stages if (stale := stale_of(store.read_result(sid)))}


def stale_summary(stale: dict[str, Stale], recompute: bool = False) -> str:
    """One line per version pair: `12 stages from workload hsjp 1, current 2: kept (…)`."""
    groups = Counter(
        f"workload {w} {old}, current {new}" for what in stale.values() for w, (old, new) in what.items()
    )
    tail = (
        "recomputed (the old results are moved under stale/ in the store)"
        if recompute
        else "kept (reused as they are); `hsjp-study run --recompute-stale` recomputes them"
    )
    return "\n".join(f"{n} stage{'s' * (n != 1)} from {key}: {tail}" for key, n in groups.items())


def archive_stale(store: Store, stage_ids: list[str]) -> list[str]:
    """Move each stage's folder to `stale/<id>-<UTC time>/`, so the scheduler computes it again and
    nothing computed is lost; returns the new places."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for sid in stage_ids:
        dst = store.path(STALE_DIR, f"{sid}-{stamp}")
        store.move_dir(store.path(STAGES_DIR, sid), dst)
        log.info("stale stage %s moved to %s", sid, dst)
        moved.append(dst)
    return moved


def pre_identity_results(store: Store) -> int:
    """Results with work written before schema 3 (`provenance.workload_version`, no `workload_versions`):
    they sit under the earlier recipe's ids, which no current plan finds."""
    count = 0
    for sid in store.list_stages():
        result = store.read_result(sid, "it is not counted")
        if result is None or "workload_versions" in result or not result.get("work", True):
            continue
        count += "workload_version" in (result.get("provenance") or {})
    return count


def pre_identity_line(count: int) -> str:
    return (
        f"note: the store holds {count} result{'s' * (count != 1)} written before stage ids left out the "
        "workload version and the execution switches (schema < 3): their ids are of the earlier recipe, "
        "so this plan does not reuse them (they stay in the store)"
    )
