"""COCO 2017 person instances for the pretext (paper §3, all persons) and top-down pose (paper §4.1).

Reads a folder laid out as the COCO release (`annotations/person_keypoints_{split}.json`, `{split}/`)
into `CocoIndex` (the part of pycocotools' `COCO` index this loading uses, with its semantics; tested
equal to pycocotools' counts) and turns every usable person into a `PersonInstance` with HRNet's box convention
(center + scale in units of pixel_std = 200, aspect-fixed, padded ×1.25). Detection boxes in HRNet's
`COCO_val2017_detections_AP_H_56_person.json` format go through the same conversion.

Sample selection follows the official HRNet code (lib/dataset/coco.py `_load_coco_keypoint_annotation_kernal`):
non-crowd persons, a "clean" box clipped to the image, `area > 0` and at least one labelled keypoint.
pycocotools itself is needed only where COCO AP is computed (workloads/pose/evaluate.py), so the data
path runs on a machine without it (the device check's GPU machine).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workloads.data.keypoints import NUM_KEYPOINTS, PERSON_CATEGORY_ID
from workloads.user_errors import UserError

log = logging.getLogger(__name__)

PIXEL_STD = 200.0  # HRNet _xywh2cs: scale is expressed in units of 200 px
BOX_PADDING = 1.25  # HRNet _xywh2cs: the box is enlarged by 25 %
EXPECTED_LAYOUT = "annotations/person_keypoints_{split}.json and {split}/ (images) under the COCO root"


class CocoDataError(UserError, RuntimeError):
    """A COCO root, annotation, detection or image file is missing or malformed (the message names it)."""


@dataclass(frozen=True, eq=False)
class PersonInstance:
    """One person box to crop: a GT annotation or a detection.

    `keypoints[:, 2]` keeps the raw COCO visibility v ∈ {0, 1, 2} (0 = not labelled, 1 = labelled but
    occluded, 2 = visible); the training weight of HRNet (`joints_vis`, v > 1 → 1) is `joints_vis`.
    Detections carry zero keypoints, `ann_id=None` and the detector's score.
    """

    image_id: int
    ann_id: int | None
    image_path: str
    image_wh: tuple[int, int]
    bbox_xywh: np.ndarray  # [4] clean box (GT) or raw detector box, x, y, w, h in image px
    center_xy: np.ndarray  # [2] box centre, image px
    scale_wh: np.ndarray  # [2] aspect-fixed padded box size / PIXEL_STD
    keypoints: np.ndarray  # [17, 3] x, y, v (raw COCO visibility)
    num_keypoints: int
    area: float
    score: float

    @property
    def joints_vis(self) -> np.ndarray:
        """[17] float 0/1: HRNet's joint weight (COCO v > 1 clipped to 1)."""
        return np.minimum(self.keypoints[:, 2], 1.0).astype(np.float32)


