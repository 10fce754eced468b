"""Dry runs need no data: `plan` works with COCO_ROOT / checkpoint variables unset or absent and says
once what a real run needs; a real run's up-front checks name the missing test-split inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.spec.inputs import check_inputs, missing_inputs
from orchestrator.spec.study import load_study
from workloads.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
PAPER_STUDIES = ["pretraining", "lr_epochs", "ablation_n", "freeze", "label_fraction", "paper"]


@pytest.fixture
def no_inputs(monkeypatch):
    for name in ("COCO_ROOT", "HRNET_IMAGENET", "RESNET50_IMAGENET"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", PAPER_STUDIES)
def test_plan_of_every_paper_study_needs_no_env_var(name, no_inputs, tmp_path, capsys):
    assert (
        main(["plan", str(REPO / "studies" / f"{name}.yaml"), "--json", "--storage", str(tmp_path / "s")])
        == 0
    )
    out, err = capsys.readouterr()
    plan = json.loads(out)  # stdout stays JSON; the note goes to stderr, once
    assert plan["compute"]["workers_per_stage"] == 4
    assert err.count("note: a real run needs") == 1 and "${COCO_ROOT} is not set" in err
    assert not (tmp_path / "s").exists()


def test_plan_json_shows_both_official_recipes(no_inputs, capsys):
    assert main(["plan", str(REPO / "studies" / "pretraining.yaml"), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"].values()
    recipes = {
        (s["config"]["model"]["backbone"], s["config"]["aug"]["scale_factor"], s["config"]["aug"]["rotate_deg"],
         s["config"]["aug"]["half_body_prob"], s["config"]["epochs"], s["config"]["batch_size"])
        for s in stages if s["kind"] == "finetune"
    }  # fmt: skip
    assert recipes == {
        ("hrnet_w32", 0.35, 45.0, 0.3, 210, 32),
        ("simplebaseline_r50", 0.30, 40.0, 0.0, 140, 32),
    }
    assert {s["config"]["batch_size"] for s in stages if s["kind"] == "pretrain"} == {64}


def test_absent_paths_are_listed_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HRNET_IMAGENET", str(tmp_path / "hrnet.pth"))
    monkeypatch.delenv("RESNET50_IMAGENET", raising=False)
    study = load_study(REPO / "studies" / "pretraining.yaml", dry_run=True)
    missing = missing_inputs(study)
    assert any("nowhere" in m and "folder not found" in m for m in missing)
    assert any("hrnet.pth not found" in m for m in missing)
    assert any("${RESNET50_IMAGENET} is not set" in m for m in missing)


def test_a_real_load_still_refuses_unset_variables(no_inputs):
    with pytest.raises(ConfigError, match="COCO_ROOT is not set"):
        load_study(REPO / "studies" / "pretraining.yaml")


def _test_split_study(tmp_path: Path, root: Path, detections: str | None) -> Path:
    det = f"\n  test_detection_file: {detections}" if detections else ""
    path = tmp_path / "t.yaml"
    path.write_text(
        f"name: t\ndata:\n  coco_root: {root}{det}\ncompute: {{}}\n"
        "defaults:\n  finetune: {test_splits: [test-dev2017]}\n  pretrain: {method: scratch}\n"
    )
    return path


def _coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}.json").write_text("{}")
    return root


def test_a_test_split_without_its_image_info_exits_2_naming_the_path(tmp_path, capsys, monkeypatch):
    root = _coco_root(tmp_path)
    study = _test_split_study(tmp_path, root, str(tmp_path / "dets.json"))
    assert main(["run", str(study), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert f"{root}/annotations/image_info_test-dev2017.json" in err and "not found" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "store").exists()
    (root / "annotations" / "image_info_test-dev2017.json").write_text('{"images": []}')
    (root / "test2017").mkdir()
    with pytest.raises(RuntimeError, match="test_detection_file.*not found"):
        check_inputs(load_study(study))
    with pytest.raises(ConfigError, match="data.test_detection_file: not given"):
        check_inputs(load_study(_test_split_study(tmp_path, root, None)))


def test_recipe_defaults_follow_each_trials_backbone_and_given_values_win(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\ndata: {synthetic: {train: 4, val: 2}}\ncompute: {}\n"
        "defaults:\n  model: {backbone: hrnet_w32}\n  pretrain: {method: scratch}\n"
        "  finetune: {aug: {rotate_deg: 30.0}}\n"
        "matrix:\n  model.backbone: [hrnet_w32, simplebaseline_r50]\n"
    )
    by = {t.finetune.model.backbone: t.finetune for t in load_study(path).trials}
    assert (by["hrnet_w32"].aug.scale_factor, by["hrnet_w32"].aug.half_body_prob) == (0.35, 0.3)
    assert (by["simplebaseline_r50"].aug.scale_factor, by["simplebaseline_r50"].aug.half_body_prob) == (
        0.30,
        0.0,
    )
    assert by["hrnet_w32"].aug.rotate_deg == by["simplebaseline_r50"].aug.rotate_deg == 30.0  # given: kept
    assert (by["hrnet_w32"].epochs, by["simplebaseline_r50"].epochs) == (210, 140)
