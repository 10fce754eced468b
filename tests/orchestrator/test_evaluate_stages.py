"""Evaluation-only stages: `finetune.test_splits` adds one `evaluate` stage per finetune and split, a
child of the finetune, and changes no pretrain or finetune (the plans are compared with each other,
not with recorded ids); the scheduler runs it after its finetune, reading the finetune's weights, finds
it in the store on a rerun and blocks it when the finetune fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.cli.run import run_study
from orchestrator.plan import evaluation_stage, finetune_stage, make_plan, pretrain_stage, stage_request
from orchestrator.spec.inputs import DataSpec
from orchestrator.spec.study import load_study
from orchestrator.store.format import StageState
from orchestrator.store.store import Store
from tests.orchestrator.fakes import FakeRunner, fake_fit
from workloads.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig

STUDIES = Path(__file__).resolve().parents[2] / "studies"
TEST_DETS = "${COCO_ROOT}/person_detection_results/COCO_test-dev2017_detections_AP_H_609_person.json"


@pytest.fixture
def studies(monkeypatch, tmp_path) -> Path:
    """A copy of studies/ (pretraining.yaml edited by the tests), with the paper's variables set."""
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "coco"))
    monkeypatch.setenv("HRNET_IMAGENET", str(tmp_path / "hrnet_w32-36af842e.pth"))
    monkeypatch.setenv("RESNET50_IMAGENET", str(tmp_path / "resnet50-19c8e357.pth"))
    return Path(shutil.copytree(STUDIES, tmp_path / "studies"))


def add_test_dev(path: Path) -> None:
    """Table 1's test-dev opt-in: finetune.test_splits and data.test_detection_file."""
    text = path.read_text()
    text = text.replace(
        "  loader_workers: 8\n", f'  loader_workers: 8\n  test_detection_file: "{TEST_DETS}"\n', 1
    )
    text = text.replace("  finetune: {}  ", "  finetune: {test_splits: [test-dev2017]}  ", 1)
    assert "test_splits" in text and "test_detection_file" in text, "pretraining.yaml changed shape"
    path.write_text(text)


def plan_json(path: Path, capsys) -> dict:
    assert main(["plan", str(path), "--json", "--storage", str(path.parent / "store")]) == 0
    return json.loads(capsys.readouterr().out)


def by_kind(plan: dict, kind: str) -> dict[str, dict]:
    return {sid: s for sid, s in plan["stages"].items() if s["kind"] == kind}


def test_test_splits_add_six_evaluate_stages_and_change_no_finetune_id(studies, capsys):
    before = plan_json(studies / "pretraining.yaml", capsys)
    add_test_dev(studies / "pretraining.yaml")
    after = plan_json(studies / "pretraining.yaml", capsys)
    for kind in ("pretrain", "finetune"):
        assert by_kind(after, kind).keys() == by_kind(before, kind).keys()
        assert by_kind(after, kind) == by_kind(before, kind)  # the configs too: nothing to retrain
    evaluations = by_kind(after, "evaluate")
    assert not by_kind(before, "evaluate")
    assert len(evaluations) == 6 and len(after["stages"]) == len(before["stages"]) + 6
    finetunes = by_kind(after, "finetune")
    assert sorted(e["parent"] for e in evaluations.values()) == sorted(finetunes)  # one per finetune
    for e in evaluations.values():
        assert (
            e["config"]["split"] == "test-dev2017"
            and e["config"]["finetune"] == finetunes[e["parent"]]["config"]
        )
        assert e["config"]["detection_file"].endswith("COCO_test-dev2017_detections_AP_H_609_person.json")
        assert "_" not in e["config"]["alg"]
    assert [t["finetune"] for t in after["trials"]] == [t["finetune"] for t in before["trials"]]
    assert all(len(t["evaluations"]) == 1 for t in after["trials"])
    assert after["estimate"]["evaluate_hours"] > 0 and before["estimate"]["evaluate_hours"] == 0


