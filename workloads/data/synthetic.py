"""A small synthetic COCO-format person-keypoint set: the embedded default that runs the whole chain
(pretext paper §3, finetune and evaluation paper §4) on a laptop without COCO.

Writes, under `out_dir`, the COCO 2017 layout: `annotations/person_keypoints_{train,val}2017.json`,
`train2017/%012d.jpg`, `val2017/%012d.jpg`, and HRNet's detection file
`person_detection_results/COCO_val2017_detections_AP_H_56_person.json` (jittered GT boxes, a few
misses and false positives). Each image has 1-3 stick figures (`stick_figures.py`) on a textured background,
with occluders and figures overlapping each other, so visibility flags 0, 1 and 2 all occur, and a few
persons (small ones, and some at random) carry no labelled keypoints. Deterministic by seed: every
image has its own RNG `(seed, split, index)`, JSON is written with fixed rounding and key order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from workloads.data.coco import annotation_path
from workloads.data.keypoints import NUM_KEYPOINTS, PERSON_CATEGORY_ID, person_category
from workloads.data.stick_figures import draw_figure, sample_figure

log = logging.getLogger(__name__)

DETECTION_FILE = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"  # HRNet's name
SPLITS = {"train2017": (0, 1), "val2017": (1, 1_000_001)}  # split → (RNG stream, first image id)
JPEG_QUALITY = 92
UNLABELLED_PROB = 0.05  # persons annotated with a box only (COCO has such persons)
OCCLUDED_LABEL_PROB = 0.7  # an occluded joint is labelled v=1 with this probability, else left v=0
SMALL_PERSON_PX = 40  # figures shorter than this get no keypoint labels (like small COCO persons)
# `area` (the OKS scale s², and the small/medium/large split) is this share of the box area: a COCO
# person's segmentation covers roughly half its box; the thin figures' own pixel count would make OKS
# far stricter than on COCO.
AREA_PER_BOX_AREA = 0.5


# ------------------------------------------------------------------------------------------ images
def draw_background(rng: np.random.Generator, size_wh: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 textured background: smooth noise, stripes or checks, plus thin clutter."""
    w, h = size_wh
    kind = rng.integers(3)
    if kind == 0:
        grid = rng.uniform(40, 200, size=(rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
        img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang, period = rng.uniform(0, np.pi), rng.uniform(8, 40)
        phase = (xx * np.cos(ang) + yy * np.sin(ang)) / period
        if kind == 1:
            t = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        else:
            t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
        c0, c1 = rng.uniform(40, 200, size=(2, 3)).astype(np.float32)
        img = c0 + t[..., None] * (c1 - c0)
    img = img + rng.normal(0, 8, size=(h, w, 1)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 6)):
        p0, p1 = rng.integers(0, (w, h), size=(2, 2))
        cv2.line(img, tuple(map(int, p0)), tuple(map(int, p1)), tuple(map(int, rng.integers(0, 256, 3))), 1)
    return img


def _draw_occluder(rng, image, mask, near_xy) -> None:
    """A solid rectangle or ellipse over `near_xy`; its pixels belong to nobody (mask 0)."""
    h, w = mask.shape
    half = rng.uniform(0.06, 0.16, size=2) * np.array([w, h])
    centre = np.asarray(near_xy) + rng.normal(0, 0.5, size=2) * half
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    ellipse, angle = rng.random() < 0.5, float(rng.uniform(0, 180))
    p0, p1 = tuple(int(v) for v in centre - half), tuple(int(v) for v in centre + half)
    for canvas, fill in ((image, color), (mask, 0)):
        if ellipse:
            axes = tuple(int(v) for v in half)
            cv2.ellipse(canvas, tuple(int(v) for v in centre), axes, angle, 0, 360, fill, -1)
        else:
            cv2.rectangle(canvas, p0, p1, fill, -1)


def _place_persons(rng, size_wh):
    """(height_px, center_xy, rot_deg, facing_front) for 1-3 persons; roughly one in ten is small."""
    w, h = size_wh
    out = []
    for _ in range(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])):
        small = rng.random() < 0.1
        height = rng.uniform(22, SMALL_PERSON_PX - 2) if small else rng.uniform(0.45, 0.95) * h
        rot = rng.normal(0, 12) if rng.random() < 0.85 else rng.uniform(-100, 100)
        centre = rng.uniform([0.1 * w, 0.25 * h], [0.9 * w, 0.75 * h])
        out.append((height, centre, rot, rng.random() < 0.8))
    return sorted(out, key=lambda p: p[0])  # the larger ones are drawn later (in front)


def _label(rng, fig, mask, pid, labelled) -> np.ndarray:
    """[17, 3] COCO keypoints (x, y, v) from what is visible of figure `pid` in the final mask."""
    h, w = mask.shape
    kps = np.zeros((NUM_KEYPOINTS, 3), dtype=np.int64)
    if not labelled:
        return kps
    for k, (x, y) in enumerate(np.round(fig.keypoints_xy).astype(int)):
        if fig.hidden[k] == 2 or not (0 <= x < w and 0 <= y < h):
            continue  # COCO leaves joints outside the image / unseen face parts unlabelled
        if fig.hidden[k] == 0 and mask[y, x] == pid:
            kps[k] = (x, y, 2)
        elif rng.random() < OCCLUDED_LABEL_PROB:
            kps[k] = (x, y, 1)
    return kps


