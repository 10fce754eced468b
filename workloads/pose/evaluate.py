"""COCO keypoint evaluation of a results list or file (paper §4.1 metrics, Table 3; §5 error analysis).

pycocotools COCOeval('keypoints') as the official HRNet code runs it (useSegm None, OKS .50:.05:.95,
maxDets 20): the ten summary numbers, the AP at each OKS threshold read from COCOeval's own
precision array (`eval['precision'][t, :, 0, 0, 0]`: area 'all', maxDets 20, averaged over the
recall points that are defined), and optionally the Ronchi–Perona error breakdown (`errors.py`).
Values are fractions as COCOeval gives them; -1 means undefined (no GT in that area range).
`evaluate_file` / `format_table` back the `hsjp-study evaluate` command.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workloads.data.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from workloads.pose.cocoapi import coco_api
from workloads.pose.errors import ERROR_TYPES, analyze_errors, summarize_counts
from workloads.pose.per_image import PER_IMAGE_KEY
from workloads.pose.per_image import extract as extract_per_image
from workloads.user_errors import BadFileError, MissingFileError

if TYPE_CHECKING:  # pycocotools is imported when an evaluation runs (workloads/pose/cocoapi.py)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
OKS_KEYS: tuple[str, ...] = tuple(f"{t:.2f}" for t in np.linspace(0.5, 0.95, 10))
REQUIRED_RESULT_KEYS = ("image_id", "category_id", "keypoints", "score")


def evaluate_keypoints(
    gt_json: str | os.PathLike,
    results: list[dict] | str | os.PathLike,
    *,
    errors: bool = True,
    per_image: bool = False,
) -> dict:
    """AP/AR stats, `ap_per_oks` {"0.50": .., "0.95": ..}, (if `errors`) the error breakdown and (if
    `per_image`) the encoded per-image outcome under `per_image.PER_IMAGE_KEY` (bytes; no results: absent).

    `results` is a list of COCO keypoint results or the path of a JSON file holding one. Every result
    must reference an image of `gt_json` (ValueError otherwise). No results → all zeros, a warning.
    """
    coco_gt = load_ground_truth(gt_json)
    source = str(results) if isinstance(results, (str, os.PathLike)) else "results list"
    dets = load_results(results) if isinstance(results, (str, os.PathLike)) else list(results)
    check_results(dets, coco_gt, gt_json, source)
    if not dets:
        log.warning("%s: no keypoint results to evaluate against %s; all metrics are 0", source, gt_json)
        return empty_metrics(errors)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))  # loadRes adds id/area/bbox in place
    ev = coco_api()[1](coco_gt, coco_dt, "keypoints")
    ev.params.useSegm = None  # HRNet coco.py:_do_python_keypoint_eval
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    log.debug("COCOeval summary for %s:\n%s", source, summary.getvalue())
    metrics: dict = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    metrics["ap_per_oks"] = ap_per_oks(ev)
    if errors:
        metrics["errors"] = analyze_errors(coco_gt, coco_dt)
    if per_image:
        metrics[PER_IMAGE_KEY] = extract_per_image(ev).to_bytes()
    return metrics


def ap_per_oks(ev: COCOeval) -> dict[str, float]:
    """AP at each OKS threshold: mean of `precision[t, :, 0, 0, 0]` over entries > -1 (-1 if none)."""
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    out = {}
    for t, thr in enumerate(ev.params.iouThrs):
        p = precision[t, :, 0, 0, 0]
        p = p[p > -1]
        out[f"{thr:.2f}"] = float(p.mean()) if p.size else -1.0
    return out


def empty_metrics(errors: bool = True) -> dict:
    metrics: dict = {name: 0.0 for name in STAT_NAMES}
    metrics["ap_per_oks"] = {key: 0.0 for key in OKS_KEYS}
    if errors:
        metrics["errors"] = summarize_counts(np.zeros((NUM_KEYPOINTS, len(ERROR_TYPES)), dtype=np.int64), 0)
    return metrics


def load_ground_truth(gt_json: str | os.PathLike) -> COCO:
    path = Path(gt_json)
    if not path.is_file():
        raise MissingFileError(
            f"ground-truth annotation file {path} not found (expected a COCO keypoint json)"
        )
    coco = coco_api()[0]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco(str(path))
    except json.JSONDecodeError as err:
        raise BadFileError(f"ground-truth annotation file {path} is not valid JSON: {err}") from err


def load_results(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"results file {path} not found (expected a JSON list of COCO keypoint results)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadFileError(f"results file {path} is not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise BadFileError(f"results file {path}: expected a JSON list of results, got {type(data).__name__}")
    return data


def check_results(dets: list[dict], coco_gt: COCO, gt_json, source: str) -> None:
    """Each result has the COCO keypoint fields and an image id of the ground truth, or ValueError."""
    for i, det in enumerate(dets):
        missing = [k for k in REQUIRED_RESULT_KEYS if not isinstance(det, dict) or k not in det]
        if missing:
            raise BadFileError(
                f"{source}: result #{i} lacks {missing}; each result needs {list(REQUIRED_RESULT_KEYS)}"
            )
        if len(det["keypoints"]) != 3 * NUM_KEYPOINTS:
            raise BadFileError(
                f"{source}: result #{i} has {len(det['keypoints'])} keypoint values, expected "
                f"{3 * NUM_KEYPOINTS} (x, y, score for {NUM_KEYPOINTS} COCO joints)"
            )
    unknown = sorted({det["image_id"] for det in dets} - set(coco_gt.getImgIds()), key=str)
    if unknown:
        raise BadFileError(
            f"{source}: {len(unknown)} image id(s) not in the ground truth {gt_json}, e.g. {unknown[:5]}; "
            "results must be for images of this annotation file"
        )


def evaluate_file(
    gt: str | os.PathLike, results: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> dict:
    """`evaluate_keypoints` on a results JSON (this tool's or any other); writes out_dir/metrics.json."""
    metrics = evaluate_keypoints(gt, Path(results), errors=True)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("wrote %s", out / "metrics.json")
    return metrics


def _pct(value: float) -> str:
    return f"{100 * value:6.1f}" if value >= 0 else f"{'n/a':>6}"


def format_table(metrics: dict) -> str:
    """The ten numbers, the per-OKS AP and the error shares as a text table (values in %)."""
    lines = ["COCO keypoints (OKS), %", " ".join(f"{n:>6}" for n in STAT_NAMES)]
    lines.append(" ".join(_pct(metrics[n]) for n in STAT_NAMES))
    per_oks = metrics.get("ap_per_oks", {})
    if per_oks:
        lines += ["", "AP per OKS threshold, %", " ".join(f"{k:>6}" for k in per_oks)]
        lines.append(" ".join(_pct(v) for v in per_oks.values()))
    errs = metrics.get("errors")
    if errs:
        counts = errs.get("counts", {})
        lines += [
            "",
            "Keypoint errors (Ronchi-Perona), % of annotated keypoints of matched detections "
            f"({counts.get('matched_detections', '?')} matches, {counts.get('annotated_keypoints', '?')} keypoints)",
            f"{'':16}" + " ".join(f"{t:>10}" for t in ERROR_TYPES),
            f"{'overall':16}" + " ".join(f"{_pct(errs['overall'][t]):>10}" for t in ERROR_TYPES),
        ]
        for name in KEYPOINT_NAMES:
            shares = errs.get("per_keypoint", {}).get(name)
            if shares:
                lines.append(f"{name:16}" + " ".join(f"{_pct(shares[t]):>10}" for t in ERROR_TYPES))
    return "\n".join(lines)