def test_paper_yaml_merges_a_part_with_test_splits(studies, capsys):
    before = plan_json(studies / "paper.yaml", capsys)
    add_test_dev(studies / "pretraining.yaml")
    after = plan_json(studies / "paper.yaml", capsys)  # used to refuse: "studies disagree on `data`"
    assert by_kind(after, "finetune") == by_kind(before, "finetune")
    assert by_kind(after, "pretrain") == by_kind(before, "pretrain")
    assert len(by_kind(after, "evaluate")) == 6
    assert after["data"]["test_detection_file"].endswith("AP_H_609_person.json")


def test_two_parts_with_different_test_detection_files_disagree(studies):
    from workloads.config import ConfigError

    add_test_dev(studies / "pretraining.yaml")
    other = studies / "freeze.yaml"
    text = other.read_text()
    assert "data:\n" in text
    other.write_text(text.replace("data:\n", 'data:\n  test_detection_file: "/elsewhere/dets.json"\n', 1))
    with pytest.raises(ConfigError, match="disagree on `data.test_detection_file`"):
        load_study(studies / "paper.yaml")


# ------------------------------------------------------------------------------------------ ids
TINY = ModelConfig(backbone="hrnet_w32", width=8, num_blocks=1, num_modules=(1, 1, 1))


def _coco(test_dets: str | None) -> DataSpec:
    return DataSpec(config=DataConfig(coco_root="/data/coco", detection_file="/data/coco/dets.json",
                                      test_detection_file=test_dets))  # fmt: skip


def test_evaluate_id_follows_its_finetune_split_detections_and_settings():
    pre = pretrain_stage(PretrainConfig(model=TINY), _coco(None))
    cfg = FinetuneConfig(model=TINY, test_splits=("test-dev2017",))
    fin = finetune_stage(cfg, _coco("/d/a.json"), pre.stage_id)
    assert fin.stage_id == finetune_stage(FinetuneConfig(model=TINY), _coco(None), pre.stage_id).stage_id
    assert fin.config.test_splits == ()
    a = evaluation_stage(fin, "test-dev2017", _coco("/d/a.json"), "hsjp")
    assert a.stage_id.startswith("evaluate-") and a.parent == fin.stage_id
    assert a.stage_id == evaluation_stage(fin, "test-dev2017", _coco("/d/a.json"), "hsjp").stage_id
    other_dets = evaluation_stage(fin, "test-dev2017", _coco("/d/b.json"), "hsjp")
    other_split = evaluation_stage(fin, "test-challenge2017", _coco("/d/a.json"), "hsjp")
    no_flip = finetune_stage(FinetuneConfig(model=TINY, flip_test=False), _coco(None), pre.stage_id)
    ids = {a.stage_id, other_dets.stage_id, other_split.stage_id,
           evaluation_stage(no_flip, "test-dev2017", _coco("/d/a.json"), "hsjp").stage_id}  # fmt: skip
    assert len(ids) == 4


# ------------------------------------------------------------------------------------ scheduling
SMALL = """
name: evalstudy
data: {coco_root: /data/coco, detection_file: /data/coco/dets.json, test_detection_file: /data/coco/td.json}
compute: {workers_per_stage: 2, use_gpu: true, gpus_per_worker: 1, cpus_per_worker: 2}
defaults:
  model: {backbone: hrnet_w32, width: 8, num_blocks: 1, num_modules: [1, 1, 1]}
  pretrain: {input_size: 64, heatmap_size: 16, epochs: 2}
  finetune: {input_hw: [128, 96], heatmap_hw: [32, 24], epochs: 2, test_splits: [test-dev2017]}
matrix:
  pretrain.method: [scratch, hsjp]
"""


@pytest.fixture
def small_plan(tmp_path):
    path = tmp_path / "evalstudy.yaml"
    path.write_text(SMALL)
    study = load_study(path, dry_run=True)
    return make_plan(study, study.data.config), SMALL


