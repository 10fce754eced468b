"""Top-down pose inference over person boxes → COCO keypoint results (paper §4.1 evaluation protocol).

The official HRNet test pipeline (lib/core/function.py:validate, lib/dataset/coco.py:evaluate):
crop each box at the input size (no rotation), run the model on the batch and, with the flip test,
on its mirror in the same forward pass; flip the mirrored heatmaps back (+ the 1-px shift), average,
decode with the quarter-pixel offset, map to image coordinates, rescore each person by
mean(joint scores > IN_VIS_THRE) × box score, and apply OKS-NMS per image (OKS_THRE).

Images are decoded by a small thread pool (cv2 releases the GIL), one task per image so that an image
with many boxes is read once; at most `2 · workers` images are in flight, so memory stays bounded.
Crops use RGB input (`read_image`), as the training dataset of this project does, and stay uint8 on the
host (a quarter of the bytes; no float work per box there): the mirror and the ImageNet normalisation
are done on the device for the batch. The model runs with its BatchNorms folded into the convolutions
(`models.folding`, the same function up to float rounding); the peaks are decoded on the device and
brought to the host once, at the end, so the host never waits for the device batch by batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from workloads.config import FinetuneConfig
from workloads.data.coco import PIXEL_STD, CocoDataError, PersonInstance
from workloads.data.keypoints import NUM_KEYPOINTS, PERSON_CATEGORY_ID
from workloads.data.transforms import get_affine_transform, network_input, read_image, warp_crop
from workloads.engine import wants_channels_last
from workloads.models import eval_mode
from workloads.models.folding import fold_batchnorm
from workloads.pose.decode import get_max_preds, heatmap_to_image, refine_quarter_offset
from workloads.pose.flip import merge_flipped
from workloads.pose.nms import oks_nms

log = logging.getLogger(__name__)


def predict(
    model: nn.Module,
    instances: Sequence[PersonInstance],
    cfg: FinetuneConfig,
    device: torch.device | str,
    batch_size: int = 64,
    workers: int | None = None,
    fold_bn: bool = True,
) -> list[dict]:
    """COCO keypoint results (`image_id`, `category_id` 1, `keypoints` [51] x,y,score, `score`).

    `instances` are GT boxes or detections (`load_persons` / `load_detections`). The model is put in
    eval mode for the call and restored afterwards; with `fold_bn` a BN-folded copy of it runs instead
    (`models.folding.fold_batchnorm`). `workers` image-decoding threads (None → up to 8, one per CPU).
    Timing is logged (instances/s, share of the time spent waiting on image decoding).
    """
    if not instances:
        log.warning("predict: no person instances given; returning no results")
        return []
    device = torch.device(device)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    keypoints = np.zeros((len(instances), NUM_KEYPOINTS, 3))  # [N, K, 3] image xy + joint score
    start = time.perf_counter()
    wait_s = 0.0
    batches = _iter_batches(instances, cfg.input_hw, batch_size, workers)
    decoded: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []  # on the device until the end
    heatmap_wh = (0, 0)
    net = model
    with eval_mode(model):
        try:
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                wait_s += time.perf_counter() - t0
                if batch is None:
                    break
                indices, images = batch
                if fold_bn and net is model:
                    net = inference_model(model, images[:1], device)
                heatmaps = _forward(net, images, cfg, device)  # [B, K, h, w]
                if heatmaps.shape[1] != NUM_KEYPOINTS:
                    raise ValueError(
                        f"predict: the model gives {heatmaps.shape[1]} heatmaps, expected {NUM_KEYPOINTS}"
                    )
                coords, maxvals = get_max_preds(heatmaps)  # decode_heatmaps, kept on the device
                decoded.append((indices, refine_quarter_offset(heatmaps, coords), maxvals))
                heatmap_wh = (heatmaps.shape[3], heatmaps.shape[2])
        finally:
            batches.close()  # stops the decoding threads early if the loop failed
    if decoded:  # one device → host copy for the whole evaluation
        all_coords = torch.cat([c for _, c, _ in decoded]).cpu().double().numpy()
        all_maxvals = torch.cat([m for _, _, m in decoded]).cpu().double().numpy()
        order = [i for indices, _, _ in decoded for i in indices]
        for row, i in enumerate(order):
            inst = instances[i]
            keypoints[i, :, :2] = heatmap_to_image(all_coords[row], inst.center_xy, inst.scale_wh, heatmap_wh)
            keypoints[i, :, 2] = all_maxvals[row]
    elapsed = time.perf_counter() - start
    log.info(
        "predict: %d instances in %.2f s (%.1f inst/s on %s, flip_test=%s); %.0f%% waiting on image decode",
        len(instances), elapsed, len(instances) / max(elapsed, 1e-9), device, cfg.flip_test,
        100.0 * wait_s / max(elapsed, 1e-9),
    )  # fmt: skip
    return to_results(instances, keypoints, cfg.in_vis_thre, cfg.oks_thre)


def inference_model(model: nn.Module, example_uint8: torch.Tensor, device: torch.device) -> nn.Module:
    """`model` with its BatchNorms folded into the convolutions (eval mode), checked on `example_uint8`
    ([1, H, W, 3], one crop of the batch); the model itself when there is nothing to fold."""
    example = network_input(example_uint8.to(device))
    folded, count = fold_batchnorm(model, example)
    return folded if count else model


def _forward(
    model: nn.Module, images: torch.Tensor, cfg: FinetuneConfig, device: torch.device
) -> torch.Tensor:
    """uint8 [B, H, W, 3] crops (or normalised float [B, 3, H, W]) → [B, K, h, w] float32 heatmaps;
    mirrored and normalised on `device`, the mirrored batch in the same pass."""
    if device.type == "cuda" and not images.is_pinned():
        images = images.pin_memory()
    inputs = images.to(device, non_blocking=True)
    if cfg.flip_test:  # the width axis: 2 of NHWC, 3 of NCHW
        inputs = torch.cat([inputs, inputs.flip(2 if inputs.dtype == torch.uint8 else 3)])
    inputs = network_input(inputs, wants_channels_last(cfg.runtime, device))
    with torch.no_grad():  # always fp32 whatever runtime.amp trained in (the official numerics)
        heatmaps = model(inputs)
    heatmaps = heatmaps.float()
    if cfg.flip_test:
        plain, flipped = heatmaps.split(images.shape[0])
        heatmaps = merge_flipped(plain, flipped, shift=cfg.shift_heatmap)
    return heatmaps


def rescore(joint_scores: np.ndarray, box_score: float, in_vis_thre: float) -> float:
    """mean(joint scores > in_vis_thre) × box score; 0 when no joint passes (HRNet coco.evaluate)."""
    confident = joint_scores[joint_scores > in_vis_thre]
    kpt_score = float(confident.mean()) if confident.size else 0.0
    return kpt_score * float(box_score)


def to_results(
    instances: Sequence[PersonInstance], keypoints: np.ndarray, in_vis_thre: float, oks_thre: float
) -> list[dict]:
    """Rescore, OKS-NMS per image, and format. keypoints [N, K, 3] image xy + joint score."""
    scores = np.array([rescore(k[:, 2], inst.score, in_vis_thre) for k, inst in zip(keypoints, instances)])
    # HRNet: NMS area = prod(scale · pixel_std), the padded aspect-fixed box
    areas = np.array([float(np.prod(np.asarray(inst.scale_wh) * PIXEL_STD)) for inst in instances])
    by_image: dict[int, list[int]] = {}
    for i, inst in enumerate(instances):
        by_image.setdefault(int(inst.image_id), []).append(i)
    results = []
    for image_id, idx in by_image.items():
        idx_arr = np.array(idx)
        keep = oks_nms(keypoints[idx_arr], scores[idx_arr], areas[idx_arr], oks_thre)
        for j in keep:
            i = idx[j]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": PERSON_CATEGORY_ID,
                    "keypoints": [float(v) for v in keypoints[i].reshape(-1)],
                    "score": float(scores[i]),
                }
            )
    return results


def crop_instance(image: np.ndarray, inst: PersonInstance, input_hw: tuple[int, int]) -> torch.Tensor:
    """Test-time crop of one person: [H, W, 3] uint8 RGB, no rotation (HRNet test transform); normalised
    on the device (`transforms.network_input`, the numbers of `normalize_image`)."""
    output_wh = (int(input_hw[1]), int(input_hw[0]))
    mat = get_affine_transform(inst.center_xy, inst.scale_wh, 0.0, output_wh)
    return torch.from_numpy(np.ascontiguousarray(warp_crop(image, mat, output_wh)))


def _crop_group(
    path: str, group: list[tuple[int, PersonInstance]], input_hw
) -> list[tuple[int, torch.Tensor]]:
    try:
        image = read_image(path)
    except CocoDataError as exc:  # a corrupt val image: its persons get no prediction (score 0)
        log.warning("%s; its %d person(s) are skipped in this evaluation", exc, len(group))
        return []
    return [(i, crop_instance(image, inst, input_hw)) for i, inst in group]


def _iter_crops(
    instances: Sequence[PersonInstance], input_hw, workers: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, crop) for every instance, images decoded in a bounded thread pool (2·workers ahead)."""
    groups: dict[str, list[tuple[int, PersonInstance]]] = {}
    for i, inst in enumerate(instances):
        groups.setdefault(inst.image_path, []).append((i, inst))
    items = iter(groups.items())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()

        def submit_next() -> None:
            item = next(items, None)
            if item is not None:
                pending.append(pool.submit(_crop_group, item[0], item[1], input_hw))

        for _ in range(2 * max(1, workers)):
            submit_next()
        while pending:
            done = pending.popleft().result()
            submit_next()
            yield from done


def _iter_batches(
    instances: Sequence[PersonInstance], input_hw, batch_size: int, workers: int
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, uint8 [B, H, W, 3]) batches of at most `batch_size` crops."""
    indices: list[int] = []
    crops: list[torch.Tensor] = []
    for i, crop in _iter_crops(instances, input_hw, workers):
        indices.append(i)
        crops.append(crop)
        if len(crops) == batch_size:
            yield indices, torch.stack(crops)
            indices, crops = [], []
    if crops:
        yield indices, torch.stack(crops)