def render_image(rng: np.random.Generator, size_wh: tuple[int, int]) -> tuple[np.ndarray, list[dict]]:
    """One image [H, W, 3] uint8 RGB and its persons: {keypoints [17,3], bbox_xywh, area}."""
    image = draw_background(rng, size_wh)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    figures = []
    for pid, (height, centre, rot, front) in enumerate(_place_persons(rng, size_wh), start=1):
        fig, head = sample_figure(rng, height, centre, rot, front)
        draw_figure(image, mask, fig, head, pid)
        figures.append(fig)
    for _ in range(rng.integers(0, 3) if rng.random() < 0.45 else 0):
        target = figures[rng.integers(len(figures))].keypoints_xy
        _draw_occluder(rng, image, mask, target[rng.integers(NUM_KEYPOINTS)])
    persons = []
    for pid, fig in enumerate(figures, start=1):
        ys, xs = np.nonzero(mask == pid)
        if len(xs) < 20:  # hidden behind others: no annotation, as COCO would not have one
            continue
        labelled = fig.height_px >= SMALL_PERSON_PX and rng.random() >= UNLABELLED_PROB
        box = [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
        area = AREA_PER_BOX_AREA * box[2] * box[3]
        persons.append({"keypoints": _label(rng, fig, mask, pid, labelled), "bbox_xywh": box, "area": area})
    return image, persons


# ------------------------------------------------------------------------------------------ json
def _annotation(ann_id: int, image_id: int, person: dict) -> dict:
    kps = person["keypoints"]
    x, y, w, h = person["bbox_xywh"]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": PERSON_CATEGORY_ID,
        "iscrowd": 0,
        "area": round(person["area"], 2),
        "bbox": [round(v, 2) for v in person["bbox_xywh"]],
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],  # box polygon (no masks drawn)
        "num_keypoints": int((kps[:, 2] > 0).sum()),
        "keypoints": [int(v) for v in kps.reshape(-1)],
    }


def _detections(rng: np.random.Generator, image_id: int, persons: list[dict], size_wh) -> list[dict]:
    """Jittered GT boxes (5 % missed) with scores, plus 0-2 low-scoring false positives."""
    dets = []
    for person in persons:
        if rng.random() < 0.05:
            continue
        x, y, w, h = person["bbox_xywh"]
        jitter = rng.normal(0, 0.06, size=4) * np.array([w, h, w, h])
        box = [x + jitter[0], y + jitter[1], max(2.0, w + jitter[2]), max(2.0, h + jitter[3])]
        score = float(np.clip(rng.normal(0.9, 0.08), 0.3, 1.0))
        dets.append((box, score))
    for _ in range(rng.integers(0, 3)):
        wh = rng.uniform(10, 0.5 * min(size_wh), size=2)
        xy = rng.uniform(0, np.asarray(size_wh) - wh)
        dets.append(([*xy, *wh], float(rng.uniform(0.02, 0.5))))
    return [
        {
            "image_id": image_id,
            "category_id": PERSON_CATEGORY_ID,
            "bbox": [round(float(v), 2) for v in b],
            "score": round(s, 6),
        }
        for b, s in dets
    ]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ entry
def generate_split(
    out_dir: Path, split: str, n_images: int, seed: int, image_size: tuple[int, int]
) -> tuple[dict, list]:
    """Images + annotation file of one split; returns (counts, detections of its images)."""
    stream, first_id = SPLITS[split]
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    images, anns, dets = [], [], []
    for index in range(n_images):
        rng = np.random.default_rng([seed, stream, index])
        image_id = first_id + index
        image, persons = render_image(rng, image_size)
        file_name = f"{image_id:012d}.jpg"
        ok = cv2.imwrite(
            str(out_dir / split / file_name),
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
        )
        if not ok:
            raise OSError(f"could not write image {out_dir / split / file_name}")
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": image_size[0],
                "height": image_size[1],
                "license": 0,
            }
        )
        for j, person in enumerate(persons):  # at most 3 persons per image
            anns.append(_annotation(image_id * 10 + j, image_id, person))
        dets.extend(_detections(rng, image_id, persons, image_size))
    data = {
        "info": {"description": f"hsjp-study synthetic persons, seed {seed}, split {split}", "version": "1"},
        "licenses": [{"id": 0, "name": "generated by hsjp-study", "url": ""}],
        "images": images,
        "annotations": anns,
        "categories": [person_category()],
    }
    _write_json(annotation_path(out_dir, split), data)
    vis = np.array([a["keypoints"][2::3] for a in anns]).reshape(-1, NUM_KEYPOINTS)
    counts = {
        "images": len(images),
        "persons": len(anns),
        "persons_with_keypoints": int(sum(a["num_keypoints"] > 0 for a in anns)),
        "visibility_counts": {str(v): int((vis == v).sum()) for v in (0, 1, 2)},
    }
    return counts, dets


def generate(
    out_dir: str | os.PathLike,
    n_train: int = 64,
    n_val: int = 16,
    seed: int = 0,
    image_size: tuple[int, int] = (256, 192),
) -> dict:
    """Write a synthetic COCO-format person-keypoint set under `out_dir`; returns a summary dict.

    image_size is (W, H) px. Same arguments → byte-identical files.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    start = time.perf_counter()
    out = Path(out_dir)
    size = (int(image_size[0]), int(image_size[1]))
    train_counts, _ = generate_split(out, "train2017", n_train, seed, size)
    val_counts, dets = generate_split(out, "val2017", n_val, seed, size)
    _write_json(out / DETECTION_FILE, dets)
    summary = {
        "root": str(out.resolve()),
        "seed": seed,
        "image_size_wh": list(size),
        "splits": {"train2017": train_counts, "val2017": val_counts},
        "detections": len(dets),
        "detection_file": str((out / DETECTION_FILE).resolve()),
        "seconds": round(time.perf_counter() - start, 3),
    }
    log.info("synthetic COCO set at %s: %s", out, summary["splits"])
    return summary
