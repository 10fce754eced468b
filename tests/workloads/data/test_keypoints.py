"""COCO keypoint constants: names, flip pairs, sigmas and skeleton agree with each other and with COCO."""

import json

import numpy as np
import pytest

from workloads.data import keypoints as kp


def test_flip_pairs_are_left_right_counterparts():
    for left, right in kp.FLIP_PAIRS:
        assert kp.KEYPOINT_NAMES[left].startswith("left_")
        assert kp.KEYPOINT_NAMES[right] == kp.KEYPOINT_NAMES[left].replace("left_", "right_")
    # every left/right joint appears in exactly one pair; the nose in none
    flat = sorted(i for pair in kp.FLIP_PAIRS for i in pair)
    assert flat == list(range(1, 17))


def test_flip_index_is_an_involution_swapping_sides():
    assert np.array_equal(kp.FLIP_INDEX[kp.FLIP_INDEX], np.arange(17))
    assert kp.FLIP_INDEX[0] == 0 and kp.FLIP_INDEX[5] == 6 and kp.FLIP_INDEX[16] == 15


def test_sigmas_symmetric_and_coco_values():
    assert kp.OKS_SIGMAS.shape == (17,)
    assert np.allclose(kp.OKS_SIGMAS, kp.OKS_SIGMAS[kp.FLIP_INDEX])
    assert kp.OKS_SIGMAS[0] == pytest.approx(0.026) and kp.OKS_SIGMAS[11] == pytest.approx(0.107)


@pytest.mark.realdata
def test_person_category_matches_the_release(coco_mini):
    data = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    released = data["categories"][0]
    ours = kp.person_category()
    assert ours["keypoints"] == released["keypoints"]
    assert ours["skeleton"] == released["skeleton"]
    assert ours["id"] == released["id"] == 1
