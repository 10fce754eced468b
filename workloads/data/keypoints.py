"""COCO person-keypoint constants (paper §4.1: COCO top-down keypoint estimation, 17 joints).

Indices are 0-based throughout the project. The COCO annotation files store the skeleton 1-based;
`COCO_SKELETON_1BASED` is that form.
"""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# Left/right pairs, 0-based (HRNet lib/dataset/coco.py flip_pairs).
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (3, 4),
    (5, 6),
    (7, 8),
    (9, 10),
    (11, 12),
    (13, 14),
    (15, 16),
)


def _flip_index() -> np.ndarray:
    index = np.arange(NUM_KEYPOINTS)
    for left, right in FLIP_PAIRS:
        index[left], index[right] = right, left
    return index


# FLIP_INDEX[k] = the left/right counterpart of joint k (the nose maps to itself).
FLIP_INDEX: np.ndarray = _flip_index()
FLIP_INDEX.setflags(write=False)

# COCO keypoint sigmas (pycocotools COCOeval.Params.setKpParams: the /10 values).
OKS_SIGMAS: np.ndarray = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)
OKS_SIGMAS.setflags(write=False)

# The skeleton of the COCO person category, exactly as in person_keypoints_*2017.json (1-based).
COCO_SKELETON_1BASED: tuple[tuple[int, int], ...] = (
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
)

# Half-body augmentation groups (HRNet JointsDataset: upper 0-10, lower 11-16).
UPPER_BODY_IDS: tuple[int, ...] = tuple(range(0, 11))
LOWER_BODY_IDS: tuple[int, ...] = tuple(range(11, 17))

PERSON_CATEGORY_ID = 1


def person_category() -> dict:
    """The COCO `categories` entry of the person class (as in the 2017 keypoint files)."""
    return {
        "supercategory": "person",
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in COCO_SKELETON_1BASED],
    }
