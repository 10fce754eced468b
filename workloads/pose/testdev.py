"""Evaluation splits without public keypoint annotations (COCO test-dev2017): the server's results file.

An evaluation-only stage (`run_evaluation`, the plan's `evaluate` kind: one per finetune and split of
its `finetune.test_splits`) loads its finetune's best weights (`ctx.parent_weights()`) and predicts the
split; `hsjp-study evaluate --checkpoint ... --split test-dev2017` does the same for a checkpoint file.

COCO's test-dev has only image info (`annotations/image_info_test-dev2017.json`: images, no
annotations); its images lie in `test2017/`; the persons come from a detection file (HRNet's
`COCO_test-dev2017_detections_AP_H_609_person.json`). We predict every detection of the split's images
with the same inference as val (flip test, decoding, rescoring, OKS-NMS: inference.predict) and
write what the evaluation server takes: `person_keypoints_<split>_<alg>_results.json` (a JSON list of
{image_id, category_id, keypoints [51], score}) and `..._results.zip` holding that one file under the
same name (the naming of cocoapi's example results, e.g. `person_keypoints_val2014_fakekeypoints100_results.json`:
`<alg>` without underscores). No AP is computed here: there is nothing to
score against. The server's returned stats, placed beside the results file as
`person_keypoints_<split>_<name>_results.stats.json`, are read back by `hsjp-study report`
(reports/collect.py `parse_server_stats`; the format is in docs/paper-silent-choices.md, "test-dev").
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads.config import DataConfig, EvaluationConfig, FinetuneConfig
from workloads.context import StageContext, StageResult
from workloads.data.coco import (
    CocoDataError,
    PersonInstance,
    check_images,
    match_detections,
    read_detections,
    read_json,
)
from workloads.data.keypoints import NUM_KEYPOINTS, PERSON_CATEGORY_ID
from workloads.pose import inference

log = logging.getLogger(__name__)

ALG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
"""The `<alg>` of a results file name (cocoapi's examples: `fakekeypoints100`; '_' separates the parts)."""
# COCO 2017: test-dev and test-challenge are subsets of the test2017 images (cocodataset.org/#download)
TEST_IMAGE_FOLDERS = {"test-dev2017": "test2017", "test-challenge2017": "test2017"}


def image_info_path(root: str | os.PathLike[str], split: str) -> Path:
    """`<root>/annotations/image_info_<split>.json` (COCO's name for the image list of a test split)."""
    return Path(root) / "annotations" / f"image_info_{split}.json"


def test_image_dir(root: str | os.PathLike[str], split: str) -> Path:
    """The images of a test split: `test2017/` for test-dev2017 / test-challenge2017, else `<split>/`."""
    return Path(root) / TEST_IMAGE_FOLDERS.get(split, split)


def results_name(split: str, name: str) -> str:
    """The evaluation server's file name: `person_keypoints_<split>_<name>_results.json`; `name` (the
    server's `<alg>`) must be non-empty, without underscores (the name's separators) or path characters."""
    if not ALG_NAME.fullmatch(name or ""):
        raise ValueError(f"results file <alg> {name!r}: expected letters, digits and '-' only (no '_')")
    return f"person_keypoints_{split}_{name}_results.json"


def alg_name(*parts: str) -> str:
    """An `<alg>` from free text (a backbone, a file stem): characters outside [A-Za-z0-9-] dropped, the
    parts joined by '-'."""
    cleaned = [re.sub(r"[^A-Za-z0-9-]", "", p) for p in parts]
    return "-".join(p for p in cleaned if p)[:64] or "model"


def zip_name(split: str, name: str) -> str:
    return results_name(split, name).removesuffix(".json") + ".zip"


def stats_name(split: str, name: str) -> str:
    """Where the user puts the stats the server returned (beside the results file)."""
    return results_name(split, name).removesuffix(".json") + ".stats.json"


def load_image_info(root: str | os.PathLike[str], split: str) -> dict[int, dict[str, Any]]:
    """{image id: image record} of a test split; CocoDataError naming the file when absent or malformed."""
    path = image_info_path(root, split)
    if not path.is_file():
        raise CocoDataError(
            f"{path} not found: test split {split!r} needs COCO's image info file "
            f"(annotations/image_info_{split}.json) and its images in {test_image_dir(root, split).name}/"
        )
    info = read_json(path, "image info file")
    images = info.get("images") if isinstance(info, dict) else None
    if not isinstance(images, list) or not images:
        raise CocoDataError(f"image info file {path}: expected an object with a non-empty `images` list")
    try:
        return {int(img["id"]): img for img in images}
    except (KeyError, TypeError, ValueError) as err:
        raise CocoDataError(f"image info file {path}: an image record lacks an integer `id` ({err})") from err


def load_test_detections(
    det_file: str | os.PathLike[str],
    root: str | os.PathLike[str],
    split: str,
    *,
    aspect_ratio: float,
    image_thre: float = 0.0,
) -> tuple[list[PersonInstance], dict[int, dict[str, Any]]]:
    """(person detections on the split's images, the image info), HRNet's box convention as for val.

    Detections of images outside the info file are dropped (with a warning); none left is an error."""
    images = load_image_info(root, split)
    folder = test_image_dir(root, split)
    instances = match_detections(
        read_detections(Path(det_file)),
        Path(det_file),
        images,
        folder,
        image_info_path(root, split),
        aspect_ratio=aspect_ratio,
        image_thre=image_thre,
    )
    if not instances:
        raise CocoDataError(f"detection file {det_file}: no person detection for split {split!r}")
    if not folder.is_dir():
        raise CocoDataError(f"image folder {folder} of test split {split!r} not found")
    check_images(root, folder.name, [inst.image_path for inst in instances])
    return instances, images


def submission_files(results: list[dict[str, Any]], split: str, name: str) -> dict[str, bytes]:
    """{results json name: bytes, its zip name: bytes} as the evaluation server takes them."""
    json_name = results_name(split, name)
    payload = json.dumps(results).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(json_name, payload)
    return {json_name: payload, zip_name(split, name): buf.getvalue()}


def check_submission(results: list[dict[str, Any]], image_ids: set[int], where: str) -> None:
    """Every entry has an image id of the split, category 1, 51 keypoint values and a score."""
    for i, r in enumerate(results):
        if r.get("image_id") not in image_ids or r.get("category_id") != PERSON_CATEGORY_ID:
            raise ValueError(f"{where}: entry {i} has image_id {r.get('image_id')!r} not in the split")
        if len(r.get("keypoints", ())) != 3 * NUM_KEYPOINTS or not isinstance(r.get("score"), float):
            raise ValueError(f"{where}: entry {i} lacks 51 keypoint values or a float score")


def predict_split(
    model: nn.Module,
    cfg: FinetuneConfig,
    data: DataConfig,
    split: str,
    name: str,
    device: torch.device | str,
    *,
    detection_file: str | None = None,
    batch_size: int = 64,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Predict one test split: ({results_file, zip_file, stats_file, images, images_with_results,
    results, seconds}, {file name: bytes})."""
    det_file = detection_file or data.test_detection_file
    if not det_file:
        raise CocoDataError(
            f"test split {split!r}: no person detections given (data.test_detection_file: HRNet's "
            f"COCO_{split}_detections_AP_H_609_person.json); a test split has no boxes of its own"
        )
    t0 = time.perf_counter()
    aspect_ratio = cfg.input_hw[1] / cfg.input_hw[0]
    instances, images = load_test_detections(
        det_file, data.coco_root, split, aspect_ratio=aspect_ratio, image_thre=cfg.image_thre
    )
    results = inference.predict(model, instances, cfg, device, batch_size=batch_size,
                                workers=max(1, data.loader_workers))  # fmt: skip
    check_submission(results, set(images), results_name(split, name))
    files = submission_files(results, split, name)
    covered = len({r["image_id"] for r in results})
    if covered < len(images):
        log.warning(
            "%s: %d of %d images have no detection, so no result", split, len(images) - covered, len(images)
        )
    summary = {
        "results_file": results_name(split, name),
        "zip_file": zip_name(split, name),
        "stats_file": stats_name(split, name),
        "images": len(images),
        "images_with_results": covered,
        "results": len(results),
        "detections": len(instances),
        "seconds": time.perf_counter() - t0,
    }
    log.info("%s: %d results on %d images -> %s", split, len(results), covered, summary["zip_file"])
    return summary, files


def run_evaluation(cfg: EvaluationConfig, data: DataConfig, ctx: StageContext) -> StageResult:
    """The `evaluate` stage's workload: its finetune's best weights (`ctx.parent_weights()`, the
    finetune's weights.pt) predict `cfg.split`'s detections; the result's artifacts are the server's
    results file and its zip (nothing trained, no weights of its own). Run on one worker."""
    from workloads.data.keypoints import NUM_KEYPOINTS
    from workloads.models import build_model

    weights = ctx.parent_weights()
    if weights is None:
        raise RuntimeError(
            f"evaluate {cfg.split}: the finetune has no best weights to evaluate (its weights.pt is missing)"
        )
    model = build_model(cfg.finetune.model, NUM_KEYPOINTS)
    model.load_state_dict(weights)  # strict: the finetune's own network
    model = model.to(ctx.device)
    data = (
        data
        if cfg.detection_file is None
        else dataclasses.replace(data, test_detection_file=cfg.detection_file)
    )
    summary, files = predict_split(model, cfg.finetune, data, cfg.split, cfg.alg, ctx.device)
    return StageResult(
        metrics={"test_splits": {cfg.split: summary}, "split": cfg.split, "results": summary["results"]},
        weights=None,
        provenance={"evaluated": {"split": cfg.split, "detection_file": cfg.detection_file}},
        artifacts=files,
    )
