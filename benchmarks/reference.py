"""The reference training pipeline that `benchmarks.throughput` measures beside this project's own
(docs/design.md "Performance"; docs/pose-reference.md §3–§4).

It trains the way the official HRNet / SimpleBaseline code does (deep-high-resolution-net.pytorch:
lib/dataset/JointsDataset.py, lib/core/function.py:train, lib/core/loss.py), written here from those
facts, not copied:

- per sample, in DataLoader workers: `cv2.imread` of the whole image, the augmentation draws, a
  flip of the full image array, `cv2.getAffineTransform` + `cv2.warpAffine` to the input size,
  torchvision ToTensor + Normalize, the joints moved one by one, and the Gaussian targets drawn
  joint by joint (`generate_target`); the batch carries the float32 heatmaps and a `meta` dict;
- fp32 (with PyTorch's default numerics: TF32 on for cuDNN convolutions, off for matmuls; the
  benchmark prints both switches), NCHW, `torch.optim.Adam(params, lr)` as the official code calls it —
  on current PyTorch with CUDA parameters that default is the foreach implementation — the loss as a loop over joints (`JointsMSELoss`), and after every step `loss.item()` and an
  accuracy computed on the host from the output and target heatmaps copied back (two syncs).

HSJP has no public code. Its reference builds the same puzzles as this project (the workloads'
`read_crop` + `build_sample`: decode, crop, shuffle, colour and spatial augmentation) and then
follows the same habits: N² Gaussian target maps drawn channel by channel in the worker and carried
through the loader, fp32, NCHW, default Adam, host metrics every step.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TVF
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workloads.config import FinetuneConfig, ModelConfig, PretrainConfig
from workloads.data.coco import PersonInstance
from workloads.data.keypoints import FLIP_PAIRS
from workloads.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from workloads.hsjp.dataset import build_sample, read_crop
from workloads.hsjp.loss import masked_mse
from workloads.hsjp.puzzle import padded_size
from workloads.models import build_model

log = logging.getLogger(__name__)

PIXEL_STD = 200.0  # official box scale unit


# ------------------------------------------------------------------------- per-sample work (official)
def reference_affine(center_xy, scale_wh, rot_deg: float, output_wh) -> np.ndarray:
    """[2, 3] float64 from cv2.getAffineTransform on float32 points (official get_affine_transform)."""
    src_w = float(scale_wh[0]) * PIXEL_STD
    rad = math.radians(rot_deg)
    src_dir = np.array([0.5 * src_w * math.sin(rad), -0.5 * src_w * math.cos(rad)])  # (0, -w/2) rotated
    dst_w, dst_h = float(output_wh[0]), float(output_wh[1])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center_xy
    src[1] = np.asarray(center_xy) + src_dir
    dst[0] = (dst_w * 0.5, dst_h * 0.5)
    dst[1] = (dst_w * 0.5, dst_h * 0.5 - dst_w * 0.5)
    for pts in (src, dst):  # third point: the second one turned 90° about the first
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    return cv2.getAffineTransform(src, dst)


def reference_targets(joints_xy: np.ndarray, visible: np.ndarray, input_hw, heatmap_hw, sigma: float):
    """Official generate_target, joint by joint: (heatmaps [K, h, w] float32, weights [K] float32)."""
    hm_h, hm_w = heatmap_hw
    stride_x, stride_y = input_hw[1] / hm_w, input_hw[0] / hm_h
    radius = sigma * 3
    size = 2 * radius + 1
    grid = np.arange(0, size, 1, np.float32)
    gauss = np.exp(-((grid[None, :] - size // 2) ** 2 + (grid[:, None] - size // 2) ** 2) / (2 * sigma**2))
    target = np.zeros((len(joints_xy), hm_h, hm_w), np.float32)
    weight = np.minimum(np.asarray(visible, np.float32), 1.0)
    for j in range(len(joints_xy)):
        mu_x, mu_y = int(joints_xy[j][0] / stride_x + 0.5), int(joints_xy[j][1] / stride_y + 0.5)
        ul = (int(mu_x - radius), int(mu_y - radius))
        br = (int(mu_x + radius + 1), int(mu_y + radius + 1))
        if ul[0] >= hm_w or ul[1] >= hm_h or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        if weight[j] > 0.5:
            x0, x1, y0, y1 = max(0, ul[0]), min(br[0], hm_w), max(0, ul[1]), min(br[1], hm_h)
            target[j, y0:y1, x0:x1] = gauss[y0 - ul[1] : y1 - ul[1], x0 - ul[0] : x1 - ul[0]]
    return target, weight


def _half_body(joints: np.ndarray, vis: np.ndarray, aspect: float, rng: np.random.Generator):
    """Official half_body_transform: (center, scale) of the upper or lower body, or None."""
    upper = [j for j in range(11) if vis[j] > 0]
    lower = [j for j in range(11, 17) if vis[j] > 0]
    chosen = upper if rng.standard_normal() < 0.5 and len(upper) > 2 else (lower if len(lower) > 2 else upper)
    if len(chosen) < 2:
        return None
    pts = joints[chosen]
    w, h = pts.max(axis=0) - pts.min(axis=0)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return pts.mean(axis=0), np.array([w, h]) / PIXEL_STD * 1.5


class ReferencePoseDataset(Dataset):
    """Official JointsDataset.__getitem__ (train): (image, target [K, h, w], target_weight [K, 1], meta)."""

    def __init__(self, instances: list[PersonInstance], cfg: FinetuneConfig, seed: int = 0):
        self.instances, self.cfg, self.seed = list(instances), cfg, seed

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int):
        inst, cfg, aug = self.instances[index], self.cfg, self.cfg.aug
        rng = np.random.default_rng([self.seed, index])
        image = cv2.imread(inst.image_path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # HRNet configs: COLOR_RGB true
        joints = inst.keypoints[:, :2].astype(np.float64).copy()
        vis = np.minimum(inst.keypoints[:, 2], 1.0)
        center, scale, rot = np.array(inst.center_xy), np.array(inst.scale_wh), 0.0
        aspect = cfg.input_hw[1] / cfg.input_hw[0]
        if vis.sum() > aug.half_body_min_joints and rng.random() < aug.half_body_prob:
            box = _half_body(joints, vis, aspect, rng)
            if box is not None:
                center, scale = box
        sf, rf = aug.scale_factor, aug.rotate_deg
        scale = scale * np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
        rot = np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf) if rng.random() <= aug.rotate_prob else 0.0
        if aug.flip and rng.random() <= 0.5:
            image = image[:, ::-1, :]
            joints[:, 0] = image.shape[1] - joints[:, 0] - 1
            for left, right in FLIP_PAIRS:
                joints[[left, right]], vis[[left, right]] = joints[[right, left]], vis[[right, left]]
            joints *= vis[:, None]
            center[0] = image.shape[1] - center[0] - 1
        output_wh = (cfg.input_hw[1], cfg.input_hw[0])
        trans = reference_affine(center, scale, rot, output_wh)
        crop = cv2.warpAffine(image, trans, output_wh, flags=cv2.INTER_LINEAR)
        tensor = TVF.normalize(TVF.to_tensor(crop), IMAGENET_MEAN, IMAGENET_STD)
        for j in range(len(joints)):
            if vis[j] > 0:
                joints[j] = trans @ np.array([joints[j, 0], joints[j, 1], 1.0])
        target, weight = reference_targets(joints, vis, cfg.input_hw, cfg.heatmap_hw, cfg.sigma)
        meta = {"joints": joints, "joints_vis": vis, "center": center, "scale": scale, "rotation": rot,
                "score": inst.score}  # fmt: skip
        return tensor, torch.from_numpy(target), torch.from_numpy(weight[:, None]), meta


# ------------------------------------------------------------------------------------ the pretext
def reference_puzzle_targets(centers_xy: np.ndarray, mask: np.ndarray, heatmap_hw, stride: float, sigma_px):
    """Paper eq. (1) drawn channel by channel on the CPU: [K, H, W] float32 (same values as
    workloads.hsjp.targets.make_heatmaps: pixel j evaluated at its centre j + ½, σ in input px)."""
    h, w = heatmap_hw
    sigma = sigma_px / stride
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    target = np.zeros((len(centers_xy), h, w), np.float32)
    for i, (cx, cy) in enumerate(centers_xy):
        if mask[i] > 0:
            u, v = cx / stride - 0.5, cy / stride - 0.5
            target[i] = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))
    return target


class ReferencePuzzleDataset(Dataset):
    """Puzzles as the workloads build them, targets drawn in the worker: (image, target, mask)."""

    def __init__(self, instances: list[PersonInstance], cfg: PretrainConfig, seed: int = 0):
        self.instances, self.cfg, self.seed = list(instances), cfg, seed
        self.side = padded_size(cfg.input_size, cfg.n)

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int):
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, index])
        sample = build_sample(read_crop(self.instances[index], self.side), cfg, rng, augment=True)
        tensor = TVF.normalize(TVF.to_tensor(sample.image), IMAGENET_MEAN, IMAGENET_STD)
        hm = (cfg.heatmap_size, cfg.heatmap_size * (2 if cfg.concat_original else 1))
        target = reference_puzzle_targets(
            sample.centers_xy, sample.mask, hm, cfg.input_size / cfg.heatmap_size, cfg.sigma
        )
        return tensor, torch.from_numpy(target), torch.from_numpy(sample.mask)


# ------------------------------------------------------------------------------------ the train step
def reference_joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Official JointsMSELoss(use_target_weight=True): a loop over joints of 0.5·MSE(pred·w, gt·w), / K."""
    b, k = pred.shape[:2]
    preds, gts = pred.reshape(b, k, -1).split(1, 1), target.reshape(b, k, -1).split(1, 1)
    loss = pred.new_zeros(())
    for j in range(k):
        w = weight[:, j].reshape(b, 1)
        loss = loss + 0.5 * nn.functional.mse_loss(preds[j].squeeze(1) * w, gts[j].squeeze(1) * w)
    return loss / k


