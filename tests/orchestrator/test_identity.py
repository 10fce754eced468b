"""Stage identity is what changes the numbers and nothing else; stale stages are named, kept or recomputed.

Every leaf field of the stage configs is tried: a result-affecting field must change the stage id, an
execution switch (`workloads.config.EXECUTION`) must not. A field added later without a value in
`ALTERNATES` (when the generic rule cannot make one) fails here, so the choice is made, not forgotten.
The stale-stage tests run whole plans through the in-process fake runner (no Ray).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402
from fakes import FakeRunner, fake_fit  # noqa: E402

from orchestrator.cli.run import run_study  # noqa: E402
from orchestrator.cli.status import render_status, study_status  # noqa: E402
from orchestrator.plan import finetune_stage, make_plan, pretrain_stage  # noqa: E402
from orchestrator.schedule.lineage import archive_stale, find_stale, stale_of, stale_summary  # noqa: E402
from orchestrator.spec.inputs import DataSpec, SyntheticSpec, data_config  # noqa: E402
from orchestrator.spec.study import load_study  # noqa: E402
from orchestrator.store.store import Store  # noqa: E402
from workloads import WORKLOAD_VERSIONS  # noqa: E402
from workloads.config import (  # noqa: E402
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
    execution_dict,
    identity_dict,
)

REPO = HERE.parent.parent
COCO = DataSpec(config=DataConfig(coco_root="/coco", detection_file="/coco/dets.json"))

# Alternates the generic rule (`_alternate`) cannot make: the field path → a valid other value.
ALTERNATES: dict[str, Any] = {
    "method": "scratch",  # a no-work method: a stage of its own kind of identity, tested apart
    "model.backbone": "simplebaseline_r50",
    "n": 3,
    "input_size": 256,
    "heatmap_size": 64,
    "freeze": 2,
    "label_fraction": 0.5,
    "runtime.amp": "bf16",
    "runtime.channels_last": "on",
    "runtime.compile": "on",
    "runtime.compile_mode": "max-autotune",
    "augment_on": "device",
    "decode_on": "device",
    "test_splits": ("test-dev2017",),
    "checkpoint": "/weights/imagenet.pth",
    "input_hw": (384, 288),
    "heatmap_hw": (96, 72),
    "aug.blur_sigma": (0.2, 1.0),
    "lr_steps": (100,),
    "model.num_modules": (1, 2, 3),
    "model.resnet_layers": (3, 4, 23, 3),
    "train_split": "train2014",
    "val_split": "minival2014",
    "select_boxes": "detections",
}


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f))
    return out


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, path: str, value: Any) -> Any:
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _set(getattr(cfg, head), rest, value)})


def _alternate(path: str, value: Any) -> Any:
    if path in ALTERNATES:
        return ALTERNATES[path]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.5
    if value is None:
        return 5
    if isinstance(value, str):
        return value + "-other"
    raise AssertionError(f"{path} = {value!r}: give it an alternate value in ALTERNATES")


def _is_identity(f: dataclasses.Field) -> bool:
    return "identity" not in f.metadata


@pytest.mark.parametrize("path,field", _leaves(PretrainConfig), ids=lambda x: x if isinstance(x, str) else "")
def test_a_pretrain_field_changes_the_id_exactly_when_it_changes_the_numbers(path, field):
    base = PretrainConfig()
    if path == "method":  # scratch / imagenet pretrains: keyed by (method, model, checkpoint) only
        assert (
            pretrain_stage(_set(base, path, "scratch"), COCO).stage_id != pretrain_stage(base, COCO).stage_id
        )
        return
    other = _set(base, path, _alternate(path, _get(base, path)))
    changed = pretrain_stage(other, COCO).stage_id != pretrain_stage(base, COCO).stage_id
    assert changed == _is_identity(field), (
        f"pretrain.{path}: the stage id {'changed' if changed else 'did not change'}, but the field is "
        f"{'a result-affecting field' if _is_identity(field) else 'an execution switch'}"
    )


@pytest.mark.parametrize("path,field", _leaves(FinetuneConfig), ids=lambda x: x if isinstance(x, str) else "")
def test_a_finetune_field_changes_the_id_exactly_when_it_changes_the_numbers(path, field):
    base = FinetuneConfig()
    value = _alternate(path, _get(base, path))
    if path == "model.backbone":  # another backbone's recipe: build it anew (see FinetuneConfig)
        other = FinetuneConfig(model=dataclasses.replace(base.model, backbone=value))
    else:
        other = _set(base, path, value)
    changed = (
        finetune_stage(other, COCO, "pretrain-x").stage_id
        != finetune_stage(base, COCO, "pretrain-x").stage_id
    )
    assert changed == _is_identity(field), (
        f"finetune.{path}: the stage id {'changed' if changed else 'did not change'}, but the field is "
        f"{'a result-affecting field' if _is_identity(field) else 'an execution switch or a child-stage field'}"
    )


@pytest.mark.parametrize("path,field", _leaves(DataConfig), ids=lambda x: x if isinstance(x, str) else "")
def test_a_data_field_changes_the_finetune_id_exactly_when_it_changes_its_numbers(path, field):
    other = DataSpec(config=_set(COCO.config, path, _alternate(path, _get(COCO.config, path))))
    changed = (
        finetune_stage(FinetuneConfig(), other, "p").stage_id
        != finetune_stage(FinetuneConfig(), COCO, "p").stage_id
    )
    assert changed == _is_identity(field), f"data.{path}: the finetune id changed = {changed}"


def test_a_pretrain_does_not_hash_the_detection_files_it_never_reads():
    other = DataSpec(config=dataclasses.replace(COCO.config, detection_file="/other.json"))
    assert pretrain_stage(PretrainConfig(), other).stage_id == pretrain_stage(PretrainConfig(), COCO).stage_id


def test_the_workload_version_is_recorded_not_hashed(monkeypatch):
    base = pretrain_stage(PretrainConfig(), COCO).stage_id
    monkeypatch.setitem(WORKLOAD_VERSIONS, "hsjp", "999")
    assert pretrain_stage(PretrainConfig(), COCO).stage_id == base


def test_identity_and_execution_split_the_config_between_them():
    cfg = FinetuneConfig()
    ident, execution = identity_dict(cfg), execution_dict(cfg)
    assert set(execution) == {"runtime.channels_last", "runtime.compile", "runtime.compile_mode"}
    assert "compile" not in ident["runtime"] and ident["runtime"]["amp"] == "off"
    assert "test_splits" not in ident and "test_splits" not in execution  # a child-stage field
    assert set(execution_dict(DataConfig())) == {"loader_workers", "decode_on"}
    assert set(execution_dict(PretrainConfig())) == {
        "augment_on",
        "runtime.channels_last",
        "runtime.compile",
        "runtime.compile_mode",
    }


def _replace_all(study, **runtime: Any):
    def cfg(c):
        c = dataclasses.replace(c, runtime=dataclasses.replace(c.runtime, **runtime))
        return dataclasses.replace(c, augment_on="loader") if isinstance(c, PretrainConfig) else c

    trials = tuple(
        dataclasses.replace(t, pretrain=cfg(t.pretrain), finetune=cfg(t.finetune)) for t in study.trials
    )
    data = dataclasses.replace(study.data.config, loader_workers=7, decode_on="device")
    return dataclasses.replace(study, trials=trials, data=dataclasses.replace(study.data, config=data))


def test_toggling_compile_and_the_other_switches_keeps_every_stage_id_of_paper_yaml():
    study = load_study(REPO / "studies" / "paper.yaml", dry_run=True)
    data = data_config(study.data, "/store")
    before = make_plan(study, data)
    after = make_plan(
        _replace_all(study, compile="on", channels_last="off", compile_mode="max-autotune"), data
    )
    assert len(before.stages) > 50
    assert list(after.stages) == list(before.stages)
    assert [t.finetune for t in after.trials] == [t.finetune for t in before.trials]


# --------------------------------------------------------------------------------------- staleness
def _chain_plan(salt: str):
    return standins.make_plan(
        "chain",
        [
            ("a", standins.pretrain_config(), standins.finetune_config()),
            ("b", standins.pretrain_config(), standins.finetune_config(lr=0.01)),
            ("scratch", standins.pretrain_config(method="scratch"), standins.finetune_config()),
        ],
        salt=salt,
    )


def _run(plan, store, calls=None):
    runner = FakeRunner({"CPU": 2.0}, fit=fake_fit(calls=calls))
    return run_study(plan, store, study_text="name: chain\n", progress=False, runner=runner)


def test_each_result_records_the_workload_versions_it_was_made_with_and_its_execution_switches(tmp_path):
    plan, store = _chain_plan("rec"), Store(tmp_path / "store")
    _run(plan, store)
    a, scratch = plan.trials[0], plan.trials[2]
    assert store.read_result(a.pretrain)["workload_versions"] == {"hsjp": "2"}
    assert store.read_result(a.finetune)["workload_versions"] == {"hsjp": "2", "pose": "2"}
    assert store.read_result(scratch.pretrain)["workload_versions"] == {}  # nothing was computed
    assert store.read_result(scratch.finetune)["workload_versions"] == {"pose": "2"}
    execution = store.read_result(a.finetune)["execution"]
    assert execution["runtime.compile"] == "auto" and execution["data.loader_workers"] == 2


def test_a_store_of_an_older_hsjp_version_names_its_stale_stages_and_keeps_them(tmp_path, monkeypatch):
    plan, store = _chain_plan("old"), Store(tmp_path / "store")
    _run(plan, store)
    monkeypatch.setitem(WORKLOAD_VERSIONS, "hsjp", "3")  # the code moved on: hsjp numerics changed
    stale = find_stale(plan, store)
    hsjp_made = {plan.trials[0].pretrain, plan.trials[0].finetune, plan.trials[1].finetune}
    assert set(stale) == hsjp_made  # the pretrain and the two finetunes made from it; not scratch's
    assert all(s == {"hsjp": ("2", "3")} for s in stale.values())
    line = stale_summary(stale)
    assert line == (
        "3 stages from workload hsjp 2, current 3: kept (reused as they are); "
        "`hsjp-study run --recompute-stale` recomputes them"
    )
    rows = study_status(plan, store)
    text = render_status(rows, plan)
    assert line in text and text.count("stale: made by workload hsjp 2 (current 3)") == 3
    calls: list[str] = []
    again = _run(plan, store, calls)  # kept: nothing recomputed
    assert calls == [] and again["ran"] == 0


def test_recompute_stale_moves_the_old_results_aside_and_computes_them_again(tmp_path, monkeypatch):
    plan, store = _chain_plan("redo"), Store(tmp_path / "store")
    _run(plan, store)
    monkeypatch.setitem(WORKLOAD_VERSIONS, "pose", "3")  # only the finetunes are stale
    stale = find_stale(plan, store)
    assert set(stale) == {t.finetune for t in plan.trials}
    moved = archive_stale(store, sorted(stale))
    assert len(moved) == 3 and all(Path(m, "result.json").is_file() for m in moved)  # nothing lost
    calls: list[str] = []
    _run(plan, store, calls)
    assert sorted(calls) == sorted(stale)
    assert find_stale(plan, store) == {}
    assert store.read_result(plan.trials[0].finetune)["workload_versions"] == {"hsjp": "2", "pose": "3"}


def test_a_result_of_the_earlier_recipe_reads_as_that_version_of_each_workload(monkeypatch):
    legacy = {
        "kind": "finetune",
        "work": True,
        "config": {"init": {"method": "hsjp"}},
        "provenance": {"workload_version": "1"},
    }
    assert stale_of(legacy) == {"hsjp": ("1", "2"), "pose": ("1", "2")}
    scratch_ft = {**legacy, "config": {"init": {"method": "scratch"}}}
    assert stale_of(scratch_ft) == {"pose": ("1", "2")}
    assert stale_of({"kind": "pretrain", "work": False, "provenance": {"workload_version": "1"}}) == {}


def test_status_and_plan_of_the_cli_name_stale_stages(tmp_path, monkeypatch, capsys):
    from orchestrator.cli.main import main

    study = tmp_path / "s.yaml"
    study.write_text(standins.SMALL_STUDY + "name: small\n")
    loaded = load_study(study)
    store = Store(tmp_path / "store")
    plan = make_plan(loaded, data_config(loaded.data, store.base))
    _run(plan, store)
    monkeypatch.setitem(WORKLOAD_VERSIONS, "hsjp", "3")
    assert main(["status", str(study), "--storage", store.base]) == 0
    out = capsys.readouterr().out
    assert "2 stages from workload hsjp 2, current 3: kept" in out
    assert main(["plan", str(study), "--storage", store.base, "--json"]) == 0
    captured = capsys.readouterr()
    assert "2 stages from workload hsjp 2, current 3" in captured.err and captured.out.lstrip().startswith(
        "{"
    )


def test_synthetic_data_is_hashed_by_its_generator_not_its_store_path():
    spec = DataSpec(config=DataConfig(), synthetic=SyntheticSpec())
    a = dataclasses.replace(spec.config, coco_root="/store-a/data")
    b = dataclasses.replace(spec.config, coco_root="/store-b/data")
    ids = {pretrain_stage(PretrainConfig(), dataclasses.replace(spec, config=c)).stage_id for c in (a, b)}
    assert len(ids) == 1


def test_run_says_what_it_keeps_and_with_recompute_stale_moves_it_aside(tmp_path, monkeypatch, capsys):
    from orchestrator.cli.main import _say_stale

    plan, store = _chain_plan("say"), Store(tmp_path / "store")
    _run(plan, store)
    monkeypatch.setitem(WORKLOAD_VERSIONS, "pose", "3")
    _say_stale(plan, store, recompute=False)
    assert "3 stages from workload pose 2, current 3: kept (reused as they are)" in capsys.readouterr().out
    assert len(find_stale(plan, store)) == 3  # kept
    _say_stale(plan, store, recompute=True)
    out = capsys.readouterr().out
    assert (
        "3 stages from workload pose 2, current 3: recomputed (the old results are moved under stale/" in out
    )
    assert find_stale(plan, store) == {} and len(list((tmp_path / "store" / "stale").iterdir())) == 3
    assert all(store.read_result(t.finetune) is None for t in plan.trials)  # the run computes them again


def test_stale_stages_move_aside_on_an_object_store_too(s3_server, monkeypatch):
    import time

    plan, store = _chain_plan("s3"), Store(s3_server.uri(f"stale-{time.time_ns()}"))
    _run(plan, store)
    monkeypatch.setitem(WORKLOAD_VERSIONS, "hsjp", "3")
    stale = sorted(find_stale(plan, store))
    moved = archive_stale(store, stale)
    assert find_stale(plan, store) == {} and all(store.read_result(s) is None for s in stale)
    assert all(store.read_json(f"{m}/result.json")["stage_id"] in stale for m in moved)
