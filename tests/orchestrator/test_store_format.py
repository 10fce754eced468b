"""The store format in one module (`orchestrator.store.format`): result.json carries a schema version,
and a store written before it existed (no `schema_version`) still reads in the orchestrator, `status`
and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.status import render_status, study_status
from orchestrator.plan import make_plan
from orchestrator.schedule.lineage import pre_identity_results
from orchestrator.schedule.stage import publish
from orchestrator.spec.inputs import data_config
from orchestrator.spec.study import load_study
from orchestrator.store import format as store_format
from orchestrator.store.format import SCHEMA_VERSION, StoreError, read_result_record, stage_state
from orchestrator.store.store import Store
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
    from orchestrator.schedule import scheduler

    assert set(store_format.RESULT_STATUSES) <= set(store_format.FINISHED_STATES)
    assert set(store_format.FINISHED_STATES) <= set(store_format.STAGE_STATES)
    assert scheduler.TERMINAL_STATES is store_format.TERMINAL_STATES  # no set of its own
    assert stage_state({"status": "done", "collapsed": True}) == "collapsed"
    assert stage_state({"collapsed": False}) == "done" and stage_state({"status": "skipped"}) == "skipped"
    assert stage_state({"status": "done", "work": False}) == "no-work"
    with pytest.raises(
        StoreError, match="r.json: status 'finished', expected one of done, collapsed, skipped"
    ):
        read_result_record({"status": "finished"}, "r.json")


def test_progress_lines_say_each_state_with_the_word_status_shows():
    import io

    from orchestrator.cli.progress import Progress

    out = io.StringIO()
    p = Progress(stream=out, t0=0.0)
    shown = [s for s in store_format.StageState if s != store_format.StageState.QUEUED]  # queued: silent
    for i, state in enumerate(shown):
        p.on_stage_event({"event": "stage", "stage_id": f"pretrain-{i:08x}", "state": state}, now=1.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(shown)
    for line, state in zip(lines, shown):
        assert line.split("] ", 1)[1].split("  ", 1)[1].startswith(str(state)), line


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
        "import sys, orchestrator.store.format;"
        "bad = [m for m in ('ray', 'torch', 'pyarrow', 'numpy') if m in sys.modules]; print(bad);"
        "sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------- a store of schema 1
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "store_v1"
"""Written by the code of schema version 1 (tests/data/make_store_v1.py says how)."""
EXPECTED = {  # trial: (pretrain state, finetune state), as tests/data/make_store_v1.py made them
    "t000-n2": ("done", "done"),  # the pretrain's result.json is version 0
    "t001-n3": ("collapsed", "skipped"),  # the skipped finetune has no config.json
    "t002-n4": ("running", "waiting"),
    "t003-scratch": ("no-work", "failed"),  # the no-work pretrain has no config.json
}


@pytest.fixture
def store_v1(tmp_path):
    """A copy of the fixture store (readers must not write: checked against the copy) and its plan."""
    import shutil

    root = tmp_path / "store_v1"
    shutil.copytree(FIXTURE, root)
    store = Store(root, create=False)
    return store, _plan_with_recorded_ids(store)


def _plan_with_recorded_ids(store: Store):
    """The fixture's study as today's code plans it, with the stage ids its store recorded per trial
    (plan.json): today's configs may hash differently (a config field added since), and what is
    tested is how the files read."""
    import dataclasses

    study = load_study(store.study_path("store-v1", "study.yaml"))
    plan = make_plan(study, data_config(study.data, "/data"))
    recorded = {
        t["trial_id"]: t
        for t in json.loads(Path(store.study_path("store-v1", "plan.json")).read_text())["trials"]
    }
    ids = {}
    for t in plan.trials:
        ids[t.pretrain], ids[t.finetune] = recorded[t.trial_id]["pretrain"], recorded[t.trial_id]["finetune"]
    stages = {
        ids[sid]: dataclasses.replace(spec, stage_id=ids[sid], parent=ids.get(spec.parent))
        for sid, spec in plan.stages.items()
    }
    trials = [dataclasses.replace(t, pretrain=ids[t.pretrain], finetune=ids[t.finetune]) for t in plan.trials]
    return dataclasses.replace(plan, stages=stages, trials=trials)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_fixture_is_a_store_of_schema_1_and_0():
    versions = {
        p.parent.name: json.loads(p.read_text()).get("schema_version", 0)
        for p in FIXTURE.glob("stages/*/result.json")
    }
    assert sorted(versions.values()) == [0, 1, 1, 1, 1]
    no_config = {p.parent.name for p in FIXTURE.glob("stages/*/result.json")} - {
        p.parent.name for p in FIXTURE.glob("stages/*/config.json")
    }
    assert len(no_config) == 2  # the no-work pretrain and the skipped finetune: published without a trial


def test_a_store_of_schema_1_reads_in_status(store_v1):
    store, plan = store_v1
    before = _files(Path(store.base))
    rows = {r["stage_id"]: r for r in study_status(plan, store)}
    assert _files(Path(store.base)) == before  # status only reads
    by_trial = {t.trial_id: (rows[t.pretrain]["state"], rows[t.finetune]["state"]) for t in plan.trials}
    assert by_trial == EXPECTED
    n2 = plan.trials[0]
    assert rows[n2.pretrain]["value"] == 0.9 and rows[n2.finetune]["value"] == 0.25
    failed = rows[plan.trials[3].finetune]
    assert (
        failed["detail"].startswith("stopped while retrying 1/1") and "CUDA out of memory" in failed["error"]
    )
    text = render_status(list(rows.values()), plan)
    counts = "2 done, 1 no-work, 1 collapsed, 1 skipped, 1 running, 1 failed, 1 waiting"
    assert f"study store-v1: 4 trials, 8 stages — {counts}" in text
    # the one result with real provenance (the skipped N=3 finetune) was made by workload version 1 of
    # both workloads: named stale
    assert rows[plan.trials[1].finetune]["stale"] == {
        "hsjp": {"made_with": "1", "current": "2"},
        "pose": {"made_with": "1", "current": "2"},
    }
    assert "stale: made by workload hsjp 1 (current 2), pose 1 (current 2)" in text
    assert "1 stage from workload hsjp 1, current 2: kept" in text
    assert pre_identity_results(store) == 1  # under an id of the earlier recipe


def test_a_store_of_schema_1_reads_in_the_reports(store_v1, tmp_path):
    store, plan = store_v1
    before = _files(Path(store.base))
    frame = collect(store.base).set_index("stage_id")
    by_trial = {
        t.trial_id: (frame.loc[t.pretrain, "status"], frame.loc[t.finetune, "status"]) for t in plan.trials
    }
    assert by_trial == EXPECTED
    n2, n3, n4, scratch = plan.trials
    # the configs of stages without config.json come from their (schema 1) result.json
    assert (frame.loc[n3.finetune, "method"], frame.loc[n3.finetune, "n"]) == ("hsjp", 3)
    assert frame.loc[n3.finetune, "reason"] == "pretrain collapsed"
    assert (
        frame.loc[scratch.pretrain, "method"] == "scratch"
        and frame.loc[scratch.finetune, "method"] == "scratch"
    )
    assert frame.loc[n2.finetune, "AP"] == 0.25 and frame.loc[n2.finetune, "precision"] == 0.9
    assert frame.loc[n4.finetune, "reason"] == "pretrain running"  # planned only: its plan entry
    assert (frame.loc[n4.finetune, "n"], frame.loc[n4.finetune, "backbone"]) == (4, "hrnet_w32")
    from reports.build import make_report

    files = make_report(store.base, tmp_path / "report", n_resamples=20)
    assert any(f.name == f"{n3.finetune}.html" for f in files) and files[-1].name == "index.html"
    assert _files(Path(store.base)) == before  # the reports only read


def test_config_json_is_written_for_every_published_stage(published):
    store, plan, sid = published
    scratch = next(s for s in plan.stages.values() if not s.work)
    publish(store, plan, scratch, status="done", summary={})  # as the scheduler publishes a no-work stage
    for stage in (sid, scratch.stage_id):
        record = json.loads(Path(store.stage_path(stage, "config.json")).read_text())
        result = json.loads(Path(store.stage_path(stage, "result.json")).read_text())
        assert record == {k: result[k] for k in store_format.STAGE_RECORD_KEYS}
        assert store.read_stage_record(stage) == record


def test_only_a_result_before_schema_2_stands_in_for_a_missing_config_json(published):
    store, _, sid = published
    Path(store.stage_path(sid, "config.json")).unlink()
    with pytest.raises(
        StoreError, match=rf"config.json: missing beside a result.json of schema_version {SCHEMA_VERSION}"
    ):
        store.read_stage_record(sid)
    path = Path(store.stage_path(sid, "result.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 1}))
    assert store.read_stage_record(sid)["stage_id"] == sid  # the legacy path: the head of result.json
    assert store_format.read_stage_record(None, None, "x/config.json") is None  # never started
    with pytest.raises(StoreError, match="x/config.json: expected a stage record"):
        store_format.read_stage_record({"model": {}}, None, "x/config.json")


@pytest.mark.parametrize(
    "parent, state",
    [
        (None, "queued"),
        ("done", "queued"),
        ("no-work", "queued"),
        ("failed", "blocked"),
        ("blocked", "blocked"),
        ("running", "waiting"),
        ("retrying", "waiting"),
        ("collapsed", "waiting"),  # its skip is published by the scheduler, not yet here
        ("queued", "waiting"),
    ],
)
def test_a_stage_not_started_stands_by_its_pretrain(parent, state):
    parent_state = store_format.StageState(parent) if parent else None
    assert store_format.state_before_start(parent_state) == state
