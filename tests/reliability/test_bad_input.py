"""Bad input: every user mistake gives an error naming the file / key / value and what was
expected, exits 2 from `hsjp-study`, and writes nothing to the store. Data and checkpoint faults found
only when a stage loads them give errors naming the file; a corrupt JPEG is skipped with a warning.

Study-file mistakes already covered by tests/orchestrator/test_study.py (`BAD`, through `load_study`)
are not repeated here; these go through the CLI (exit code, stderr, store untouched) or the loaders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from orchestrator.cli.main import main
from tests.orchestrator.standins import SMALL_STUDY as SMALL
from workloads.config import FinetuneConfig, PretrainConfig
from workloads.data.coco import CocoDataError, load_coco, load_detections, load_persons

# (case, study text, substrings of the error; "{path}" is the study file)
BAD_STUDIES = [
    (
        "not_yaml",
        "defaults: {pretrain: {n: 3}\n",
        ["{path}: not valid YAML at line", "a study is a YAML mapping"],
    ),
    ("not_mapping", "just a sentence\n", ["{path}: expected a YAML mapping", "got str 'just a sentence'"]),
    (
        "unknown_key_suggests",
        SMALL + "seed: [0, 1]\n",
        ["{path}: seed: unknown key (did you mean 'seeds'?)", "allowed: name"],
    ),
    (
        "wrong_type",
        SMALL.replace("epochs: 2}\n  finetune", "epochs: 2, concat_original: maybe}\n  finetune", 1),
        ["{path}: defaults.pretrain.concat_original = 'maybe'", "expected true or false"],
    ),
    (
        "n_below_1",
        SMALL + "matrix: {pretrain.n: [0]}\n",
        ["{path}: matrix[pretrain.n=0]", "pretrain.n = 0", "≥ 1"],
    ),
    (
        "n_too_large_for_input",
        SMALL + "include:\n  - {pretrain.n: 17}\n",
        ["{path}: include[0]", "pretrain.n = 17: too large for input_size 64", "allowed 1..16"],
    ),
    (
        "sigma_over_paper_bound",
        SMALL + "include:\n  - {pretrain.n: 4, pretrain.sigma_px: 3.0}\n",
        ["{path}: include[0]", "pretrain.sigma_px = 3.0", "(0, 2.667) px", "3σ rule"],
    ),
    (
        "label_fraction_zero",
        SMALL + "matrix: {finetune.label_fraction: [0.0]}\n",
        ["{path}: matrix[finetune.label_fraction=0.0]", "finetune.label_fraction = 0.0", "(0, 1]"],
    ),
    (
        "freeze_beyond_stages",
        SMALL + "matrix: {finetune.freeze: [2, 5]}\n",
        ["{path}: matrix[finetune.freeze=5]", "finetune.freeze = 5", "stage index 0..4"],
    ),
    ("empty_matrix", SMALL + "matrix: {}\n", ["{path}: matrix = {}", "mapping of dotted keys to lists"]),
    (
        "unknown_backbone",
        SMALL.replace("backbone: hrnet_w32", "backbone: resnet50", 1),
        [
            "{path}: defaults.model.backbone = 'resnet50': unknown",  # where the study file says it
            "allowed: hrnet_w32, simplebaseline_r50",
        ],
    ),
    (
        "unset_env_in_checkpoint",
        SMALL + "include:\n  - {pretrain.method: imagenet, pretrain.checkpoint: '${HSJP_REL_UNSET}/w.pth'}\n",
        ["{path}: include[0].pretrain.checkpoint", "HSJP_REL_UNSET is not set"],
    ),
    (
        "seeds_not_a_list",
        SMALL + "seeds: 3\n",
        ["{path}: seeds = 3", "non-empty list of distinct integers"],
    ),
    (
        "include_not_a_list",
        SMALL + "include: {pretrain.n: 3}\n",
        ["{path}: include = {'pretrain.n': 3}", "expected a list of mappings"],
    ),
]


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


@pytest.mark.parametrize("case, text, expected", BAD_STUDIES, ids=[c[0] for c in BAD_STUDIES])
def test_bad_study_run_exits_2_names_file_key_value_and_writes_nothing(
    case, text, expected, tmp_path, store, capsys, monkeypatch
):
    monkeypatch.delenv("HSJP_REL_UNSET", raising=False)
    path = tmp_path / "study.yaml"
    path.write_text(text)
    code, err = _run(["run", str(path), "--storage", str(store)], capsys)
    assert code == 2
    assert err.startswith("error: "), err
    for part in expected:
        assert part.replace("{path}", str(path)) in err, (part, err)
    assert not store.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_existing_store_is_left_unchanged_by_a_bad_study(tmp_path, store, capsys):
    store.mkdir()
    (store / "marker").write_text("x")
    path = tmp_path / "study.yaml"
    path.write_text(SMALL + "matrix: {pretrain.n: [0]}\n")
    assert _run(["run", str(path), "--storage", str(store)], capsys)[0] == 2
    assert [p.name for p in store.iterdir()] == ["marker"]


# ------------------------------------------------------------------------ COCO folder, through `run`
def _coco_study(tmp_path: Path, root: Path, detection_file: Path | None = None) -> Path:
    det = f", detection_file: {detection_file}" if detection_file else ""
    path = tmp_path / "coco.yaml"
    path.write_text(f"data: {{coco_root: {root}{det}}}\n")
    return path


def _coco_tree(root: Path, splits=("train2017", "val2017"), images=True) -> None:
    (root / "annotations").mkdir(parents=True)
    for split in splits:
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": []})
        )
        if images:
            (root / split).mkdir()


@pytest.mark.parametrize(
    "case",
    ["coco_root_missing", "annotation_missing", "images_folder_missing", "detection_file_missing"],
)
def test_bad_coco_layout_exits_2_naming_the_path_before_the_store_exists(case, tmp_path, store, capsys):
    root = tmp_path / "coco"
    detection = None
    if case == "annotation_missing":
        _coco_tree(root, splits=("val2017",))
        (root / "train2017").mkdir()
        expected = [f"{root}/annotations/person_keypoints_train2017.json not found", "under data.coco_root"]
    elif case == "images_folder_missing":
        _coco_tree(root, images=False)
        expected = [f"{root}/train2017 not found", "{split}/ (images)".replace("{split}", "train2017")]
    elif case == "detection_file_missing":
        _coco_tree(root)
        detection = tmp_path / "dets.json"
        expected = [f"data.detection_file = '{detection}': file not found"]
    else:
        expected = [f"data.coco_root = '{root}': folder not found"]
    study = _coco_study(tmp_path, root, detection)
    code, err = _run(["run", str(study), "--storage", str(store)], capsys)
    assert code == 2 and err.startswith(f"error: {study}: "), err
    for part in expected:
        assert part in err, (part, err)
    assert not store.exists()


def test_missing_imagenet_checkpoint_exits_2_naming_the_key(tmp_path, store, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(SMALL + "include:\n  - {pretrain.method: imagenet, pretrain.checkpoint: w/none.pth}\n")
    code, err = _run(["run", str(path), "--storage", str(store)], capsys)
    assert code == 2
    assert f"{path}: include[0]: pretrain.checkpoint = '{tmp_path}/w/none.pth': file not found" in err
    assert not store.exists()


# ----------------------------------------------------------------------- COCO files, through the loader
@pytest.mark.parametrize(
    "case, content, expected",
    [
        ("not_json", "{images: [", "is not valid JSON"),
        ("not_an_object", "[1, 2]", "lacks the COCO key(s) ['images', 'annotations', 'categories']"),
        ("missing_annotations", '{"images": [], "categories": []}', "lacks the COCO key(s) ['annotations']"),
        (
            "annotation_without_image_id",
            '{"images": [], "annotations": [{"id": 1}], "categories": []}',
            "is malformed: missing or wrong field 'image_id'",
        ),
    ],
)
def test_malformed_annotation_file_names_the_path(case, content, expected, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    ann = root / "annotations" / "person_keypoints_val2017.json"
    ann.write_text(content)
    with pytest.raises(CocoDataError) as info:
        load_coco(root, "val2017")
    assert f"annotation file {ann}" in str(info.value) and expected in str(info.value), str(info.value)


def test_annotation_without_bbox_names_file_and_annotation(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    ann = root / "annotations" / "person_keypoints_val2017.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "a.jpg", "width": 64, "height": 64}],
                "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 10.0}],
                "categories": [{"id": 1, "name": "person"}],
            }
        )
    )
    with pytest.raises(CocoDataError) as info:
        load_persons(root, "val2017", aspect_ratio=0.75)
    message = str(info.value)
    assert f"annotation file {ann}: annotation id 3 (image 7) is malformed (KeyError: 'bbox')" in message
    assert "expected bbox [x, y, w, h]" in message


@pytest.mark.parametrize(
    "case, content, expected",
    [
        ("dict_not_list", '{"image_id": 1}', "top level is dict; expected a JSON list of {image_id: int"),
        (
            "entry_without_bbox",
            '[{"image_id": 1, "category_id": 1, "score": 0.9}]',
            "entry 0 is {'image_id': 1",
        ),
        ("bbox_of_3", '[{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [1, 2, 3]}]', "entry 0 is"),
        ("not_json", "[{", "is not valid JSON"),
    ],
)
def test_detection_file_of_the_wrong_format_names_the_file(case, content, expected, tmp_path):
    det = tmp_path / "dets.json"
    det.write_text(content)
    with pytest.raises(CocoDataError) as info:
        load_detections(det, tmp_path / "coco", "val2017", aspect_ratio=0.75)
    assert f"detection file {det}" in str(info.value) and expected in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------- corrupt JPEG
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from workloads.data.synthetic import generate

    root = tmp_path_factory.mktemp("syn")
    generate(root, n_train=3, n_val=1, seed=0, image_size=(128, 96))
    return root


def _corrupt(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:20] + b"\x00" * 10)  # a truncated JPEG: header only


def _two_images(persons):
    first, *rest = persons
    other = next(p for p in rest if p.image_path != first.image_path)
    return first, other


def test_corrupt_jpeg_is_skipped_with_a_count_in_the_pose_dataset(synthetic_root, tmp_path, caplog):
    import shutil

    from workloads.pose.dataset import PoseTrainDataset

    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    cfg = FinetuneConfig(input_hw=(128, 96), heatmap_hw=(32, 24))
    persons = load_persons(root, "train2017", with_keypoints=True, aspect_ratio=0.75)
    first, other = _two_images(persons)
    _corrupt(first.image_path)
    ds = PoseTrainDataset(persons, cfg, seed=0)
    with caplog.at_level(logging.WARNING):
        samples = [ds[(0, i)] for i in range(len(ds))]  # no crash
    assert all(s[0].shape == (3, 128, 96) for s in samples)
    assert ds.skipped == {first.image_path}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # warned once per file, not once per person
    assert first.image_path in warnings[0] and "could not be decoded" in warnings[0]
    assert "1 unreadable image(s) skipped so far" in warnings[0]


def test_corrupt_jpeg_is_skipped_in_the_pretext_dataset(synthetic_root, tmp_path, caplog):
    import shutil

    from workloads.hsjp.dataset import PuzzleDataset

    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    persons = load_persons(root, "train2017", aspect_ratio=1.0)
    first, _ = _two_images(persons)
    _corrupt(first.image_path)
    cfg = PretrainConfig(input_size=64, heatmap_size=16, n=2)
    for train in (True, False):
        ds = PuzzleDataset(persons, cfg, train=train)
        with caplog.at_level(logging.WARNING):
            items = [ds[(0, i)] for i in range(len(ds))]
        assert all(item["image"].shape == (64, 64, 3) for item in items)
        assert ds.skipped == {first.image_path}
    assert any(first.image_path in r.getMessage() for r in caplog.records)


def test_every_image_corrupt_is_an_error_naming_a_file(synthetic_root, tmp_path):
    import shutil

    from workloads.pose.dataset import PoseTrainDataset

    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    persons = load_persons(root, "train2017", with_keypoints=True, aspect_ratio=0.75)
    for p in {p.image_path for p in persons}:
        _corrupt(p)
    ds = PoseTrainDataset(persons, FinetuneConfig(input_hw=(128, 96), heatmap_hw=(32, 24)), seed=0)
    with pytest.raises(CocoDataError, match=r"no readable image among the \d+ items, e.g. .*\.jpg"):
        ds[(0, 0)]


def test_corrupt_val_image_gives_no_crash_in_pose_inference(synthetic_root, tmp_path, caplog):
    import shutil

    from workloads.pose.inference import _iter_crops

    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    persons = load_persons(root, "train2017", with_keypoints=True, aspect_ratio=0.75)
    first, _ = _two_images(persons)
    _corrupt(first.image_path)
    with caplog.at_level(logging.WARNING):
        got = [i for i, _ in _iter_crops(persons, (128, 96), workers=1)]
    bad = {i for i, p in enumerate(persons) if p.image_path == first.image_path}
    assert sorted(got) == sorted(set(range(len(persons))) - bad)
    assert any(first.image_path in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_hrnet():
    from workloads.config import ModelConfig
    from workloads.models import build_model

    return build_model(ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)), 17)


def test_missing_imagenet_checkpoint_file_names_the_path_and_the_source(tiny_hrnet, tmp_path):
    from workloads.models import load_imagenet

    with pytest.raises(FileNotFoundError) as info:
        load_imagenet(tiny_hrnet, tmp_path / "hrnet_w32-36af842e.pth", "hrnet_w32")
    assert f"ImageNet checkpoint not found: {tmp_path / 'hrnet_w32-36af842e.pth'}" in str(info.value)
    assert "HRNet-Image-Classification" in str(info.value)


def test_checkpoint_of_another_architecture_names_file_and_first_key(tiny_hrnet, tmp_path):
    from workloads.models import load_imagenet

    path = tmp_path / "resnet.pth"
    torch.save({"conv9.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError) as info:
        load_imagenet(tiny_hrnet, path, "hrnet_w32")
    message = str(info.value)
    assert message.startswith(f"{path}: checkpoint looks like a checkpoint of another architecture")
    assert "first unmatched key 'conv9.weight'" in message and "hrnet_w32-36af842e.pth" in message


class Pickled:
    """Any custom class: torch.load(weights_only=True) refuses to unpickle it."""

    def __init__(self):
        self.weight = torch.zeros(1)


def test_checkpoint_refused_by_weights_only_names_the_file(tiny_hrnet, tmp_path):
    from workloads.models import load_imagenet

    path = tmp_path / "pickled.pth"
    torch.save({"model": Pickled()}, path)
    with pytest.raises(ValueError) as info:
        load_imagenet(tiny_hrnet, path, "hrnet_w32")
    message = str(info.value)
    assert message.startswith(f"{path}: torch.load(weights_only=True) refused it")
    assert "Re-save it as a dict of tensors" in message


def test_truncated_checkpoint_names_the_file(tiny_hrnet, tmp_path):
    from workloads.models import load_state_file

    path = tmp_path / "cut.pth"
    buf = tmp_path / "full.pth"
    torch.save(tiny_hrnet.state_dict(), buf)
    path.write_bytes(buf.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"^{path}: cannot be read as a torch checkpoint"):
        load_state_file(path)
