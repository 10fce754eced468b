"""COCO person loading: HRNet's box convention, sample filters equal to pycocotools' counts, clear errors."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO

from workloads.data.coco import (
    CocoDataError,
    CocoIndex,
    annotation_path,
    box_to_center_scale,
    clean_box,
    load_coco,
    load_detections,
    load_persons,
)

DET_NAME = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"


# --------------------------------------------------------------------------- box convention (pure)
def test_box_to_center_scale_wide_box_grows_height():
    center, scale = box_to_center_scale([10, 20, 300, 100], aspect_ratio=0.75)
    assert np.allclose(center, [160, 70])
    # w > 0.75 h → h = w / 0.75 = 400; ×1.25 / 200
    assert np.allclose(scale, [300 / 200 * 1.25, 400 / 200 * 1.25])


def test_box_to_center_scale_tall_box_grows_width():
    center, scale = box_to_center_scale([0, 0, 60, 200], aspect_ratio=0.75)
    assert np.allclose(center, [30, 100])
    assert np.allclose(scale, [150 / 200 * 1.25, 200 / 200 * 1.25])


def test_box_to_center_scale_exact_ratio_and_padding():
    _, scale = box_to_center_scale([5, 5, 75, 100], aspect_ratio=0.75, padding=1.0)
    assert np.allclose(scale, [75 / 200, 100 / 200])
    _, square = box_to_center_scale([0, 0, 50, 100], aspect_ratio=1.0)
    assert np.allclose(square, [100 / 200 * 1.25, 100 / 200 * 1.25])


def test_clean_box_clips_to_image_and_rejects_outside():
    assert np.allclose(clean_box([-10, 5, 50, 20], (40, 30)), [0, 5, 39, 19])
    assert np.allclose(clean_box([10, 10, 1, 1], (40, 30)), [10, 10, 0, 0])  # HRNet keeps x2 == x1
    assert clean_box([50, 5, 10, 10], (40, 30)) is None


# --------------------------------------------------------------------------- real data
def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.mark.realdata
@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_counts_equal_pycocotools(coco_mini, split):
    coco = _coco(annotation_path(coco_mini, split))
    person_ids = coco.getAnnIds(catIds=[1], iscrowd=False)
    with_kpts = [a for a in coco.loadAnns(person_ids) if a["num_keypoints"] > 0 and a["area"] > 0]
    pretext = load_persons(coco_mini, split, aspect_ratio=1.0)
    pose = load_persons(coco_mini, split, with_keypoints=True, aspect_ratio=0.75)
    assert len(pretext) == len(person_ids)
    assert len(pose) == len(with_kpts)
    assert {p.ann_id for p in pose} == {a["id"] for a in with_kpts}
    # the coco-mini sample holds: train 87 anns (one crowd) / 53 with keypoints, val 65 / 40
    assert (len(pretext), len(pose)) == {"train2017": (86, 53), "val2017": (65, 40)}[split]


def _index_dataset():
    """Crowd and non-crowd persons, another category, an image without annotations, a repeated ann id."""
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "iscrowd": 0}, {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 2, "iscrowd": 0}, {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0, "dup": True}]  # fmt: skip
    images = [{"id": 2}, {"id": 1}, {"id": 3}]
    return {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}


@pytest.mark.parametrize(
    "query",
    [{}, {"iscrowd": False}, {"iscrowd": True}, {"catIds": [1]}, {"catIds": [1], "iscrowd": False},
     {"imgIds": [1]}, {"imgIds": [2, 1], "catIds": [1]}, {"imgIds": [3, 9]}, {"imgIds": [1], "iscrowd": False}],
)  # fmt: skip
def test_the_own_index_answers_as_pycocotools(query):
    ours, theirs = CocoIndex(_index_dataset()), COCO()
    theirs.dataset = _index_dataset()
    with contextlib.redirect_stdout(io.StringIO()):
        theirs.createIndex()
    assert ours.getImgIds() == theirs.getImgIds()
    assert ours.getAnnIds(**query) == theirs.getAnnIds(**query)
    ids = ours.getAnnIds(**query)
    assert ours.loadAnns(ids) == theirs.loadAnns(ids)  # the repeated id 4: the last record, as pycocotools


@pytest.mark.realdata
def test_instances_carry_annotation_fields(coco_mini):
    coco = _coco(annotation_path(coco_mini, "val2017"))
    for inst in load_persons(coco_mini, "val2017", with_keypoints=True, aspect_ratio=0.75):
        ann = coco.anns[inst.ann_id]
        assert np.array_equal(inst.keypoints.reshape(-1), np.asarray(ann["keypoints"], float))
        assert inst.num_keypoints == ann["num_keypoints"] > 0
        assert set(np.unique(inst.keypoints[:, 2])) <= {0.0, 1.0, 2.0}
        assert np.array_equal(inst.joints_vis, (inst.keypoints[:, 2] > 0).astype(np.float32))
        assert inst.scale_wh[0] / inst.scale_wh[1] == pytest.approx(0.75)
        x, y, w, h = inst.bbox_xywh
        assert 0 <= x and x + w <= inst.image_wh[0] - 1 and 0 <= y and y + h <= inst.image_wh[1] - 1
        assert inst.image_path.endswith(f"val2017/{inst.image_id:012d}.jpg") and inst.score == 1.0


@pytest.mark.realdata
def test_detections_load_with_threshold(coco_dets):
    raw = json.loads((coco_dets / DET_NAME).read_text())
    dets = load_detections(coco_dets / DET_NAME, coco_dets, "val2017", aspect_ratio=0.75)
    assert len(dets) == len([d for d in raw if d["category_id"] == 1]) == 118
    high = load_detections(coco_dets / DET_NAME, coco_dets, "val2017", aspect_ratio=0.75, image_thre=0.5)
    assert len(high) == sum(d["category_id"] == 1 and d["score"] >= 0.5 for d in raw) < 118
    assert all(d.ann_id is None and d.keypoints.sum() == 0 for d in dets)
    assert np.allclose(dets[0].bbox_xywh, raw[0]["bbox"])  # unclipped, as HRNet
    assert dets[0].score == pytest.approx(raw[0]["score"])


@pytest.mark.realdata
def test_load_coco_counts(coco_mini, coco_dets):
    def counts(root, split):
        coco = load_coco(root, split)
        persons = coco.loadAnns(coco.getAnnIds(catIds=[1], iscrowd=False))
        with_kpts = sum(1 for a in persons if a.get("num_keypoints", 0) > 0)
        return len(coco.imgs), len(coco.anns), len(persons), with_kpts

    assert counts(coco_mini, "train2017")[2] == 86
    assert counts(coco_mini, "val2017") == (30, 65, 65, 40)  # images, annotations, persons, with keypoints
    assert counts(coco_dets, "val2017")[0] == 4


# --------------------------------------------------------------------------- errors name the path
def _copy_dets(coco_dets, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(coco_dets, root)
    return root


def test_missing_root_names_path(tmp_path):
    with pytest.raises(CocoDataError, match=str(tmp_path / "nope")):
        load_persons(tmp_path / "nope", "val2017", aspect_ratio=0.75)


def test_missing_annotation_names_file(tmp_path):
    with pytest.raises(CocoDataError, match="person_keypoints_val2017.json"):
        load_persons(tmp_path, "val2017", aspect_ratio=0.75)


def test_malformed_json_names_file(tmp_path):
    path = tmp_path / "annotations" / "person_keypoints_val2017.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(CocoDataError, match=str(path)):
        load_persons(tmp_path, "val2017", aspect_ratio=0.75)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(CocoDataError, match="annotations"):
        load_persons(tmp_path, "val2017", aspect_ratio=0.75)


@pytest.mark.realdata
def test_missing_images_named_with_count(coco_dets, tmp_path):
    root = _copy_dets(coco_dets, tmp_path)
    for name in ("000000000785.jpg", "000000040083.jpg"):
        (root / "val2017" / name).unlink()
    with pytest.raises(CocoDataError, match=r"2 image\(s\).*000000000785.jpg"):
        load_persons(root, "val2017", aspect_ratio=0.75)
    shutil.rmtree(root / "val2017")
    with pytest.raises(CocoDataError, match=str(root / "val2017")):
        load_persons(root, "val2017", aspect_ratio=0.75)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "content, expected",
    [
        ({"image_id": 785}, "top level is dict"),
        ([{"image_id": 785, "bbox": [1, 2, 3, 4], "score": 0.5}], "entry 0"),
        ([{"image_id": 785, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}], "entry 0"),
        ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}], "not in"),
    ],
)
def test_bad_detection_file_names_file(coco_dets, tmp_path, content, expected):
    det = tmp_path / "dets.json"
    det.write_text(json.dumps(content))
    with pytest.raises(CocoDataError, match=expected) as err:
        load_detections(det, coco_dets, "val2017", aspect_ratio=0.75)
    assert str(det) in str(err.value)


@pytest.mark.realdata
def test_missing_detection_file_named(coco_dets, tmp_path):
    with pytest.raises(CocoDataError, match=str(tmp_path / "x.json")):
        load_detections(tmp_path / "x.json", coco_dets, "val2017", aspect_ratio=0.75)
