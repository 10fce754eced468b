"""test-dev: an evaluate stage predicts a split without annotations from its finetune's best weights and
writes the evaluation server's files (`person_keypoints_<split>_<alg>_results.json` and its zip)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from reports.collect import parse_server_stats as read_server_stats
from tests.testdev_data import SPLIT, make_testdev_root
from workloads.config import DataConfig, EvaluationConfig, FinetuneConfig, ModelConfig
from workloads.context import LocalContext
from workloads.data.coco import CocoDataError
from workloads.pose.testdev import alg_name, load_test_detections, results_name, run_evaluation, stats_name
from workloads.pose.train import run_finetune

TINY = ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1))


def check_results_file(results: list, image_ids: set[int]) -> None:
    """The server's format: exactly the info file's image ids, 51 values and a score per entry."""
    assert isinstance(results, list) and results
    assert {r["image_id"] for r in results} == image_ids
    for r in results:
        assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and isinstance(r["score"], float)


@pytest.mark.realdata
def test_an_evaluate_stage_writes_the_server_results_file_and_zip_from_the_finetune_weights(
    tmp_path, coco_mini, coco_dets
):
    root, det_file, image_ids = make_testdev_root(tmp_path, coco_mini, coco_dets)
    cfg = FinetuneConfig(
        model=TINY, input_hw=(64, 64), heatmap_hw=(16, 16), sigma=1.0, epochs=1, batch_size=4,
    )  # fmt: skip
    data = DataConfig(
        coco_root=str(root), loader_workers=0, max_train_instances=8, max_val_instances=4,
    )  # fmt: skip
    finetune = run_finetune(cfg, data, LocalContext(tmp_path / "finetune"))
    assert set(finetune.artifacts) == {"per_image.npz"}  # the finetune itself predicts no test split
    ev = EvaluationConfig(
        finetune=cfg, split=SPLIT, detection_file=str(det_file), alg="hrnetw32-scratch-0123abcd"
    )
    result = run_evaluation(ev, data, LocalContext(tmp_path / "evaluate", parent_weights=finetune.weights))
    summary = result.metrics["test_splits"][SPLIT]
    name = summary["results_file"]
    assert name == f"person_keypoints_{SPLIT}_hrnetw32-scratch-0123abcd_results.json"
    assert summary["zip_file"] == name.removesuffix(".json") + ".zip" and summary["images"] == 4
    assert set(result.artifacts) == {name, summary["zip_file"]} and result.weights is None
    results = json.loads(result.artifacts[name])
    check_results_file(results, image_ids)
    assert result.metrics["results"] == len(results)
    with zipfile.ZipFile(io.BytesIO(result.artifacts[summary["zip_file"]])) as zf:
        assert zf.namelist() == [name] and zf.read(name) == result.artifacts[name]
    # the finetune's best weights are what predicts: other weights give other keypoints
    other = {k: v + 0.5 if v.is_floating_point() else v for k, v in finetune.weights.items()}
    moved = run_evaluation(ev, data, LocalContext(tmp_path / "other", parent_weights=other))
    assert json.loads(moved.artifacts[name]) != results


def test_an_evaluate_stage_without_finetune_weights_says_so(tmp_path):
    ev = EvaluationConfig(finetune=FinetuneConfig(model=TINY), split=SPLIT, detection_file="d.json", alg="x")
    with pytest.raises(RuntimeError, match="no best weights"):
        run_evaluation(ev, DataConfig(coco_root=str(tmp_path)), LocalContext(tmp_path / "evaluate"))


def test_results_names_refuse_an_alg_the_server_would_split():
    assert (
        results_name(SPLIT, "hrnetw32-hsjp-1a2b")
        == f"person_keypoints_{SPLIT}_hrnetw32-hsjp-1a2b_results.json"
    )
    for bad in ("a_b", "", "a/b", "a.b"):
        with pytest.raises(ValueError, match="<alg>"):
            results_name(SPLIT, bad)
    assert alg_name("hrnet_w32", "pose_hrnet_w32_256x192") == "hrnetw32-posehrnetw32256x192"


def test_server_stats_format():
    assert read_server_stats('{"AP": 0.736, "AP50": 0.9}', "s.json") == {"AP": 0.736, "AP50": 0.9}
    stats = read_server_stats(json.dumps({"stats": [0.7] + [0.5] * 9}), "s.json")
    assert stats["AP"] == 0.7 and len(stats) == 10
    with pytest.raises(ValueError, match="fraction"):
        read_server_stats('{"AP": 73.6}', "s.json")
    with pytest.raises(ValueError, match="s.json"):
        read_server_stats("[1]", "s.json")
    assert stats_name(SPLIT, "x") == results_name(SPLIT, "x").replace(".json", ".stats.json")


@pytest.mark.realdata
def test_a_test_split_without_image_info_names_the_path(tmp_path, coco_mini, coco_dets):
    root, det_file, _ = make_testdev_root(tmp_path, coco_mini, coco_dets)
    (root / "annotations" / f"image_info_{SPLIT}.json").unlink()
    with pytest.raises(CocoDataError, match=f"image_info_{SPLIT}.json not found"):
        load_test_detections(det_file, root, SPLIT, aspect_ratio=0.75)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "content, expected",
    [("{images: [", "is not valid JSON"), ('{"images": []}', "expected an object with a non-empty `images`")],
)
def test_a_malformed_image_info_file_is_named(tmp_path, coco_mini, coco_dets, content, expected):
    root, det_file, _ = make_testdev_root(tmp_path, coco_mini, coco_dets)
    info = root / "annotations" / f"image_info_{SPLIT}.json"
    info.write_text(content)
    with pytest.raises(CocoDataError, match=expected) as err:
        load_test_detections(det_file, root, SPLIT, aspect_ratio=0.75)
    assert f"image info file {info}" in str(err.value)


@pytest.mark.realdata
def test_detections_off_the_split_are_dropped_and_none_left_is_an_error(
    tmp_path, coco_mini, coco_dets, caplog
):
    root, det_file, image_ids = make_testdev_root(tmp_path, coco_mini, coco_dets)
    dets = json.loads(det_file.read_text())
    foreign = dict(dets[0], image_id=max(image_ids) + 1)
    det_file.write_text(json.dumps([*dets, foreign]))
    instances, _ = load_test_detections(det_file, root, SPLIT, aspect_ratio=0.75)
    assert len(instances) == len(dets) and {i.image_id for i in instances} <= image_ids
    assert f"1 image id(s) not in {root / 'annotations' / f'image_info_{SPLIT}.json'}" in caplog.text
    det_file.write_text(json.dumps([foreign]))
    with pytest.raises(CocoDataError, match="no detection matches this split") as err:
        load_test_detections(det_file, root, SPLIT, aspect_ratio=0.75)
    assert str(det_file) in str(err.value) and str(max(image_ids) + 1) in str(err.value)
