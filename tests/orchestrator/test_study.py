"""Study loading: every shipped study loads, the matrix / include / seeds semantics, ${ENV} expansion,
synthetic data preparation, and one documented ConfigError per kind of bad input (naming file, key and
value, writing nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.spec.inputs import check_inputs, data_config, prepare_data
from orchestrator.spec.study import load_study
from orchestrator.store.store import Store
from tests.orchestrator.standins import SMALL_STUDY as SMALL
from workloads.config import ConfigError

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SHIPPED = sorted(p.name for p in STUDIES.glob("*.yaml"))


@pytest.fixture
def paper_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "coco"))
    monkeypatch.setenv("HRNET_IMAGENET", str(tmp_path / "hrnet_w32-36af842e.pth"))
    monkeypatch.setenv("RESNET50_IMAGENET", str(tmp_path / "resnet50-19c8e357.pth"))
    return tmp_path


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ shipped files
def test_every_study_file_is_shipped():
    assert {
        "smoke.yaml",
        "pretraining.yaml",
        "lr_epochs.yaml",
        "ablation_n.yaml",
        "freeze.yaml",
        "label_fraction.yaml",
        "paper.yaml",
    } <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_study_loads_and_validates(name, paper_env):  # its configs check themselves when made
    study = load_study(STUDIES / name)
    assert study.name == Path(name).stem
    assert study.trials, name
    for t in study.trials:
        assert t.pretrain.model == t.finetune.model


def test_paper_studies_use_gpu_coco_and_hrnet_defaults(paper_env):
    for name in ("pretraining", "lr_epochs", "ablation_n", "freeze", "label_fraction"):
        s = load_study(STUDIES / f"{name}.yaml")
        assert s.compute.use_gpu and s.data.synthetic is None
        assert s.data.config.coco_root == str(paper_env / "coco")
        assert s.data.config.detection_file.endswith("COCO_val2017_detections_AP_H_56_person.json")
    s = load_study(STUDIES / "freeze.yaml")
    assert [t.finetune.freeze for t in s.trials] == [2, 3, 4]
    assert all(
        t.pretrain.n == 6 and t.pretrain.epochs == 240 and t.finetune.total_epochs == 210 for t in s.trials
    )
    fractions = [t.finetune.label_fraction for t in load_study(STUDIES / "label_fraction.yaml").trials]
    assert fractions == pytest.approx([0.1 * i for i in range(1, 10)])


def test_pretraining_imagenet_checkpoints_per_backbone(paper_env):
    s = load_study(STUDIES / "pretraining.yaml")
    ckpt = {
        t.pretrain.model.backbone: t.pretrain.checkpoint for t in s.trials if t.pretrain.method == "imagenet"
    }
    assert ckpt == {
        "hrnet_w32": os.environ["HRNET_IMAGENET"],
        "simplebaseline_r50": os.environ["RESNET50_IMAGENET"],
    }
    assert {
        t.finetune.total_epochs for t in s.trials if t.finetune.model.backbone == "simplebaseline_r50"
    } == {140}


def test_smoke_study_is_small_cpu_synthetic():
    s = load_study(STUDIES / "smoke.yaml")
    assert not s.compute.use_gpu and s.data.synthetic is not None and s.data.config.loader_workers == 0
    assert len(s.trials) <= 5
    # small enough for ~3 minutes on 2 cores: a width-8 HRNet, at most 24 pretext epochs (where N=2
    # solves ~90 % of its puzzles) and 20 finetune epochs
    assert all(
        t.pretrain.model.width == 8 and t.pretrain.epochs <= 24 and t.finetune.total_epochs <= 20
        for t in s.trials
    )


def test_merged_study_keeps_parts_and_their_text(paper_env):
    s = load_study(STUDIES / "paper.yaml")
    assert s.parts == ("pretraining", "lr_epochs", "ablation_n", "freeze", "label_fraction")
    assert {t.study for t in s.trials} == set(s.parts)
    assert s.text.count("\n---\n") == 5 and "Table 3" in s.text


# ------------------------------------------------------------------------------------ semantics
def test_matrix_is_a_cartesian_product_and_include_applies_over_defaults(tmp_path):
    s = load_study(
        write(
            tmp_path,
            SMALL
            + """
matrix: {pretrain.n: [2, 3], pretrain.concat_original: [false, true]}
include:
  - {pretrain.method: scratch, finetune.epochs: 5}
