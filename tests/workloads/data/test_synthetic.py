"""Synthetic COCO-format set: deterministic, pycocotools-valid, COCO-like labels, learnable left/right."""

import contextlib
import io
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from workloads.data.coco import annotation_path, load_detections, load_persons
from workloads.data.keypoints import FLIP_PAIRS
from workloads.data.synthetic import DETECTION_FILE, generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate(out, seed=0)  # the default sizes, as the smoke study uses them


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", n_train=4, n_val=2, seed=7)
    generate(tmp_path / "b", n_train=4, n_val=2, seed=7)
    generate(tmp_path / "c", n_train=4, n_val=2, seed=8)
    names = _files(tmp_path / "a")
    assert names == _files(tmp_path / "b") == _files(tmp_path / "c")
    assert len(names) == 4 + 2 + 3  # images, two annotation files, the detection file
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    assert a["splits"]["train2017"]["images"] == 4 and a["splits"]["val2017"]["images"] == 2


def test_pycocotools_loads_and_counts_match(synth):
    root, summary = synth
    for split in ("train2017", "val2017"):
        coco = _coco(annotation_path(root, split))
        assert len(coco.getImgIds()) == summary["splits"][split]["images"]
        person_ids = coco.getAnnIds(catIds=[1], iscrowd=False)
        with_kpts = [a for a in coco.loadAnns(person_ids) if a["num_keypoints"] > 0]
        assert (
            len(load_persons(root, split, aspect_ratio=1.0))
            == len(person_ids)
            == summary["splits"][split]["persons"]
        )
        assert len(load_persons(root, split, with_keypoints=True, aspect_ratio=0.75)) == len(with_kpts)
        assert coco.loadCats(1)[0]["keypoints"][5] == "left_shoulder"
        names = {img["file_name"] for img in coco.dataset["images"]}
        assert names == set(os.listdir(root / split)) and all(n == f"{int(n[:12]):012d}.jpg" for n in names)


def test_labels_have_every_visibility_and_unlabelled_persons(synth):
    root, _ = synth
    anns = json.loads(annotation_path(root, "train2017").read_text())["annotations"]
    kps = np.array([a["keypoints"] for a in anns]).reshape(len(anns), 17, 3)
    assert set(np.unique(kps[..., 2])) == {0, 1, 2}
    assert any(a["num_keypoints"] == 0 for a in anns) and any(a["num_keypoints"] >= 12 for a in anns)
    for ann, kp in zip(anns, kps):
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert (kp[kp[:, 2] == 0, :2] == 0).all()
        x, y, w, h = ann["bbox"]
        vis = kp[kp[:, 2] == 2, :2]  # a visible joint is a pixel of the person, inside its box
        assert ((vis >= [x, y]) & (vis < [x + w, y + h])).all()
        assert ann["area"] > 0 and ann["iscrowd"] == 0
    assert len({a["id"] for a in anns}) == len(anns)


def test_left_and_right_are_told_apart_by_colour(synth):
    """Left limbs are warm (R > B), right limbs cool (B > R) at every visible body joint."""
    root, _ = synth
    coco = _coco(annotation_path(root, "train2017"))
    warm, cool = [], []
    for img in coco.dataset["images"]:
        rgb = cv2.imread(str(root / "train2017" / img["file_name"]))[..., ::-1].astype(int)
        for ann in coco.imgToAnns[img["id"]]:
            kp = np.array(ann["keypoints"]).reshape(17, 3)
            for left, right in FLIP_PAIRS[2:]:  # shoulders ... ankles
                for k, bucket in ((left, warm), (right, cool)):
                    if kp[k, 2] == 2:
                        r, _, b = rgb[kp[k, 1], kp[k, 0]]
                        bucket.append(r > b if bucket is warm else b > r)
    assert len(warm) > 100 and len(cool) > 100
    assert np.mean(warm) > 0.95 and np.mean(cool) > 0.95


def test_detection_file_loads(synth):
    root, summary = synth
    dets = load_detections(root / DETECTION_FILE, root, "val2017", aspect_ratio=0.75)
    assert len(dets) == summary["detections"] > 0
    assert all(0 < d.score <= 1 and d.ann_id is None for d in dets)
    raw = json.loads((root / DETECTION_FILE).read_text())
    assert {r["image_id"] for r in raw} <= set(_coco(annotation_path(root, "val2017")).getImgIds())
    assert sum(r["score"] < 0.5 for r in raw) > 0  # some low-scoring false positives


def test_generate_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate(tmp_path, n_train=0, n_val=2)


def test_default_generation_is_fast(synth):
    _, summary = synth
    assert summary["seconds"] < 5.0  # ~0.4 s on one idle core; generous for a shared machine