def _evaluations(plan) -> dict[str, str]:
    """evaluate stage id → its finetune id."""
    return {sid: s.parent for sid, s in plan.stages.items() if s.kind == "evaluate"}


def test_an_evaluate_stage_asks_for_one_worker(small_plan):
    plan, _ = small_plan
    ev = next(s for s in plan.stages.values() if s.kind == "evaluate")
    fin = plan.stages[ev.parent]
    assert stage_request(plan.compute, fin.kind).total == {"CPU": 4.0, "GPU": 2.0}
    assert stage_request(plan.compute, ev.kind).total == {"CPU": 2.0, "GPU": 1.0}


def test_evaluate_runs_after_its_finetune_reading_its_weights_and_is_found_on_a_rerun(small_plan, tmp_path):
    plan, text = small_plan
    store = Store(tmp_path / "store")
    seen: dict[str, bool] = {}
    calls: list[str] = []
    inner = fake_fit(calls=calls)

    def fit(plan_, spec, store_, workload, parent_has_weights):
        if spec.kind == "finetune":  # a finetune's fake result hands over weights
            store_.save_weights(spec.stage_id, {"w": __import__("torch").zeros(1)})
        if spec.kind == "evaluate":
            seen[spec.stage_id] = parent_has_weights and store_.load_weights(spec.parent) is not None
        inner(plan_, spec, store_, workload, parent_has_weights)

    runner = FakeRunner({"CPU": 8.0, "GPU": 4.0}, fit=fit)
    summary = run_study(plan, store, study_text=text, progress=False, runner=runner)
    evals = _evaluations(plan)
    assert len(evals) == 2 and summary["counts"] == {StageState.DONE: 2}
    order = [sid for _, sid in runner.launched]
    for ev, fin in evals.items():
        assert order.index(fin) < order.index(ev)
        assert seen[ev] is True
        result = store.read_result(ev)
        assert (
            result["status"] == StageState.DONE and result["parent"] == fin and result["kind"] == "evaluate"
        )
        assert result["config"]["init"]["method"] in ("scratch", "hsjp")
        assert result["device_hours"] == pytest.approx(result["wall_seconds"] / 3600.0)  # one worker

    calls.clear()
    rerun = FakeRunner({"CPU": 8.0, "GPU": 4.0}, fit=fit)
    run_study(plan, store, study_text=text, progress=False, runner=rerun)
    assert calls == [] and rerun.launched == []  # everything found: nothing recomputed


def test_a_failed_finetune_blocks_its_evaluate_stage(small_plan, tmp_path, monkeypatch):
    from orchestrator.cli import run as execution

    plan, text = small_plan
    store = Store(tmp_path / "store")
    evals = _evaluations(plan)
    failing = next(iter(evals.values()))
    events: list[dict] = []

    class Recording(execution.StageScheduler):  # the scheduler's own events, as the progress lines get them
        def _emit(self, run, state, **extra):
            events.append({"stage_id": run.spec.stage_id, "state": state, **extra})
            super()._emit(run, state, **extra)

    monkeypatch.setattr(execution, "StageScheduler", Recording)
    runner = FakeRunner({"CPU": 8.0, "GPU": 4.0}, fit=fake_fit(fail={failing}))
    summary = run_study(plan, store, study_text=text, progress=False, runner=runner)
    blocked = next(ev for ev, fin in evals.items() if fin == failing)
    assert store.read_result(blocked) is None
    assert all(sid != blocked for _, sid in runner.launched)
    line = next(e for e in events if e["stage_id"] == blocked and e["state"] == StageState.BLOCKED)
    assert line["reason"] == f"its finetune {failing} failed"
    other = next(ev for ev, fin in evals.items() if fin != failing)
    assert store.read_result(other)["status"] == StageState.DONE
    row = next(t for t in summary["trials"] if t["finetune"] == failing)
    assert row["evaluations"] == {blocked: StageState.BLOCKED}


