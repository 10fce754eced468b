"""Study execution (docs/design.md §3–5): pure helpers (unit) and whole runs through a local Ray (slow).

The slow tests use stand-in workloads (`standins.py`: an nn.Linear through the shared engine) so a
stage costs Ray's fixed overhead only; the smoke-study test runs the real workloads.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

from orchestrator.cli.progress import Progress, StageProgress, format_summary  # noqa: E402
from orchestrator.cli.run import run_study  # noqa: E402
from orchestrator.ray.connect import trial_resources  # noqa: E402
from orchestrator.schedule.lease import LeaseTable  # noqa: E402
from orchestrator.store.store import Store  # noqa: E402
from workloads.config import to_dict  # noqa: E402

ray.cloudpickle.register_pickle_by_value(standins)  # Ray workers cannot import tests/ by name


# -------------------------------------------------------------------------------------------- unit
def test_lease_table_excludes_others_until_release_or_expiry():
    table = LeaseTable()
    assert table.acquire("s", "h1", ttl_s=10, now=0)
    assert not table.acquire("s", "h2", ttl_s=10, now=5)
    assert table.acquire("s", "h1", ttl_s=10, now=5)  # renewal by the holder
    assert table.acquire("s", "h2", ttl_s=10, now=16)  # h1 stopped renewing: expired
    table.release("s", "h1")  # not the holder: no effect
    assert not table.acquire("s", "h3", ttl_s=10, now=17)
    table.release("s", "h2")
    assert table.acquire("s", "h3", ttl_s=10, now=17)


def test_trial_drivers_never_take_a_cpu_from_the_stages():
    assert trial_resources({"CPU": 64.0, "GPU": 8.0, "hsjp_trial_driver": 100.0}) == {
        "CPU": 0,
        "hsjp_trial_driver": 1,
    }
    assert trial_resources({"CPU": 64.0, "GPU": 8.0}) == {"CPU": 0, "memory": 1}  # 8 × 8-CPU stages fit


def test_progress_lines_eta_and_stage_time_union():
    out = io.StringIO()
    p = Progress(stream=out, t0=0.0, labels={"pretrain-aa": "pretrain-aa (t1)"})
    p.on_result(
        "pretrain-aa (t1)",
        {
            "event": "stage",
            "stage_id": "pretrain-aa",
            "kind": "pretrain",
            "state": "running",
            "epochs": 4,
            "time": 10.0,
        },
        now=10.0,
    )
    p.on_result(
        "pretrain-aa (t1)",
        {"stage_id": "pretrain-aa", "epoch": 0, "epochs": 4, "loss": 0.5, "precision": 0.25, "seconds": 3.0},
        now=20.0,
    )
    # after one epoch: that epoch's own 3 s, not the 10 s since "running" (trainer start-up included)
    assert Progress.eta(p.stages["pretrain-aa"], 20.0) == pytest.approx(9.0)
    p.on_result("x", {"stage_id": "pretrain-aa", "epoch": 1, "epochs": 4, "loss": 0.4}, now=22.0)
    assert Progress.eta(p.stages["pretrain-aa"], 22.0) == pytest.approx(4.0)  # 2 epochs left × 2 s
    p.on_stage_event(
        {"event": "stage", "stage_id": "pretrain-bb", "kind": "pretrain", "state": "elsewhere"}, now=12.0
    )
    p.on_result(
        "x",
        {
            "event": "stage",
            "stage_id": "pretrain-aa",
            "kind": "pretrain",
            "state": "done",
            "time": 30.0,
            "wall_seconds": 20.0,
        },
        now=30.0,
    )
    p.on_stage_event(
        {"event": "stage", "stage_id": "pretrain-bb", "kind": "pretrain", "state": "done", "how": "waited"},
        now=30.5,
    )
    p.stages["finetune-bb"] = StageProgress("finetune-bb", started=25.0, ended=40.0)
    p.stages["finetune-cc"] = StageProgress("finetune-cc", started=50.0, ended=55.0)
    assert p.stage_seconds() == pytest.approx(35.0)  # [10, 40] ∪ [50, 55]
    assert p.phases(wall_s=60.0, ray_start_s=3.0) == {"ray_start_s": 3.0, "stages_s": 35.0, "idle_s": 22.0}
    text = out.getvalue()
    assert "pretrain-aa (t1)  epoch 2/4  loss 0.4  P 0.250" in text and "eta 4.0s" in text
    assert "pretrain-aa (t1)  done  in 20.0s" in text
    assert "pretrain-bb  elsewhere: another run is computing it" in text
    assert "pretrain-bb  done: computed by another run" in text


def test_finished_study_reruns_without_ray(tmp_path):
    """Everything in the store already: no Ray started, no stage touched, summary from the store."""
    plan = standins.make_plan(
        "done", [("t1", standins.pretrain_config(method="scratch"), standins.finetune_config())], salt="done"
    )
    store = Store(tmp_path / "store")
    for sid, spec in plan.stages.items():
        store.write_result(sid, {"kind": spec.kind, "status": "done", "metrics": {"AP": 0.5}})
    summary = run_study(plan, store, study_text="name: done\n", progress=False)
    assert not ray.is_initialized()
    assert summary["counts"] == {"done": 1} and summary["ran"] == 0 and summary["tune"] == "none"
    assert summary["trials"][0]["AP"] == 0.5
    assert store.read_bytes(store.study_path("done", "study.yaml")) == b"name: done\n"
    assert json.loads(store.read_bytes(store.study_path("done", "plan.json")))["study"] == "done"
    rows = list(
        csv.DictReader(io.StringIO(store.read_bytes(store.study_path("done", "trials.csv")).decode()))
    )
    assert [(r["trial_id"], r["status"], r["AP"], r["pretrain.method"]) for r in rows] == [
        ("t1", "done", "0.5", "scratch")
    ]
    assert "t1" in format_summary(summary)


# -------------------------------------------------------------------------------------- through Ray
# local_ray: tests/orchestrator/conftest.py
@pytest.mark.slow
def test_chain_publishes_results_skips_after_collapse_and_reruns_nothing(local_ray, tmp_path, capsys):
    compute = standins.tiny_compute(workers_per_stage=2)  # DDP over 2 gloo workers
    scratch, collapse = (
        standins.pretrain_config(method="scratch"),
        standins.pretrain_config(collapse_loss=1e-6),
    )
    plan = standins.make_plan(
        "chain",
        [
            ("t-scratch", scratch, standins.finetune_config()),
            ("t-collapse", collapse, standins.finetune_config()),
        ],
        salt="chain",
        compute=compute,
    )
    store, calls = Store(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    t_scratch, t_collapse = plan.trials

    summary = run_study(plan, store, study_text="name: chain\n", workloads=standins.workloads(calls))

    assert summary["counts"] == {"done": 1, "skipped": 1} and summary["failures"] == []
    pre = store.read_result(t_scratch.pretrain)  # no-work stage: published instantly, no weights
    assert (pre["status"], pre["work"], pre["epochs_trained"], pre["gpu_hours"]) == ("done", False, [], 0.0)
    assert not store.exists(store.stage_path(t_scratch.pretrain, "weights.pt"))
    ft = store.read_result(t_scratch.finetune)
    assert ft["status"] == "done" and ft["kind"] == "finetune" and ft["parent"] == t_scratch.pretrain
    assert ft["config"]["init"] == {"method": "scratch", "pretrain": to_dict(scratch)}
    assert ft["config"]["lr"] == plan.stages[t_scratch.finetune].config.lr and ft["data"]["coco_root"]
    assert ft["epochs_trained"] == [0, 1] and 0 < ft["metrics"]["AP"] <= 1
    assert ft["metrics"]["load_report"]["loaded_parent"] is False
    assert ft["device_hours"] == pytest.approx(ft["wall_seconds"] * 2 / 3600) and ft["gpu_hours"] == 0.0
    assert ft["provenance"]["device"]["world_size"] == 2 and ft["provenance"]["config_hash"]
    assert store.exists(store.stage_path(t_scratch.finetune, "weights.pt"))
    assert not store.exists(store.stage_path(t_scratch.finetune, "staging.json"))
    assert {r["world_size"] for r in store.read_metrics(t_scratch.finetune)} == {2}
    collapsed = store.read_result(t_collapse.pretrain)
    assert (collapsed["status"], collapsed["collapsed"], collapsed["collapsed_epoch"]) == (
        "collapsed",
        True,
        0,
    )
    assert not store.exists(store.stage_path(t_collapse.pretrain, "weights.pt"))
    skipped = store.read_result(t_collapse.finetune)
    assert skipped["status"] == "skipped" and skipped["reason"] == "pretrain collapsed"
    assert sorted(c["kind"] for c in standins.read_calls(calls)) == ["finetune", "pretrain"]
    csv_rows = store.read_bytes(store.study_path("chain", "trials.csv")).decode().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("trial_id,")
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "skipped" in out and "wall" in out and "t-collapse" in out

    metrics_before = store.read_bytes(store.stage_path(t_scratch.finetune, "metrics.jsonl"))
    t0 = time.time()
    again = run_study(plan, store, study_text="name: chain\n", workloads=standins.workloads(calls))
    assert time.time() - t0 < 10 and again["ran"] == 0 and again["counts"] == summary["counts"]
    assert len(standins.read_calls(calls)) == 2
    assert store.read_bytes(store.stage_path(t_scratch.finetune, "metrics.jsonl")) == metrics_before


@pytest.mark.slow
def test_failed_stage_records_error_and_the_next_run_retries_it(local_ray, tmp_path):
    plan = standins.make_plan(
        "fail",
        [("t-fail", standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=1))],
        salt="fail",
    )
    store, calls, flag = (
        Store(tmp_path / "store"),
        str(tmp_path / "calls.jsonl"),
        str(tmp_path / "failed-once"),
    )
    trial = plan.trials[0]
    work = standins.workloads(calls, fail_flag=flag)

    first = run_study(plan, store, study_text="name: fail\n", workloads=work, progress=False)

    assert first["counts"] == {"failed": 1}
    assert first["failures"][0]["stage_id"] == trial.finetune
    assert "injected failure" in first["failures"][0]["error"]
    assert "injected failure" in store.read_error(trial.finetune)
    assert not (store.read_result(trial.finetune) is not None) and (
        store.read_result(trial.pretrain) is not None
    )

    second = run_study(plan, store, study_text="name: fail\n", workloads=work, progress=False)

    assert second["counts"] == {"done": 1} and second["failures"] == []
    # the first run ended (its searcher finished): the rerun starts a fresh experiment for what is left
    assert second["tune"] == "fresh"
    assert store.read_error(trial.finetune) is None
    assert [c["kind"] for c in standins.read_calls(calls)] == ["finetune", "finetune"]


@pytest.mark.slow
def test_unrestorable_tune_state_falls_back_to_a_fresh_tuner(local_ray, tmp_path, caplog):
    """A Tune experiment that cannot be restored (here: a corrupt tuner.pkl, with the study's stages
    unchanged, so a restore is tried) is replaced by a fresh one, and the stages still run."""
    plan = standins.make_plan(
        "fallback",
        [("t1", standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=1))],
        salt="fallback",
    )
    store, calls = Store(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    store.write_json(store.study_path("fallback", "plan.json"), plan.to_dict())  # "the last run"
    store.write_bytes(store.study_path("fallback", "tune", "tuner.pkl"), b"not a pickle")
    store.write_bytes(store.study_path("fallback", "tune", "experiment_state-x.json"), b"{}")

    with caplog.at_level("INFO", logger="orchestrator.ray.tune"):
        summary = run_study(
            plan, store, study_text="name: fallback\n", workloads=standins.workloads(calls), progress=False
        )

    assert "restoring" in caplog.text  # the restore was tried
    assert summary["tune"] == "fresh" and summary["counts"] == {"done": 1}
    assert [c["kind"] for c in standins.read_calls(calls)] == ["finetune"]


@pytest.mark.slow
def test_smoke_study_end_to_end_then_nothing_recomputed(local_ray, smoke_reference, tmp_path):
    """The shipped smoke study (at test scale: tests/conftest.py SMOKE_TEST_SCALE) with the real
    workloads: every stage published with real metrics; a second run starts no stage and trains no
    epoch."""
    plan, store, summary, study = (
        smoke_reference.plan,
        smoke_reference.store,
        smoke_reference.summary,
        smoke_reference.study,
    )

    assert summary["counts"] == {"done": len(plan.trials)} and summary["failures"] == []
    assert len({t.pretrain for t in plan.trials}) < len(plan.trials)  # a shared pretrain, computed once
    for sid, spec in plan.stages.items():
        result = store.read_result(sid)
        assert result is not None and result["status"] == "done", sid
        if not spec.work:
            continue
        metrics = result["metrics"]
        if spec.kind == "pretrain":
            assert 0.0 <= metrics["precision"] <= 1.0
            assert standins.epochs_in_metrics(store, sid) == list(range(spec.config.epochs))
        else:
            assert {"AP", "AP50", "AP75", "APm", "APl", "AR", "ap_per_oks", "errors"} <= set(metrics)
            assert 0.0 <= metrics["AP"] <= 1.0 and len(metrics["ap_per_oks"]) == 10
            assert result["config"]["init"]["method"] == plan.stages[spec.parent].config.method
    metrics_before = {sid: store.read_bytes(store.stage_path(sid, "metrics.jsonl")) for sid in plan.stages}

    # the report from these real results: every file, and Fig. 3 holds the measured per-OKS APs
    from reports.build import make_report

    files = make_report(store.base, tmp_path / "report")
    names = {p.name for p in files}
    assert {f"figure{i}.{ext}" for i in (3, 4, 5, 6) for ext in ("png", "pdf", "csv")} <= names
    assert {f"table{i}.{ext}" for i in (1, 2, 3) for ext in ("md", "csv", "tex")} <= names
    assert "index.html" in names and "results.csv" in names
    fig3 = list(csv.DictReader(open(tmp_path / "report" / "figure3.csv")))
    scratch_ft = next(t.finetune for t in plan.trials if t.params.get("pretrain.method") == "scratch")
    measured = store.read_result(scratch_ft)["metrics"]["ap_per_oks"]
    scratch_rows = [r for r in fig3 if r["method"] == "scratch"]
    assert [float(r["ap"]) for r in scratch_rows] == pytest.approx([100 * v for v in measured.values()])
    assert {r["method"] for r in fig3} >= {"scratch", "hsjp"}

    t0 = time.time()
    again = run_study(plan, store, study_text=study.text, progress=False)

    assert time.time() - t0 < 10 and again["ran"] == 0 and again["counts"] == summary["counts"]
    assert {
        sid: store.read_bytes(store.stage_path(sid, "metrics.jsonl")) for sid in plan.stages
    } == metrics_before


@pytest.mark.slow
def test_an_always_failing_stage_stops_at_its_second_identical_error_and_says_why(
    local_ray, tmp_path, capsys
):
    """A deterministic bug: the stand-in pretrain raises the same error every time. With a budget of 3
    it is tried twice (the retry after a 1 s backoff) and then failed, "the same error twice in a row",
    within seconds; its finetune is not run; the other trial finishes; the run says why as it happens,
    error.txt keeps the worker's traceback and node, and `status` shows it."""
    from orchestrator.cli.status import render_status, study_status

    compute = standins.tiny_compute(max_failures=3, retry_backoff_s=1.0)
    plan = standins.make_plan(
        "always",
        [
            ("t-bug", standins.pretrain_config(), standins.finetune_config(epochs=1)),
            ("t-ok", standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=1)),
        ],
        salt="always",
        compute=compute,
    )
    store, calls = Store(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    bad = plan.trials[0].pretrain
    t0 = time.time()
    summary = run_study(
        plan, store, study_text="name: always\n", workloads=standins.workloads(calls, fail_always="pretrain")
    )
    took = time.time() - t0

    assert summary["counts"] == {"failed": 1, "done": 1}, summary
    assert [c["kind"] for c in standins.read_calls(calls)].count("pretrain") == 2
    out = capsys.readouterr().out
    assert f"stage {bad} failed on " in out and "RuntimeError: stand-in pretrain: always fails" in out
    assert "retry 1/3 in 1 s" in out and "the same error twice in a row" in out
    text = store.read_error(bad)
    assert text.strip().splitlines()[-1] == "RuntimeError: stand-in pretrain: always fails"
    assert "node" in text.lower()
    rows = {r["stage_id"]: r for r in study_status(plan, store)}
    assert rows[bad]["detail"] == "failed: RuntimeError: stand-in pretrain: always fails"
    assert "failed: RuntimeError: stand-in pretrain: always fails" in render_status(list(rows.values()), plan)
    print(f"always-failing stage stopped after 2 attempts; study run {took:.1f} s")