""",
        )
    )
    combos = [(t.pretrain.n, t.pretrain.concat_original) for t in s.trials[:4]]
    assert combos == [(2, False), (2, True), (3, False), (3, True)]
    scratch = s.trials[4]
    assert scratch.pretrain.method == "scratch" and scratch.finetune.epochs == 5 and scratch.pretrain.n == 6
    assert scratch.params == {"pretrain.method": "scratch", "finetune.epochs": 5, "seed": 0}
    assert scratch.origin == "include[0]"


def test_model_key_sets_both_stages_and_seeds_axis_sets_both_seeds(tmp_path):
    s = load_study(
        write(
            tmp_path,
            SMALL
            + """
matrix: {model.width: [8, 16]}
seeds: [0, 7]
""",
        )
    )
    assert [
        (t.pretrain.model.width, t.finetune.model.width, t.pretrain.seed, t.finetune.seed) for t in s.trials
    ] == [(8, 8, 0, 0), (8, 8, 7, 7), (16, 16, 0, 0), (16, 16, 7, 7)]
    assert s.trials[1].params == {"model.width": 8, "seed": 7}


def test_no_matrix_gives_the_defaults_trial(tmp_path):
    s = load_study(write(tmp_path, SMALL))
    assert len(s.trials) == 1 and s.trials[0].origin == "defaults" and s.trials[0].params == {"seed": 0}


def test_section_value_merges_over_the_study_defaults(tmp_path):
    s = load_study(
        write(
            tmp_path,
            SMALL.replace("epochs: 2}", "epochs: 2, aug: {rotate_deg: 10.0}}", 1)
            + """
matrix: {pretrain.aug: [{scale: 0.2}]}
""",
        )
    )
    aug = s.trials[0].pretrain.aug
    assert aug.scale == 0.2 and aug.rotate_deg == 10.0


def test_env_expansion_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HSJP_TEST_ROOT", "/data/coco")
    s = load_study(
        write(
            tmp_path,
            """
data: {coco_root: "${HSJP_TEST_ROOT}", detection_file: "dets/boxes.json"}
include:
  - {pretrain.method: imagenet, pretrain.checkpoint: "${HSJP_TEST_ROOT}/w.pth"}
