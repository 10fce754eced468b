"""Crop geometry: HRNet's three-point affine, its inverse, joint/pixel alignment on a real image, I/O."""

import cv2
import numpy as np
import pytest
import torch

from workloads.data.coco import CocoDataError, load_persons
from workloads.data.keypoints import FLIP_PAIRS
from workloads.data.transforms import (
    affine_points,
    flip_joints,
    get_affine_transform,
    normalize_image,
    read_image,
    warp_crop,
)


def _reference_affine(center, scale, rot_deg, out_wh):
    """The construction described in the pose reference notes §3, solved by cv2 in float32."""
    src_w = scale[0] * 200.0
    r = np.deg2rad(rot_deg)
    src_dir = np.array(
        [0 * np.cos(r) - (-0.5 * src_w) * np.sin(r), 0 * np.sin(r) + (-0.5 * src_w) * np.cos(r)]
    )
    c = np.asarray(center, float)
    d0 = np.array([out_wh[0] / 2, out_wh[1] / 2])
    d1 = d0 + [0, -out_wh[0] / 2]
    s = [c, c + src_dir]
    d = [d0, d1]
    s.append(s[1] + [-(s[0] - s[1])[1], (s[0] - s[1])[0]])
    d.append(d[1] + [-(d[0] - d[1])[1], (d[0] - d[1])[0]])
    return cv2.getAffineTransform(np.float32(s), np.float32(d))


@pytest.mark.parametrize("rot", [0.0, 30.0, -45.0, 90.0])
def test_affine_matches_reference_construction(rot):
    mat = get_affine_transform([321.5, 200.25], [1.6, 2.1333], rot, (192, 256))
    assert mat.shape == (2, 3)
    assert np.allclose(mat, _reference_affine([321.5, 200.25], [1.6, 2.1333], rot, (192, 256)), atol=1e-3)


def test_box_fills_the_output():
    center, scale = np.array([100.0, 50.0]), np.array([0.75, 1.0])  # a 150 x 200 px box
    mat = get_affine_transform(center, scale, 0, (192, 256))
    corners = np.array([[25.0, -50.0], [175.0, 150.0], [100.0, 50.0]])
    assert np.allclose(affine_points(corners, mat), [[0, 0], [192, 256], [96, 128]])


@pytest.mark.parametrize("rot", [0.0, 37.0, -120.0])
def test_inverse_inverts_forward(rot):
    fwd = get_affine_transform([50, 70], [0.4, 0.6], rot, (48, 64))
    inv = get_affine_transform([50, 70], [0.4, 0.6], rot, (48, 64), inv=True)
    pts = np.random.default_rng(0).uniform(-100, 300, size=(17, 2))
    assert np.allclose(affine_points(affine_points(pts, fwd), inv), pts)
    full = np.vstack([fwd, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]])
    assert np.allclose(full, np.eye(3))


def test_rotation_preserves_distances_up_to_zoom():
    mat = get_affine_transform([0, 0], [1.0, 1.0], 33.0, (100, 100))  # 200 px → 100 px: zoom 0.5
    a, b = affine_points(np.array([[10.0, 0.0], [0.0, 20.0]]), mat) - affine_points(np.zeros((1, 2)), mat)
    assert np.linalg.norm(a) == pytest.approx(5.0) and np.linalg.norm(b) == pytest.approx(10.0)
    assert np.dot(a, b) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.realdata
@pytest.mark.parametrize("rot", [0.0, 30.0, -45.0])
def test_warped_keypoint_lands_on_the_same_content(coco_mini, rot):
    inst = load_persons(coco_mini, "val2017", with_keypoints=True, aspect_ratio=0.75)[0]
    image = read_image(inst.image_path)
    mat = get_affine_transform(inst.center_xy, inst.scale_wh * 0.8, rot, (192, 256))
    for k in np.flatnonzero(inst.keypoints[:, 2] > 0)[:4]:
        x, y = inst.keypoints[k, :2]
        marked = image.copy()
        cv2.circle(marked, (int(round(x)), int(round(y))), 3, (255, 0, 255), -1)  # magenta dot
        crop = warp_crop(marked, mat, (192, 256)).astype(int)
        magenta = (crop[..., 0] > 200) & (crop[..., 2] > 200) & (crop[..., 1] < 60)
        ys, xs = np.nonzero(magenta)
        assert len(xs) > 3, f"joint {k} not in crop"
        expected = affine_points(np.array([[round(x), round(y)]]), mat)[0]
        assert np.hypot(xs.mean() - expected[0], ys.mean() - expected[1]) < 1.5


