"""The store format in one module (`orchestrator.store_format`): result.json carries a schema version,
and a store written before it existed (no `schema_version`) still reads in the orchestrator, `status`
and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import store_format
from orchestrator.inputs import data_config
from orchestrator.plan import make_plan
from orchestrator.stages import publish
from orchestrator.status import study_status
from orchestrator.store import Store
from orchestrator.store_format import SCHEMA_VERSION, StoreError, read_result_record, stage_state
from orchestrator.study import load_study
from reports.collect import collect, open_store

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"


@pytest.fixture
def published(tmp_path):
    """A store whose first pretrain was published by today's `publish`, and its plan written."""
    store = Store(tmp_path / "store")
    study = load_study(SMOKE)
    plan = make_plan(study, data_config(study.data, store.base))
    store.write_study(plan.study, study.text, plan.to_dict())
    sid = next(s for s, spec in plan.stages.items() if spec.kind == "pretrain" and spec.work)
    summary = {"metrics": {"precision": 0.5}, "epochs_trained": [0, 1], "has_weights": True}
    publish(store, plan, plan.stages[sid], status="done", summary=summary, wall_seconds=3.0)
    return store, plan, sid


def _as_older_code_wrote_it(store: Store, sid: str) -> dict:
    """The same file without the fields this change added or made explicit (version 0)."""
    path = Path(store.stage_path(sid, "result.json"))
    old = json.loads(path.read_text())
    del old["schema_version"], old["status"]
    path.write_text(json.dumps(old))
    return old


def test_result_json_carries_the_schema_version(published):
    store, _, sid = published
    raw = json.loads(Path(store.stage_path(sid, "result.json")).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["status"] == "done" and raw["stage_id"] == sid
    assert set(raw) <= set(store_format.ResultRecord.__annotations__), "a field outside the schema"


def test_an_older_result_json_reads_in_the_orchestrator_status_and_reports(published):
    store, plan, sid = published
    old = _as_older_code_wrote_it(store, sid)
    record = store.read_result(sid)
    assert record is not None and record["schema_version"] == SCHEMA_VERSION and record["status"] == "done"
    assert {k: record[k] for k in old} == old  # nothing else changed
    assert {r["stage_id"]: r for r in study_status(plan, store)}[sid]["state"] == "done"
    assert open_store(store.base).read_result(sid)["status"] == "done"
    row = collect(store.base).set_index("stage_id").loc[sid]
    assert row["status"] == "done" and row["precision"] == 0.5


def test_a_newer_schema_is_refused_naming_the_file():
    with pytest.raises(StoreError, match=r"stages/x/result.json: schema_version 99, this code reads up to"):
        read_result_record({"schema_version": 99}, "stages/x/result.json")
    with pytest.raises(StoreError, match="expected a JSON object"):
        read_result_record([], "r.json")


def test_one_set_of_state_names():
    assert set(store_format.RESULT_STATUSES) <= set(store_format.FINISHED_STATES)
    assert set(store_format.FINISHED_STATES) <= set(store_format.STAGE_STATES)
    assert stage_state({"status": "done", "collapsed": True}) == "collapsed"
    assert stage_state({"collapsed": False}) == "done" and stage_state({"status": "skipped"}) == "skipped"


def test_stage_ids_and_study_names():
    assert store_format.is_stage_id("finetune-0123456789abcdef")
    assert not store_format.is_stage_id("finetune-XYZ") and not store_format.is_stage_id("eval-01234567")
    assert store_format.stage_parts("pretrain-0123abcd", "result.json") == (
        "stages",
        "pretrain-0123abcd",
        "result.json",
    )
    with pytest.raises(StoreError, match="invalid study name"):
        store_format.study_parts("../up")


def test_the_store_format_imports_no_ray_torch_or_pyarrow():
    import subprocess
    import sys

    code = (
        "import sys, orchestrator.store_format;"
        "bad = [m for m in ('ray', 'torch', 'pyarrow', 'numpy') if m in sys.modules]; print(bad);"
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
