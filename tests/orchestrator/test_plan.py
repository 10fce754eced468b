"""The plan: every shipped study gives the matrix the paper describes, stages are content-addressed
(shared within and across studies, sensitive to what changes a result and to nothing else), trial ids
are stable, and the estimate counts shared work once."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

import orchestrator.plan as plan_mod
from orchestrator.plan import finetune_stage, make_plan, pretrain_stage, render_plan
from orchestrator.spec.inputs import DataSpec, SyntheticSpec, data_config
from orchestrator.spec.study import load_study
from workloads.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig

STUDIES = Path(__file__).resolve().parents[2] / "studies"
COCO = DataSpec(config=DataConfig(coco_root="/data/coco", detection_file="/data/coco/dets.json"))


@pytest.fixture
def paper_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "coco"))
    monkeypatch.setenv("HRNET_IMAGENET", str(tmp_path / "hrnet_w32-36af842e.pth"))
    monkeypatch.setenv("RESNET50_IMAGENET", str(tmp_path / "resnet50-19c8e357.pth"))


def plan_of(name: str, storage: str = "/tmp/hsjp-store"):
    study = load_study(STUDIES / f"{name}.yaml")
    return make_plan(study, data_config(study.data, storage))


def counts(plan) -> tuple[int, int, int, int]:
    pre = [s for s in plan.stages.values() if s.kind == "pretrain"]
    fin = [s for s in plan.stages.values() if s.kind == "finetune"]
    return len(plan.trials), len(pre), sum(s.work for s in pre), len(fin)


# trials, distinct pretrains, pretrains with work, finetunes
EXPECTED = {
    "smoke": (4, 3, 2, 4),  # scratch + N=2 + N=3 + freeze sharing the N=3 pretrain
    "pretraining": (6, 6, 2, 6),  # Table 1: 2 backbones × scratch / imagenet / hsjp N=6
    "lr_epochs": (5, 5, 5, 5),  # Table 2: 3 lr + 3 epochs, lr 1e-3 / 240 epochs in both → merged
    "ablation_n": (
        16,
        15,
        14,
        16,
    ),  # Table 3: N 2..8 × concat (14) + scratch 210 / 450 (one scratch pretrain)
    "freeze": (3, 1, 1, 3),  # Fig. 5: freeze 0..2 / 0..3 / 0..4 of one pretrain
    "label_fraction": (9, 1, 1, 9),  # Fig. 6: 10 % .. 90 % of one pretrain
    "paper": (36, 23, 19, 36),  # 40 requested; HSJP N=6 ×3 and scratch 210 ×2 merged
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_study_plans_the_paper_matrix(name, paper_env):
    plan = plan_of(name)
    assert counts(plan) == EXPECTED[name]
    for t in plan.trials:  # the DAG is closed: every trial's stages exist, finetunes point at their pretrain
        assert plan.stages[t.finetune].parent == t.pretrain and plan.stages[t.pretrain].kind == "pretrain"
    assert all(re.fullmatch(r"(pretrain|finetune)-[0-9a-f]{16}", sid) for sid in plan.stages)


def test_paper_shares_pretrains_across_studies(paper_env):
    plan = plan_of("paper")
    assert len({t.pretrain for t in plan.trials}) < len(plan.trials)
    sharing = plan.sharing()
    n6 = max(sharing, key=lambda sid: len(sharing[sid]))
    cfg = plan.stages[n6].config
    assert (cfg.method, cfg.n, cfg.model.backbone, cfg.concat_original, cfg.lr, cfg.epochs) == (
        "hsjp",
        6,
        "hrnet_w32",
        False,
        1e-3,
        240,
    )
    assert len(sharing[n6]) == 1 + 3 + 9  # Table 1-3's default finetune + Fig. 5 + Fig. 6
    assert sum(1 + len(t.aliases) for t in plan.trials) == 6 + 6 + 16 + 3 + 9
    n6_trial = next(t for t in plan.trials if t.pretrain == n6 and len(t.aliases) == 3)  # lr_epochs twice
    assert n6_trial.to_dict()["studies"] == ["ablation_n", "lr_epochs", "pretraining"]


def test_identical_pretrains_in_two_studies_are_one_stage(paper_env):
    def n6(plan):
        return {
            t.pretrain
            for t in plan.trials
            if plan.stages[t.pretrain].work
            and plan.stages[t.pretrain].config.n == 6
            and not plan.stages[t.pretrain].config.concat_original
            and plan.stages[t.pretrain].config.model.backbone == "hrnet_w32"
            and plan.stages[t.pretrain].config.lr == 1e-3
            and plan.stages[t.pretrain].config.epochs == 240
        }

    ids = [
        n6(plan_of(name)) for name in ("pretraining", "lr_epochs", "ablation_n", "freeze", "label_fraction")
    ]
    assert all(len(i) == 1 for i in ids) and len(set.union(*ids)) == 1
    scratch = [
        {
            sid
            for sid, st in plan_of(name).stages.items()
            if st.kind == "pretrain"
            and st.config.method == "scratch"
            and st.config.model.backbone == "hrnet_w32"
        }
        for name in ("pretraining", "ablation_n")
    ]
    assert len(scratch[0]) == 1 and scratch[0] == scratch[1]


def test_stage_ids_do_not_depend_on_store_path_or_loader_workers(paper_env):
    a, b = plan_of("smoke", "/tmp/store-a"), plan_of("smoke", "/tmp/store-b")
    assert a.stages.keys() == b.stages.keys() and a.data != b.data
    cfg = PretrainConfig()
    more_workers = DataSpec(config=dataclasses.replace(COCO.config, loader_workers=16))
    assert pretrain_stage(cfg, COCO).stage_id == pretrain_stage(cfg, more_workers).stage_id


def test_finetune_id_changes_with_its_parent_and_its_data():
    ft = FinetuneConfig()
    p1, p2 = pretrain_stage(PretrainConfig(n=4), COCO), pretrain_stage(PretrainConfig(n=5), COCO)
    assert finetune_stage(ft, COCO, p1.stage_id).stage_id != finetune_stage(ft, COCO, p2.stage_id).stage_id
    assert finetune_stage(ft, COCO, p1.stage_id).stage_id == finetune_stage(ft, COCO, p1.stage_id).stage_id
    other_dets = DataSpec(config=dataclasses.replace(COCO.config, detection_file="/other.json"))
    assert (
        finetune_stage(ft, COCO, p1.stage_id).stage_id != finetune_stage(ft, other_dets, p1.stage_id).stage_id
    )
    # a pretrain never reads the detection file: same stage
    assert (
        pretrain_stage(PretrainConfig(), COCO).stage_id
        == pretrain_stage(PretrainConfig(), other_dets).stage_id
    )
    capped = DataSpec(config=dataclasses.replace(COCO.config, max_train_instances=100))
    assert (
        pretrain_stage(PretrainConfig(), COCO).stage_id != pretrain_stage(PretrainConfig(), capped).stage_id
    )


def test_pretrain_id_tracks_config_and_data():
    base = pretrain_stage(PretrainConfig(), COCO).stage_id
    assert pretrain_stage(PretrainConfig(lr=3e-4), COCO).stage_id != base
    syn = DataSpec(config=DataConfig(), synthetic=SyntheticSpec())
    assert pretrain_stage(PretrainConfig(), syn).stage_id != base


def test_no_work_pretrains_are_keyed_by_method_model_checkpoint_only():
    a = pretrain_stage(PretrainConfig(method="scratch", n=3, seed=1, lr=5e-4), COCO)
    b = pretrain_stage(
        PretrainConfig(method="scratch"), DataSpec(config=DataConfig(), synthetic=SyntheticSpec())
    )
    assert a.stage_id == b.stage_id and not a.work and a.config == PretrainConfig(method="scratch")
    sb = pretrain_stage(
        PretrainConfig(method="scratch", model=ModelConfig(backbone="simplebaseline_r50")), COCO
    )
    assert sb.stage_id != a.stage_id
    i1 = pretrain_stage(PretrainConfig(method="imagenet", checkpoint="/w/a.pth"), COCO)
    i2 = pretrain_stage(PretrainConfig(method="imagenet", checkpoint="/w/b.pth"), COCO)
    assert i1.stage_id != i2.stage_id and i1.stage_id != a.stage_id


def test_lr_epochs_merges_the_shared_row(paper_env):
    plan = plan_of("lr_epochs")
    merged = [t for t in plan.trials if t.aliases]
    assert len(merged) == 1 and merged[0].params["pretrain.lr"] == 1e-3
    assert (
        merged[0].aliases[0]["origin"] == "include[1]"
        and merged[0].aliases[0]["params"]["pretrain.epochs"] == 240
    )
    assert merged[0].to_dict()["aliases"] == ["lr_epochs:include[1]"]
    assert sorted(
        (plan.stages[t.pretrain].config.lr, plan.stages[t.pretrain].config.epochs) for t in plan.trials
    ) == [(3e-4, 240), (1e-3, 120), (1e-3, 240), (1e-3, 480), (2e-3, 240)]


def test_trial_ids_are_unique_readable_and_stable(paper_env):
    a, b = plan_of("ablation_n"), plan_of("ablation_n")
    ids = [t.trial_id for t in a.trials]
    assert ids == [t.trial_id for t in b.trials] and len(set(ids)) == len(ids)
    assert ids[0] == "t000-n2-no_concat_original" and ids[1] == "t001-n2-concat_original"
    assert ids[-2:] == ["t014-scratch", "t015-scratch-ft_epochs450"]
    assert all(re.fullmatch(r"t\d{3}-[A-Za-z0-9_.-]+", i) for i in ids)
    assert plan_of("paper").trials[0].trial_id.startswith("t000-pretraining-")


def test_estimate_counts_shared_work_once(paper_env):
    plan = plan_of("freeze")
    est = plan.estimate()
    pre = next(s for s in plan.stages.values() if s.kind == "pretrain")
    h = est["stage_hours"]
    assert est["total_hours"] == pytest.approx(sum(h.values()), rel=1e-3)
    assert est["unshared_hours"] == pytest.approx(est["total_hours"] + 2 * h[pre.stage_id], rel=1e-3)
    assert est["saved_hours"] == pytest.approx(2 * h[pre.stage_id], rel=1e-3)
    assert est["unit"] == "GPU-hours"
    table1 = plan_of("pretraining").estimate()
    assert table1["saved_hours"] == 0 and all(
        table1["stage_hours"][t.pretrain] == 0
        for t in plan_of("pretraining").trials
        if "hsjp" not in t.trial_id
    )
    # paper scale: an HSJP N=6 HRNet pretrain is about a day, not minutes or weeks, of an H100 at the fp32
    # (TF32) target of 760 img/s: 262,465 persons × 240 epochs × (224² / 256·192) / 760 ≈ 23.5 h
    assert 15 < h[pre.stage_id] < 35


def test_estimate_scales_with_epochs_and_throughput():
    from orchestrator.spec.inputs import GPU_THROUGHPUT, ComputeConfig

    compute = ComputeConfig(use_gpu=True, throughput=dict(GPU_THROUGHPUT))
    s240 = pretrain_stage(PretrainConfig(eval_every=240), COCO)
    s480 = pretrain_stage(PretrainConfig(epochs=480, eval_every=480), COCO)
    start = plan_mod.STAGE_START_S / 3600
    h240 = plan_mod.stage_hours(s240, COCO, compute) - start
    h480 = plan_mod.stage_hours(s480, COCO, compute) - start
    assert h480 == pytest.approx(2 * h240, rel=0.01)
    faster = dataclasses.replace(
        compute, throughput={**GPU_THROUGHPUT, "hrnet_w32": 2 * GPU_THROUGHPUT["hrnet_w32"]}
    )
    assert plan_mod.stage_hours(s240, COCO, faster) - start == pytest.approx(h240 / 2, rel=1e-6)


def test_plan_json_round_trips_and_render_names_shared_pretrains(paper_env):
    plan = plan_of("freeze")
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["study"] == "freeze" and len(data["trials"]) == 3
    assert set(data["stages"]) == set(plan.stages) and data["data_identity"]["pretrain"][
        "coco_root"
    ].endswith("coco")
    assert "detection_file" not in data["data_identity"]["pretrain"]
    text = render_plan(plan)
    pre = next(iter(plan.sharing()))
    assert f"{pre}" in text and "← 3:" in text and "without sharing" in text


def test_plan_json_shows_the_lr_steps_each_stage_trains_with():
    long = finetune_stage(FinetuneConfig(epochs=450), COCO, "pretrain-x").to_dict()
    assert long["config"]["lr_steps"] == [170, 200]  # given for the official 210 epochs
    assert long["lr_schedule"] == {
        "epochs": 450,
        "lr_steps_used": [364, 429],
        "drop_from_epoch": [363, 428],
        "lrs": pytest.approx([1e-3, 1e-4, 1e-5]),
    }
    short = pretrain_stage(PretrainConfig(epochs=120), COCO).to_dict()
    assert short["lr_schedule"]["lr_steps_used"] == [95, 110] and short["lr_schedule"]["drop_from_epoch"] == [
        94,
        109,
    ]
    assert "lr_schedule" not in pretrain_stage(PretrainConfig(method="scratch"), COCO).to_dict()  # no work


def test_the_estimate_selects_on_gt_boxes_and_evaluates_the_detections_once():
    from orchestrator.spec.inputs import ComputeConfig

    compute = ComputeConfig(use_gpu=True, throughput={"hrnet_w32": 1000.0, "simplebaseline_r50": 1000.0})

    def eval_images(cfg: FinetuneConfig) -> float:  # the evaluated boxes of a stage, from its hours
        hours = plan_mod.stage_hours(finetune_stage(cfg, COCO, "p"), COCO, compute)
        train = plan_mod.COCO_TRAIN_KEYPOINT_PERSONS * cfg.total_epochs
        return ((hours * 3600 - plan_mod.STAGE_START_S) * 1000.0 - train) * plan_mod.EVAL_SPEEDUP / 2  # flip

    gt, dets = plan_mod.COCO_VAL_KEYPOINT_PERSONS, plan_mod.COCO_VAL_DETECTIONS
    assert eval_images(FinetuneConfig()) == pytest.approx(21 * gt + dets, rel=1e-3)  # 210 ep, every 10
    assert eval_images(FinetuneConfig(select_boxes="detections")) == pytest.approx(21 * dets, rel=1e-3)
    assert eval_images(FinetuneConfig(use_gt_boxes=True)) == pytest.approx(21 * gt, rel=1e-3)
