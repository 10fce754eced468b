"""A test-dev-shaped COCO root built from the shared samples (not collected as tests).

train2017 / val2017 from coco-mini (with annotations), and a `test-dev2017` split made of coco-dets'
4 val images as COCO ships test-dev: `annotations/image_info_test-dev2017.json` (images only, no
annotations), the images in `test2017/`, and a detection file in HRNet's format (the 3 highest-scored
boxes of each image, to keep CPU inference short).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPLIT = "test-dev2017"


def make_testdev_root(tmp: Path, coco_mini: Path, coco_dets: Path) -> tuple[Path, Path, set[int]]:
    """(COCO root, test-dev detection file, image ids of the info file)."""
    root = tmp / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        os.symlink(coco_mini / split, root / split)
        os.symlink(
            coco_mini / "annotations" / f"person_keypoints_{split}.json",
            root / "annotations" / f"person_keypoints_{split}.json",
        )
    gt = json.loads((coco_dets / "annotations" / "person_keypoints_val2017.json").read_text())
    info = {
        "info": {"description": "test-dev-shaped"},
        "images": gt["images"],
        "categories": gt["categories"],
    }
    (root / "annotations" / f"image_info_{SPLIT}.json").write_text(json.dumps(info))
    (root / "test2017").mkdir()
    for img in gt["images"]:
        os.symlink(coco_dets / "val2017" / img["file_name"], root / "test2017" / img["file_name"])
    dets = json.loads(
        (coco_dets / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json").read_text()
    )
    top = []
    for img in gt["images"]:
        mine = sorted((d for d in dets if d["image_id"] == img["id"]), key=lambda d: -d["score"])
        top += mine[:3]
    det_file = tmp / f"COCO_{SPLIT}_detections.json"
    det_file.write_text(json.dumps(top))
    return root, det_file, {img["id"] for img in gt["images"]}
