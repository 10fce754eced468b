"""Articulated stick figures with the 17 COCO keypoints, for the synthetic data set (no paper section:
it lets the whole chain of paper §3-§4 run without COCO).

A figure is posed in a body frame (units of its height, y down, facing the viewer so the person's
left is on image right), then scaled, rotated and placed. Left limbs are drawn in warm colours with
round joints, right limbs in cool colours with square joints, so left/right (and therefore flips)
are learnable from pixels. Faces turned sideways hide the far ear/eye (labelled, occluded: v=1);
figures seen from the back have no labelled eyes/nose (v=0).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from workloads.data.keypoints import NUM_KEYPOINTS

# Body-frame joint indices (COCO order).
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNE, R_KNE, L_ANK, R_ANK = 11, 12, 13, 14, 15, 16
LIMBS_LEFT = ((L_SHO, L_ELB), (L_ELB, L_WRI), (L_HIP, L_KNE), (L_KNE, L_ANK))
LIMBS_RIGHT = ((R_SHO, R_ELB), (R_ELB, R_WRI), (R_HIP, R_KNE), (R_KNE, R_ANK))
BODY_JOINTS_LEFT = (L_SHO, L_ELB, L_WRI, L_HIP, L_KNE, L_ANK)
BODY_JOINTS_RIGHT = (R_SHO, R_ELB, R_WRI, R_HIP, R_KNE, R_ANK)


@dataclass(frozen=True)
class Figure:
    """One posed person in image coordinates."""

    keypoints_xy: np.ndarray  # [17, 2] float image px
    hidden: np.ndarray  # [17] int: 0 = drawn, 1 = self-occluded (labelled, v=1), 2 = unlabelled (v=0)
    height_px: float
    facing_front: bool
    left_rgb: tuple[int, int, int]
    right_rgb: tuple[int, int, int]
    torso_rgb: tuple[int, int, int]
    head_rgb: tuple[int, int, int]
    thickness: int


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _unit(angle_rad: float) -> np.ndarray:
    """Direction at `angle_rad` from straight down (y down), positive towards +x."""
    return np.array([np.sin(angle_rad), np.cos(angle_rad)])


def _limb_chain(rng, root, side, upper_range, bend_range, lengths):
    """Two-segment limb from `root` on `side` (+1 = +x); angles in degrees from straight down."""
    a1 = np.deg2rad(rng.uniform(*upper_range))
    a2 = a1 + np.deg2rad(rng.uniform(*bend_range))
    mid = root + lengths[0] * _unit(side * a1)
    return mid, mid + lengths[1] * _unit(side * a2)


def sample_body(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints [17, 2] in the body frame (height ~1, pelvis at 0, y down) and head yaw in [-1, 1]."""
    kp = np.zeros((NUM_KEYPOINTS, 2))
    lean = np.deg2rad(rng.normal(0.0, 8.0))
    up, right = -_unit(lean), np.array([np.cos(lean), -np.sin(lean)])  # `right` points to person's left
    shoulder_c = 0.30 * up
    kp[L_SHO], kp[R_SHO] = shoulder_c + 0.11 * right, shoulder_c - 0.11 * right
    kp[L_HIP], kp[R_HIP] = 0.08 * right, -0.08 * right
    for side, (sho, elb, wri) in ((1, (L_SHO, L_ELB, L_WRI)), (-1, (R_SHO, R_ELB, R_WRI))):
        kp[elb], kp[wri] = _limb_chain(rng, kp[sho], side, (-20, 160), (-140, 30), (0.16, 0.14))
    for side, (hip, kne, ank) in ((1, (L_HIP, L_KNE, L_ANK)), (-1, (R_HIP, R_KNE, R_ANK))):
        kp[kne], kp[ank] = _limb_chain(rng, kp[hip], side, (-15, 45), (-60, 15), (0.24, 0.23))
    tilt = lean + np.deg2rad(rng.normal(0.0, 10.0))
    h_up, h_right = -_unit(tilt), np.array([np.cos(tilt), -np.sin(tilt)])
    head = shoulder_c + 0.13 * h_up
    yaw = float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))  # > 0: face turned towards the person's left
    kp[NOSE] = head + 0.035 * yaw * h_right - 0.012 * h_up
    kp[L_EYE] = head + (0.026 + 0.02 * yaw) * h_right + 0.014 * h_up
    kp[R_EYE] = head + (-0.026 + 0.02 * yaw) * h_right + 0.014 * h_up
    kp[L_EAR] = head + (0.058 - 0.02 * max(yaw, 0.0)) * h_right
    kp[R_EAR] = head - (0.058 + 0.02 * min(yaw, 0.0)) * h_right
    return kp, np.array([yaw, *head])