def box_to_center_scale(
    box_xywh, aspect_ratio: float, padding: float = BOX_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """HRNet `_xywh2cs`: box → (center_xy [2], scale_wh [2]) with w/h = aspect_ratio, ×padding, /200."""
    x, y, w, h = (float(v) for v in box_xywh)
    if aspect_ratio <= 0:
        raise ValueError(
            f"aspect_ratio must be > 0 (width / height of the network input), got {aspect_ratio}"
        )
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    scale = np.array(fit_aspect(w, h, aspect_ratio), dtype=np.float64) / PIXEL_STD * padding
    return center, scale


def fit_aspect(w: float, h: float, aspect_ratio: float) -> tuple[float, float]:
    """(w, h) with its short side grown to w / h = aspect_ratio (HRNet `_xywh2cs` and
    `half_body_transform` alike)."""
    if w > aspect_ratio * h:
        return w, w / aspect_ratio
    if w < aspect_ratio * h:
        return h * aspect_ratio, h
    return w, h


def clean_box(bbox_xywh, image_wh: tuple[int, int]) -> np.ndarray | None:
    """HRNet's clipped box [x, y, w, h], or None when it is empty (x2 < x1 or y2 < y1)."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    width, height = image_wh
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 < x1 or y2 < y1:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float64)


# ------------------------------------------------------------------------------------------ files
def annotation_path(root: str | os.PathLike, split: str) -> Path:
    """`<root>/annotations/person_keypoints_<split>.json` (split as the release names it: `val2017`)."""
    return Path(root) / "annotations" / f"person_keypoints_{split}.json"


def image_dir(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / split


def read_json(path: Path, what: str) -> Any:
    """The content of JSON file `path`; CocoDataError "<what> <path> is not valid JSON: ..." if it is not."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoDataError(f"{what} {path} is not valid JSON: {err}") from err


class CocoIndex:
    """The lookups of pycocotools' `COCO` index that the person loading uses, built as its `createIndex`
    builds them: `imgs` / `anns` by id (a repeated id keeps the last record), each image's annotations in
    file order, `getImgIds()` in file order and `getAnnIds(imgIds, catIds, iscrowd)` filtering as
    pycocotools does (`iscrowd` compared with `==`, so False keeps iscrowd 0; None keeps all)."""

    def __init__(self, dataset: dict):
        self.dataset = dataset
        self.anns: dict[int, dict] = {}
        self.imgs: dict[int, dict] = {}
        self.cats: dict[int, dict] = {}
        self.img_to_anns: dict[int, list[dict]] = defaultdict(list)
        for ann in dataset["annotations"]:
            self.img_to_anns[ann["image_id"]].append(ann)
            self.anns[ann["id"]] = ann
            ann["category_id"]  # noqa: B018 — createIndex reads it here too (catToImgs): fails as early
        for img in dataset["images"]:
            self.imgs[img["id"]] = img
        for cat in dataset["categories"]:
            self.cats[cat["id"]] = cat

    def getImgIds(self) -> list[int]:  # noqa: N802 — pycocotools' name, so both indexes read alike
        return list(self.imgs)

    def getAnnIds(self, imgIds=(), catIds=(), iscrowd=None) -> list[int]:  # noqa: N802, N803
        if imgIds:
            anns = [a for i in imgIds for a in self.img_to_anns.get(i, ())]
        else:
            anns = self.dataset["annotations"]
        if catIds:
            anns = [a for a in anns if a["category_id"] in catIds]
        return [a["id"] for a in anns if iscrowd is None or a["iscrowd"] == iscrowd]

    def loadAnns(self, ids) -> list[dict]:  # noqa: N802
        return [self.anns[i] for i in ids]


def load_coco(root: str | os.PathLike, split: str) -> CocoIndex:
    """The annotation index of a split; CocoDataError naming the path when missing or malformed."""
    root = Path(root)
    if not root.is_dir():
        raise CocoDataError(f"COCO root {root} does not exist; expected a folder with {EXPECTED_LAYOUT}")
    path = annotation_path(root, split)
    if not path.is_file():
        raise CocoDataError(
            f"annotation file {path} not found; expected {EXPECTED_LAYOUT.format(split=split)}"
        )
    dataset = read_json(path, "annotation file")
    missing = [
        k
        for k in ("images", "annotations", "categories")
        if not isinstance(dataset, dict) or k not in dataset
    ]
    if missing:
        raise CocoDataError(
            f"annotation file {path} lacks the COCO key(s) {missing}; expected an object with images, "
            "annotations and categories"
        )
    try:
        return CocoIndex(dataset)
    except (KeyError, TypeError) as err:
        raise CocoDataError(f"annotation file {path} is malformed: missing or wrong field {err}") from err


def image_file(folder: Path, img: dict) -> str:
    """The file of COCO image record `img` in `folder`: its `file_name`, else COCO's 12-digit id name."""
    return str(folder / img.get("file_name", f"{int(img['id']):012d}.jpg"))


def check_images(root: str | os.PathLike, split: str, image_paths: list[str]) -> None:
    """CocoDataError when the image folder or any of `image_paths` is missing (names the first few)."""
    folder = image_dir(root, split)
    if not folder.is_dir():
        raise CocoDataError(
            f"image folder {folder} not found; expected {EXPECTED_LAYOUT.format(split=split)}"
        )
    present = set(os.listdir(folder))
    absent = sorted({p for p in image_paths if Path(p).name not in present})
    if absent:
        raise CocoDataError(
            f"{len(absent)} image(s) referenced by {annotation_path(root, split)} are missing from {folder}, "
            f"e.g. {', '.join(absent[:5])}"
        )


# ------------------------------------------------------------------------------------------ persons
def _gt_instance(coco, root, split, ann, *, with_keypoints, aspect_ratio, padding) -> PersonInstance | None:
    """One annotation → PersonInstance, or None when HRNet's filter (or the pretext's) drops it."""
    img = coco.imgs[ann["image_id"]]
    image_wh = (int(img["width"]), int(img["height"]))
    box = clean_box(ann["bbox"], image_wh)
    keypoints = np.asarray(ann.get("keypoints") or [0] * (3 * NUM_KEYPOINTS), dtype=np.float64)
    keypoints = keypoints.reshape(NUM_KEYPOINTS, 3)
    if box is None:
        return None
    if with_keypoints:
        # HRNet: area > 0, clean box valid (x2 >= x1, y2 >= y1), max(keypoints) > 0.
        if float(ann.get("area", 0.0)) <= 0 or keypoints.max() <= 0:
            return None
    elif box[2] <= 0 or box[3] <= 0:  # pretext crops need a box with positive size
        return None
    center, scale = box_to_center_scale(box, aspect_ratio, padding)
    return PersonInstance(
        image_id=int(ann["image_id"]),
        ann_id=int(ann["id"]),
        image_path=image_file(image_dir(root, split), img),
        image_wh=image_wh,
        bbox_xywh=box,
        center_xy=center,
        scale_wh=scale,
        keypoints=keypoints,
        num_keypoints=int(ann.get("num_keypoints", int((keypoints[:, 2] > 0).sum()))),
        area=float(ann.get("area", box[2] * box[3])),
        score=1.0,
    )


def load_persons(
    root: str | os.PathLike,
    split: str,
    *,
    with_keypoints: bool = False,
    aspect_ratio: float,
    padding: float = BOX_PADDING,
    check_files: bool = True,
) -> list[PersonInstance]:
    """Non-crowd person instances of `split`, ordered by (image id, annotation order).

    with_keypoints=False (pretext, paper §3): every non-crowd person with a clean box of positive size;
    keypoint labels are not looked at. with_keypoints=True (pose, paper §4.1): HRNet's training filter
    (area > 0, clean box valid, at least one labelled keypoint).
    """
    coco = load_coco(root, split)
    instances = []
    for image_id in sorted(coco.getImgIds()):
        for ann_id in coco.getAnnIds(imgIds=[image_id], catIds=[PERSON_CATEGORY_ID], iscrowd=False):
            ann = coco.anns[ann_id]
            try:
                inst = _gt_instance(
                    coco,
                    root,
                    split,
                    ann,
                    with_keypoints=with_keypoints,
                    aspect_ratio=aspect_ratio,
                    padding=padding,
                )
            except (KeyError, TypeError, ValueError) as err:  # a field missing or of the wrong shape
                raise CocoDataError(
                    f"annotation file {annotation_path(root, split)}: annotation id {ann_id} (image {image_id}) "
                    f"is malformed ({type(err).__name__}: {err}); expected bbox [x, y, w, h], keypoints "
                    f"[{3 * NUM_KEYPOINTS} numbers] and image width / height"
                ) from err
            if inst is not None:
                instances.append(inst)
    if check_files:
        check_images(root, split, [inst.image_path for inst in instances])
    log.info("%s/%s: %d person instances (with_keypoints=%s)", root, split, len(instances), with_keypoints)
    return instances


# ------------------------------------------------------------------------------------------ detections
def read_detections(det_file: Path) -> list[dict]:
    """The entries of a detection file (COCO results format), each checked for its four fields."""
    if not det_file.is_file():
        raise CocoDataError(f"detection file {det_file} not found")
    dets = read_json(det_file, "detection file")
    expected = "a JSON list of {image_id: int, category_id: int, bbox: [x, y, w, h], score: float}"
    if not isinstance(dets, list):
        raise CocoDataError(
            f"detection file {det_file}: top level is {type(dets).__name__}; expected {expected}"
        )
    for i, det in enumerate(dets):
        ok = isinstance(det, dict) and all(k in det for k in ("image_id", "category_id", "bbox", "score"))
        ok = ok and isinstance(det["bbox"], (list, tuple)) and len(det["bbox"]) == 4
        if not ok:
            raise CocoDataError(
                f"detection file {det_file}: entry {i} is {str(det)[:120]}; expected {expected}"
            )
    return dets


def detection_instance(
    det: dict, img: dict, image_path: str, aspect_ratio: float, padding: float = BOX_PADDING
) -> PersonInstance:
    """A person instance of one detection (COCO results format) on image `img`: the box unclipped, as
    HRNet uses it, no keypoints, the detector's score (val2017 and test-dev alike)."""
    box = np.asarray(det["bbox"], dtype=np.float64)
    center, scale = box_to_center_scale(box, aspect_ratio, padding)
    return PersonInstance(
        image_id=int(det["image_id"]),
        ann_id=None,
        image_path=image_path,
        image_wh=(int(img["width"]), int(img["height"])),
        bbox_xywh=box,
        center_xy=center,
        scale_wh=scale,
        keypoints=np.zeros((NUM_KEYPOINTS, 3), dtype=np.float64),
        num_keypoints=0,
        area=float(box[2] * box[3]),
        score=float(det["score"]),
    )


def load_detections(
    det_file: str | os.PathLike,
    root: str | os.PathLike,
    split: str,
    *,
    aspect_ratio: float,
    image_thre: float = 0.0,
    padding: float = BOX_PADDING,
    check_files: bool = True,
) -> list[PersonInstance]:
    """Person detections (category 1, score ≥ image_thre; HRNet IMAGE_THRE 0.0) as PersonInstances.

    Boxes are used unclipped, as HRNet does. Detections on images absent from the split's annotation
    file are dropped with a warning; if that drops every detection, the files do not match (error).
    """
    det_file = Path(det_file)
    dets = read_detections(det_file)
    coco = load_coco(root, split)
    instances = match_detections(
        dets,
        det_file,
        coco.imgs,
        image_dir(root, split),
        annotation_path(root, split),
        aspect_ratio=aspect_ratio,
        image_thre=image_thre,
        padding=padding,
    )
    if check_files:
        check_images(root, split, [inst.image_path for inst in instances])
    log.info("%s: %d person detections with score >= %g", det_file, len(instances), image_thre)
    return instances


def match_detections(
    dets: list[dict],
    det_file: Path,
    images: dict[int, dict],
    folder: Path,
    images_file: Path,
    *,
    aspect_ratio: float,
    image_thre: float,
    padding: float = BOX_PADDING,
) -> list[PersonInstance]:
    """PersonInstances of the person detections (category 1, score ≥ image_thre) in `dets` (read from
    `det_file`) that lie on `images` ({image id: COCO image record}, listed in `images_file`, their files
    in `folder`); val2017 and test-dev alike. Detections on other images are dropped with a warning; if
    that drops every detection, the two files do not belong together (CocoDataError naming both)."""
    instances, unknown = [], set()
    for det in dets:
        if int(det["category_id"]) != PERSON_CATEGORY_ID or float(det["score"]) < image_thre:
            continue
        img = images.get(int(det["image_id"]))
        if img is None:
            unknown.add(int(det["image_id"]))
            continue
        instances.append(detection_instance(det, img, image_file(folder, img), aspect_ratio, padding))
    if unknown:
        msg = (
            f"detection file {det_file}: {len(unknown)} image id(s) not in {images_file}, "
            f"e.g. {sorted(unknown)[:5]}"
        )
        if not instances:
            raise CocoDataError(msg + "; no detection matches this split")
        log.warning("%s; their detections are ignored", msg)
    return instances