def test_a_failed_evaluate_stage_is_a_failure_of_the_run(small_plan, tmp_path):
    plan, text = small_plan
    store = Store(tmp_path / "store")
    ev, fin = next(iter(_evaluations(plan).items()))
    summary = run_study(
        plan, store, study_text=text, progress=False,
        runner=FakeRunner({"CPU": 8.0, "GPU": 4.0}, fit=fake_fit(fail={ev})),
    )  # fmt: skip
    assert store.read_result(fin)["status"] == StageState.DONE and store.read_result(ev) is None
    row = next(t for t in summary["trials"] if t["finetune"] == fin)
    assert row["status"] == StageState.DONE and row["evaluations"] == {ev: StageState.FAILED}
    (failure,) = summary["failures"]
    assert failure["stage_id"] == ev and f"injected failure in {ev}" in failure["error"]


def test_a_collapsed_finetune_skips_its_evaluate_stage(small_plan, tmp_path):
    plan, text = small_plan
    store = Store(tmp_path / "store")
    evals = _evaluations(plan)
    collapsing = next(iter(evals.values()))
    runner = FakeRunner({"CPU": 8.0, "GPU": 4.0}, fit=fake_fit(outcomes={collapsing: {"collapsed": True}}))
    run_study(plan, store, study_text=text, progress=False, runner=runner)
    skipped = next(ev for ev, fin in evals.items() if fin == collapsing)
    result = store.read_result(skipped)
    assert result["status"] == StageState.SKIPPED and result["reason"] == "finetune collapsed"
    assert all(sid != skipped for _, sid in runner.launched)


# --------------------------------------------------------------------------------------- through Ray
# local_ray: tests/orchestrator/conftest.py
@pytest.mark.slow
def test_an_evaluate_stage_runs_on_ray_on_one_worker_from_its_finetune_weights(local_ray, tmp_path):
    import dataclasses
    import hashlib

    from tests.orchestrator import standins

    plan = standins.make_plan(
        "evaluate",
        [("t-scratch", standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=1))],
        salt="evaluate",
        compute=standins.tiny_compute(workers_per_stage=2),  # the finetune: DDP over 2 workers
    )
    trial = plan.trials[0]
    data = DataSpec(config=DataConfig(coco_root="/nonexistent-standin", test_detection_file="/d/td.json"))
    ev = evaluation_stage(plan.stages[trial.finetune], "test-dev2017", data, "scratch")
    plan = dataclasses.replace(
        plan,
        stages={**plan.stages, ev.stage_id: ev},
        trials=[dataclasses.replace(trial, evaluations=(ev.stage_id,))],
    )
    store, calls = Store(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    summary = run_study(plan, store, study_text="name: evaluate\n", workloads=standins.workloads(calls))

    assert summary["failures"] == [] and summary["trials"][0]["evaluations"] == {ev.stage_id: "done"}
    result = store.read_result(ev.stage_id)
    assert result["kind"] == "evaluate" and result["parent"] == trial.finetune and not result["has_weights"]
    name = f"person_keypoints_test-dev2017_{ev.config.alg}_results.json"
    (written,) = json.loads(store.read_bytes(store.stage_path(ev.stage_id, name)))
    weights = store.load_weights(trial.finetune)
    digest = hashlib.sha1(b"".join(v.numpy().tobytes() for _, v in sorted(weights.items()))).hexdigest()
    assert written == {"weights_sha1": digest, "world_size": 1}  # the finetune's best weights, one worker
    assert store.exists(store.stage_path(ev.stage_id, name.replace(".json", ".zip")))
    assert [c["kind"] for c in standins.read_calls(calls)] == ["finetune", "evaluate"]

    again = run_study(plan, store, study_text="name: evaluate\n", workloads=standins.workloads(calls))
    assert again["ran"] == 0 and len(standins.read_calls(calls)) == 2  # found in the store