def reference_accuracy(output: torch.Tensor, target: torch.Tensor, thr: float = 0.5) -> float:
    """The official per-step accuracy on the host: argmax of both maps, PCK at thr · (heatmap size / 10)."""
    out, tgt = output.detach().float().cpu().numpy(), target.detach().float().cpu().numpy()
    b, k, h, w = out.shape

    def argmax_xy(maps):
        idx = maps.reshape(b, k, -1).argmax(axis=2)
        return np.stack([idx % w, idx // w], axis=-1).astype(np.float32)  # [B, K, 2] xy

    pred_xy, true_xy = argmax_xy(out), argmax_xy(tgt)
    labelled = (true_xy > 1).all(axis=-1)
    dist = np.linalg.norm((pred_xy - true_xy) / (np.array([w, h]) / 10.0), axis=-1)
    return float((dist[labelled] < thr).mean()) if labelled.any() else 0.0


def build_reference_model(
    cfg: ModelConfig, out_channels: int, lr: float, device: torch.device, seed: int = 0
):
    """(model fp32 NCHW on device, Adam with PyTorch's default implementation: what the official
    `optim.Adam(model.parameters(), lr)` gets on current PyTorch — foreach on CUDA)."""
    model = build_model(cfg, out_channels, generator=torch.Generator().manual_seed(seed)).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(params, lr=lr)


def numerics() -> dict:
    """The float switches both pipelines run under (PyTorch defaults unless someone changed them)."""
    return {
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def reference_step(model, batch, optimizer, device: torch.device, task: str) -> float:
    """One official-style step: fp32 forward, loss, backward, Adam; then loss.item() and host accuracy."""
    images, target, weight = (t.to(device, non_blocking=True) for t in batch[:3])
    output = model(images)
    if task == "pretext":
        loss = masked_mse(output, target, weight)
    else:
        loss = reference_joints_mse(output, target, weight)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    value = loss.item()
    reference_accuracy(output, target)
    return value


def make_reference_loader(
    dataset: Dataset, batch_size: int, workers: int, device: torch.device, seed: int = 0
):
    """Official train loader: shuffled, pinned memory on CUDA, workers re-created every epoch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