@pytest.mark.realdata
def test_unrotated_crop_at_unit_zoom_is_a_shifted_copy(coco_mini):
    inst = load_persons(coco_mini, "val2017", with_keypoints=True, aspect_ratio=0.75)[0]
    image = read_image(inst.image_path)
    center = np.round(inst.center_xy)
    mat = get_affine_transform(center, [192 / 200, 256 / 200], 0, (192, 256))  # 1 px → 1 px
    crop = warp_crop(image, mat, (192, 256))
    checked = 0
    for x, y in np.round(inst.keypoints[inst.keypoints[:, 2] > 0, :2]).astype(int):
        cx, cy = (int(v) for v in np.round(affine_points(np.array([[x, y]]), mat)[0]))
        if 3 <= cx < 189 and 3 <= cy < 253 and 3 <= x < image.shape[1] - 3 and 3 <= y < image.shape[0] - 3:
            assert np.array_equal(crop[cy - 3 : cy + 4, cx - 3 : cx + 4], image[y - 3 : y + 4, x - 3 : x + 4])
            checked += 1
    assert checked >= 3


def test_flip_joints_twice_is_identity_and_matches_mirrored_pixels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)
    joints = rng.integers(0, 30, size=(17, 2)).astype(float)
    joints[:, 1] = rng.integers(0, 40, size=17)
    vis = rng.integers(0, 2, size=17).astype(float)
    fj, fv = flip_joints(joints, vis, 30, FLIP_PAIRS)
    mirrored = image[:, ::-1]
    for k in range(17):
        src = FLIP_PAIRS_PARTNER[k]
        assert fv[k] == vis[src]
        assert np.array_equal(
            mirrored[int(fj[k, 1]), int(fj[k, 0])], image[int(joints[src, 1]), int(joints[src, 0])]
        )
    back, back_vis = flip_joints(fj, fv, 30, FLIP_PAIRS)
    assert np.allclose(back, joints) and np.array_equal(back_vis, vis)


FLIP_PAIRS_PARTNER = {0: 0, **{a: b for a, b in FLIP_PAIRS}, **{b: a for a, b in FLIP_PAIRS}}


def test_read_image_is_rgb_and_errors_name_the_file(tmp_path):
    bgr = np.zeros((5, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert (
        rgb.shape == (5, 6, 3)
        and rgb.dtype == np.uint8
        and (rgb[..., 0] == 255).all()
        and rgb[..., 2].max() == 0
    )
    with pytest.raises(CocoDataError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(CocoDataError, match="corrupt.jpg"):
        read_image(tmp_path / "corrupt.jpg")


def test_normalize_image_layout_and_values():
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, 1] = (255, 0, 128)
    t = normalize_image(img)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert t[0, 0, 1].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
    assert t[1, 0, 1].item() == pytest.approx((0 - 0.456) / 0.224, rel=1e-5)
    assert t[2, 0, 0].item() == pytest.approx(-0.406 / 0.225, rel=1e-5)


def test_uint8_warp_equals_the_float_grid_sample_warp():
    """warp_affine_uint8 (gathered neighbours) is warp_affine_batch (grid_sample) on a float copy, up to
    float32 rounding of the weights — including outside the image (zeros) and mirrored matrices."""
    from workloads.data.transforms import warp_affine_batch, warp_affine_uint8

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 37, 53), dtype=torch.uint8, generator=g)
    mats = torch.tensor(
        [
            [[0.7, 0.2, -3.0], [-0.2, 0.7, 4.5]],
            [[-1.3, 0.0, 60.0], [0.0, 1.3, -5.0]],  # a mirror, parts outside the image
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    ref = warp_affine_batch(x.float(), mats, (41, 29))
    got = warp_affine_uint8(x, mats, (41, 29))
    assert got.shape == ref.shape == (3, 3, 29, 41) and got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.05
    assert torch.equal(got[2][:, :29, :37], x[2, :, :29, :37].float())  # identity: an exact copy