""",
        )
    )
    assert s.data.config.coco_root == "/data/coco"
    assert s.data.config.detection_file == str(tmp_path.resolve() / "dets" / "boxes.json")
    assert s.trials[0].pretrain.checkpoint == "/data/coco/w.pth"


def test_missing_imagenet_checkpoint_is_reported_before_running(tmp_path):
    path = write(
        tmp_path, SMALL + "include:\n  - {pretrain.method: imagenet, pretrain.checkpoint: nope.pth}\n"
    )
    with pytest.raises(
        ConfigError, match=r"include\[0\]: pretrain.checkpoint = '.*nope.pth': file not found"
    ):
        check_inputs(load_study(path))


def test_coco_layout_is_checked_up_front(tmp_path):
    from workloads.data.coco import CocoDataError

    path = write(tmp_path, f"data: {{coco_root: {tmp_path / 'coco'}}}\n")
    with pytest.raises(CocoDataError, match="coco_root"):
        check_inputs(load_study(path))
    (tmp_path / "coco").mkdir()
    with pytest.raises(CocoDataError, match="person_keypoints_train2017.json"):
        check_inputs(load_study(path))


def test_prepare_data_generates_synthetic_set_once(tmp_path):
    study = load_study(write(tmp_path, SMALL))
    store = Store(tmp_path / "store")
    cfg = prepare_data(study, store)
    assert cfg == data_config(study.data, store.base)
    assert cfg.coco_root.startswith(str(tmp_path / "store" / "data" / "synthetic-"))
    ann = Path(cfg.coco_root) / "annotations" / "person_keypoints_train2017.json"
    assert ann.is_file() and Path(cfg.detection_file).is_file() and cfg.loader_workers == 0
    mtime = ann.stat().st_mtime_ns
    assert prepare_data(study, store) == cfg and ann.stat().st_mtime_ns == mtime  # not regenerated


# ------------------------------------------------------------------------------------- bad inputs
BAD = [
    ("not_yaml", "a: [1, 2\n", ["not valid YAML at line 2"]),
    ("not_mapping", "- 1\n- 2\n", ["expected a YAML mapping", "[1, 2]"]),
    ("unknown_top_key", SMALL + "matrx: {pretrain.n: [2]}\n", ["matrx", "did you mean 'matrix'"]),
    (
        "unknown_default_key",
        SMALL.replace("epochs: 2}", "epochs: 2, nn: 3}", 1),
        ["defaults.pretrain.nn", "did you mean 'n'"],
    ),
    (
        "wrong_type",
        SMALL.replace("epochs: 2}", "epochs: ten}", 1),
        ["defaults.pretrain.epochs = 'ten'", "expected an integer"],
    ),
    (
        "yaml11_float_string",
        SMALL + "matrix: {pretrain.lr: [1e-3]}\n",
        ["matrix.pretrain.lr = '1e-3'", "expected a number", "write 1.0e-3"],
    ),
    (
        "out_of_range",
        SMALL + "matrix: {pretrain.n: [2, 99]}\n",
        ["matrix[pretrain.n=99]", "pretrain.n = 99", "too large"],
    ),
    ("empty_matrix_list", SMALL + "matrix: {pretrain.n: []}\n", ["matrix.pretrain.n = []", "non-empty list"]),
    (
        "unknown_backbone",
        SMALL + "matrix: {model.backbone: [hrnet_w48]}\n",
        ["model.backbone = 'hrnet_w48'", "did you mean 'hrnet_w32'"],
    ),
    (
        "unset_env",
        "data: {coco_root: '${HSJP_TEST_UNSET_VAR}'}\n",
        ["data.coco_root = '${HSJP_TEST_UNSET_VAR}'", "HSJP_TEST_UNSET_VAR is not set"],
    ),
    (
        "unknown_matrix_field",
        SMALL + "matrix: {pretrain.concat_orignal: [true]}\n",
        ["matrix.pretrain.concat_orignal", "did you mean 'concat_original'"],
    ),
    (
        "unknown_matrix_section",
        SMALL + "matrix: {pretrian.n: [2]}\n",
        ["pretrian.n", "did you mean 'pretrain'"],
    ),
    (
        "include_out_of_range",
        SMALL + "include:\n  - {finetune.label_fraction: 1.5}\n",
        ["include[0]", "finetune.label_fraction = 1.5", "(0, 1]"],
    ),
    ("bad_seeds", SMALL + "seeds: [0, a]\n", ["seeds = [0, 'a']", "distinct integers"]),
    (
        "unknown_compute_key",
        SMALL + "compute: {use_gpus: true}\n",
        ["compute.use_gpus", "did you mean 'use_gpu'"],
    ),
    (
        "throughput_backbone",
        SMALL + "compute: {throughput: {hrnet: 10}}\n",
        ["compute.throughput.hrnet", "did you mean 'hrnet_w32'"],
    ),
    (
        "fractional_gpus",
        SMALL + "compute: {use_gpu: true, gpus_per_worker: 1.5}\n",
        ["compute.gpus_per_worker = 1.5", "fraction"],
    ),
    ("synthetic_and_coco", "data: {synthetic: {train: 2}, coco_root: /x}\n", ["data", "not both"]),
    (
        "imagenet_without_checkpoint",
        SMALL + "include:\n  - {pretrain.method: imagenet}\n",
        ["include[0]", "pretrain.checkpoint", "imagenet"],
    ),
    (
        "model_mismatch",
        "data: {synthetic: {train: 2}}\ndefaults: {pretrain: {model: {width: 8}}}\n",
        ["defaults: the two stages' models differ", "pretrain.model.width = 8 but finetune.model.width = 32"],
    ),
    (
        "input_not_multiple_of_32",
        SMALL + "matrix: {finetune.input_hw: [[64, 48]]}\n",
        ["finetune.input_hw = [64, 48]", "multiples of 32"],
    ),
    (
        "heatmap_not_input_over_4",
        SMALL + "include:\n  - {pretrain.heatmap_size: 32}\n",
        ["include[0]", "pretrain.heatmap_size = 32", "input_size / 4 = 16"],
    ),
    (
        "seed_twice",
        SMALL + "seeds: [0, 1]\nmatrix: {finetune.seed: [3]}\n",
        ["matrix[finetune.seed=3]: finetune.seed", "seeds"],
    ),
    ("bad_name", SMALL + "name: ../escape\n", ["name = '../escape'"]),
    ("missing_data", "defaults: {}\n", ["data = None", "synthetic"]),
]


@pytest.mark.parametrize("case, text, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_study_gives_a_config_error_naming_file_key_value(case, text, expected, tmp_path, monkeypatch):
    monkeypatch.delenv("HSJP_TEST_UNSET_VAR", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, (part, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # nothing written


def test_merged_studies_must_agree_on_data(tmp_path):
    write(tmp_path, SMALL, "a.yaml")
    write(tmp_path, SMALL.replace("seed: 0}", "seed: 1}"), "b.yaml")
    path = write(tmp_path, "studies: [a.yaml, b.yaml]\n", "both.yaml")
    with pytest.raises(ConfigError, match=r"both.yaml: the listed studies disagree on `data`"):
        load_study(path)
    path = write(tmp_path, "studies: [a.yaml, b.yaml]\ndata: {synthetic: {train: 3}}\n", "both.yaml")
    assert load_study(path).data.synthetic.train == 3


def test_missing_study_file(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")