def sample_figure(
    rng: np.random.Generator, height_px: float, center_xy, rot_deg: float, facing_front: bool
) -> tuple[Figure, np.ndarray]:
    """A posed, coloured figure; also returns the head centre in image px."""
    body, head_info = sample_body(rng)
    yaw, head = head_info[0], head_info[1:]
    hidden = np.zeros(NUM_KEYPOINTS, dtype=np.int64)
    if facing_front:
        if yaw > 0.55:  # turned to its left: its right ear (far side) is behind the head
            hidden[R_EAR] = 1
        if yaw < -0.55:
            hidden[L_EAR] = 1
    else:  # seen from the back: mirror so the person's left is on image left; no face
        body[:, 0] *= -1.0
        head = head * np.array([-1.0, 1.0])
        hidden[[NOSE, L_EYE, R_EYE]] = 2
    pts = np.vstack([body, head[None]]) * height_px
    c, s = np.cos(np.deg2rad(rot_deg)), np.sin(np.deg2rad(rot_deg))
    pts = pts @ np.array([[c, s], [-s, c]])
    extent_mid = (pts[:-1].min(0) + pts[:-1].max(0)) / 2.0
    pts = pts - extent_mid + np.asarray(center_xy, dtype=np.float64)
    warm, cool = rng.uniform(-0.05, 0.12), rng.uniform(0.45, 0.68)  # hue: red-yellow vs cyan-blue
    fig = Figure(
        keypoints_xy=pts[:-1],
        hidden=hidden,
        height_px=float(height_px),
        facing_front=facing_front,
        left_rgb=_hsv(warm, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)),
        right_rgb=_hsv(cool, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)),
        torso_rgb=_hsv(rng.uniform(0.7, 0.95), rng.uniform(0.0, 0.5), rng.uniform(0.3, 0.7)),
        head_rgb=_hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.95)),
        thickness=max(2, int(round(height_px * rng.uniform(0.03, 0.055)))),
    )
    return fig, pts[-1]


def _ipt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _joint(canvas, p, radius, color, square: bool) -> None:
    x, y = _ipt(p)
    if square:
        cv2.rectangle(canvas, (x - radius, y - radius), (x + radius, y + radius), color, -1)
    else:
        cv2.circle(canvas, (x, y), radius, color, -1, cv2.LINE_AA if canvas.ndim == 3 else cv2.LINE_8)


def draw_figure(
    image: np.ndarray, mask: np.ndarray, fig: Figure, head_xy: np.ndarray, mask_value: int
) -> None:
    """Draw `fig` onto `image` [H, W, 3] uint8 RGB and `mask` [H, W] (pixels set to mask_value), in place."""
    kp, t = fig.keypoints_xy, fig.thickness
    r_joint = max(2, int(round(t * 0.8)))
    for canvas, fill in ((image, None), (mask, mask_value)):

        def col(rgb, fill=fill):
            return rgb if fill is None else int(fill)

        torso = np.array([_ipt(kp[i]) for i in (L_SHO, R_SHO, R_HIP, L_HIP)], dtype=np.int32)
        cv2.fillConvexPoly(canvas, torso, col(fig.torso_rgb))
        for limbs, rgb in ((LIMBS_LEFT, fig.left_rgb), (LIMBS_RIGHT, fig.right_rgb)):
            for a, b in limbs:
                cv2.line(canvas, _ipt(kp[a]), _ipt(kp[b]), col(rgb), t)
        light_l = tuple(min(255, c + 70) for c in fig.left_rgb)
        dark_r = tuple(max(0, c - 60) for c in fig.right_rgb)
        for i in BODY_JOINTS_LEFT:
            _joint(canvas, kp[i], r_joint, col(light_l), square=False)
        for i in BODY_JOINTS_RIGHT:
            _joint(canvas, kp[i], r_joint, col(dark_r), square=True)
        head_r = max(3, int(round(0.07 * fig.height_px)))
        neck = (kp[L_SHO] + kp[R_SHO]) / 2.0
        cv2.line(canvas, _ipt(neck), _ipt(head_xy), col(fig.torso_rgb), max(2, t))
        head_rgb = fig.head_rgb if fig.facing_front else (40, 30, 25)
        cv2.circle(canvas, _ipt(head_xy), head_r, col(head_rgb), -1)
        r_face = max(1, int(round(0.014 * fig.height_px)))
        for i, rgb, square in ((L_EAR, light_l, False), (R_EAR, dark_r, True)):
            if fig.hidden[i] == 0:
                _joint(canvas, kp[i], r_face + 1, col(rgb), square)
        if fig.facing_front:
            for i, rgb in ((L_EYE, (255, 255, 255)), (R_EYE, (20, 20, 20)), (NOSE, (200, 30, 30))):
                if fig.hidden[i] == 0:
                    _joint(canvas, kp[i], r_face, col(rgb), square=(i == R_EYE))
