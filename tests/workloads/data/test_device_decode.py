"""Decoding and cropping on the training device (data.decode_on: device) against OpenCV in the workers.

On CPU torchvision.io.decode_jpeg is libjpeg-turbo, as OpenCV's decoder; the crop is one batched
grid_sample against cv2.warpAffine's 1/32-px fixed-point bilinear weights. Measured on 12 coco-mini
pose inputs (flips and rotations included): mean 0.24, max 0.50 grey levels — the loader path's final
rounding to 8 bits — so the decoded pixels are the same.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from workloads.config import ConfigError, DataConfig, FinetuneConfig, PretrainConfig
from workloads.data import device_decode
from workloads.data.coco import CocoDataError, load_persons
from workloads.data.device_decode import (
    BYTES_KEY,
    collate_with_bytes,
    crop_images,
    decode_and_crop,
    decode_jpegs,
    decodes_on_device,
    read_jpeg_bytes,
    read_jpeg_skipping,
)
from workloads.data.synthetic import generate
from workloads.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    get_affine_transform,
    network_input,
    normalize_batch,
    read_image,
    warp_crop,
)
from workloads.hsjp.batched import batch_images, check_placement, renders_on_device
from workloads.hsjp.dataset import PuzzleDataset, load_instances
from workloads.pose.dataset import PoseTrainDataset
from workloads.pose.train import batch_size_of

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate(root, n_train=4, n_val=1, seed=0, image_size=(160, 120))
    return root


def _images(root: Path) -> list[Path]:
    return sorted((root / "train2017").glob("*.jpg"))


def _grey_levels(images: torch.Tensor) -> np.ndarray:
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).double().numpy()


def test_whole_jpegs_are_read_and_broken_files_named(synthetic_root, tmp_path):
    path = _images(synthetic_root)[0]
    data = read_jpeg_bytes(path)
    assert data.dtype == torch.uint8 and data.numel() == path.stat().st_size
    with pytest.raises(CocoDataError, match="not found"):
        read_jpeg_bytes(tmp_path / "missing.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CocoDataError, match=r"truncated\.jpg is truncated"):
        read_jpeg_bytes(truncated)
    png = tmp_path / "image.png"
    cv2.imwrite(str(png), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CocoDataError, match=r"image\.png is not a JPEG.*decode_on: loader"):
        read_jpeg_bytes(png)


def test_a_truncated_file_is_skipped_for_the_next_person_with_a_warning(synthetic_root, tmp_path, caplog):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_root, root)
    persons = load_persons(root, "train2017", aspect_ratio=1.0)
    first = persons[0]
    Path(first.image_path).write_bytes(Path(first.image_path).read_bytes()[:40])
    skipped: set[str] = set()
    with caplog.at_level(logging.WARNING):
        j, data = read_jpeg_skipping(persons, 0, skipped)
    assert persons[j].image_path != first.image_path and data.numel() > 40
    assert skipped == {first.image_path} and first.image_path in caplog.text


def test_decoding_equals_opencv_and_a_file_nothing_decodes_is_flagged(synthetic_root, tmp_path, caplog):
    paths = _images(synthetic_root)[:2]
    garbage = tmp_path / "garbage.jpg"  # the markers of a JPEG around nothing decodable
    garbage.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9")
    data = [read_jpeg_bytes(p) for p in [*paths, garbage]]
    with caplog.at_level(logging.WARNING):
        images = decode_jpegs(data, CPU, [str(p) for p in [*paths, garbage]])
    for path, image in zip(paths, images, strict=False):
        reference = torch.from_numpy(read_image(path)).permute(2, 0, 1)
        assert image.shape == reference.shape and image.dtype == torch.uint8
        assert (image.int() - reference.int()).abs().max() <= 2  # both libjpeg-turbo
    assert images[2] is None and "garbage.jpg could not be decoded" in caplog.text


def test_batched_crop_is_opencvs_warp_for_images_of_different_sizes(synthetic_root):
    rng = np.random.default_rng(0)
    smooth = [
        cv2.resize(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        for size in ((160, 120), (96, 128))
    ]
    mats = np.stack(
        [
            get_affine_transform((70.0, 60.0), (0.4, 0.5), 30.0, (48, 64)),
            get_affine_transform((40.0, 70.0), (0.3, 0.4), -15.0, (48, 64)),
        ]
    )
    images = [torch.from_numpy(im).permute(2, 0, 1) for im in smooth]
    crops, ok = crop_images(
        [*images, None], torch.from_numpy(np.concatenate([mats, mats[:1]])), (48, 64), CPU
    )
    assert crops.shape == (3, 3, 64, 48) and ok.tolist() == [True, True, False]
    for i in range(2):
        expected = warp_crop(smooth[i], mats[i], (48, 64)).astype(np.float64)
        got = crops[i].permute(1, 2, 0).double().numpy()
        assert np.abs(got - expected).max() <= 1.5  # OpenCV: 1/32-px weights, rounded to 8 bits
    assert crops[2].abs().max() == 0  # undecodable: black


@pytest.mark.realdata
def test_pose_items_decoded_on_the_device_match_the_loader_path(coco_mini):
    cfg = FinetuneConfig(input_hw=(128, 96), heatmap_hw=(32, 24))
    persons = load_persons(coco_mini, "train2017", with_keypoints=True, aspect_ratio=0.75)[:12]
    loader = PoseTrainDataset(persons, cfg, seed=1, device_targets=True)
    device = PoseTrainDataset(persons, cfg, seed=1, device_targets=True, decode_on_device=True)
    keys = [(3, i) for i in range(len(persons))]  # flips, rotations, scales, half-body as drawn
    a = torch.utils.data.default_collate([loader[k] for k in keys])
    b = collate_with_bytes([device[k] for k in keys])
    assert torch.equal(a[1], b["joints"]) and torch.equal(a[2], b["visible"])
    assert isinstance(b[BYTES_KEY], list) and batch_size_of(b) == batch_size_of(a) == 12
    crops, ok = decode_and_crop(b, (96, 128), CPU)
    diff = np.abs(_grey_levels(normalize_batch(crops)) - _grey_levels(network_input(a[0])))
    assert ok.all() and diff.max() <= 1.0, (diff.mean(), diff.max())
    with pytest.raises(ValueError, match="decode_on_device needs device_targets"):
        PoseTrainDataset(persons, cfg, seed=1, decode_on_device=True)


@pytest.mark.realdata
def test_pretext_batches_decoded_on_the_device_match_the_loader_path(coco_mini):
    cfg = PretrainConfig(n=6, input_size=96, heatmap_size=24)
    persons = load_instances(DataConfig(coco_root=str(coco_mini), max_train_instances=12), train=True, seed=0)
    loader = PuzzleDataset(persons, cfg, train=True, seed=3)
    device = PuzzleDataset(persons, cfg, train=True, seed=3, render_on_device=True, decode_on_device=True)
    keys = [(2, i) for i in range(len(persons))]
    a = torch.utils.data.default_collate([loader[k] for k in keys])
    b = collate_with_bytes([device[k] for k in keys])
    assert torch.equal(a["centers_xy"], b["centers_xy"]) and "crop" not in b
    diff = np.abs(_grey_levels(batch_images(b, cfg, CPU)) - _grey_levels(network_input(a["image"])))
    assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 8.0, (diff.mean(), np.percentile(diff, 99))
    assert torch.equal(a["mask"], b["mask"])  # every file decoded: no sample left out
    with pytest.raises(ValueError, match="decode_on_device needs render_on_device"):
        PuzzleDataset(persons, cfg, train=True, decode_on_device=True)


def test_an_undecodable_pretext_file_is_left_out_of_the_loss(synthetic_root, tmp_path):
    cfg = PretrainConfig(n=2, input_size=32, heatmap_size=8)
    persons = load_instances(DataConfig(coco_root=str(synthetic_root)), train=True, seed=0)[:3]
    ds = PuzzleDataset(persons, cfg, train=True, render_on_device=True, decode_on_device=True)
    batch = collate_with_bytes([ds[(0, i)] for i in range(3)])
    batch[BYTES_KEY][1] = torch.frombuffer(
        bytearray(b"\xff\xd8" + b"\x01" * 64 + b"\xff\xd9"), dtype=torch.uint8
    )
    images = batch_images(batch, cfg, CPU)
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
    assert batch["mask"][1].sum() == 0 and batch["mask"][0].sum() > 0


def test_placement_switches_resolve_and_a_contradiction_is_named():
    data, cfg = DataConfig(), PretrainConfig()
    # auto: the loader on CPU, and on CUDA too until the race test has passed on a device
    assert decodes_on_device(data, torch.device("cuda")) is device_decode.DEVICE_DECODE_VERIFIED
    assert not decodes_on_device(data, CPU) and decodes_on_device(replace(data, decode_on="device"), CPU)
    assert renders_on_device(cfg, CPU, replace(data, decode_on="device"))  # decoding there implies rendering
    with pytest.raises(ConfigError, match="data.decode_on = 'device'.*pretrain.augment_on = 'loader'"):
        check_placement(replace(cfg, augment_on="loader"), replace(data, decode_on="device"), CPU)
    with pytest.raises(ConfigError, match="data.decode_on = 'gpu': unknown"):
        replace(data, decode_on="gpu")
    with pytest.raises(
        ConfigError, match="pretrain.augment_on = 'cuda': unknown; allowed: auto, loader, device"
    ):
        replace(cfg, augment_on="cuda")


@pytest.mark.realdata
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG check of decode_on: device)"
)
def test_nvjpeg_decode_and_crop_match_opencv_within_a_few_levels(coco_mini):
    cfg = FinetuneConfig(input_hw=(256, 192), heatmap_hw=(64, 48))
    persons = load_persons(coco_mini, "train2017", with_keypoints=True, aspect_ratio=0.75)[:16]
    loader = PoseTrainDataset(persons, cfg, seed=1, device_targets=True)
    device = PoseTrainDataset(persons, cfg, seed=1, device_targets=True, decode_on_device=True)
    keys = [(0, i) for i in range(len(persons))]
    a = torch.utils.data.default_collate([loader[k] for k in keys])
    crops, ok = decode_and_crop(
        collate_with_bytes([device[k] for k in keys]), (192, 256), torch.device("cuda")
    )
    assert crops.is_cuda and ok.all()
    diff = np.abs(_grey_levels(normalize_batch(crops).cpu()) - _grey_levels(network_input(a[0])))
    # nvJPEG's IDCT / chroma upsampling are not libjpeg-turbo's: a few grey levels, not more
    assert diff.mean() <= 2.0 and np.percentile(diff, 99) <= 12.0, (diff.mean(), np.percentile(diff, 99))


def test_auto_on_cuda_chooses_the_loader_until_the_race_test_passed_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(device_decode, "_AUTO_NOTED", [])
    monkeypatch.setattr(device_decode, "DEVICE_DECODE_VERIFIED", False)
    cuda = torch.device("cuda")
    with caplog.at_level(logging.INFO, logger="workloads.data.device_decode"):
        assert not decodes_on_device(DataConfig(), cuda) and not decodes_on_device(DataConfig(), cuda)
    notes = [r.getMessage() for r in caplog.records if "test_decode_race" in r.getMessage()]
    assert len(notes) == 1 and "decodes in the loader" in notes[0]
    monkeypatch.setattr(device_decode, "DEVICE_DECODE_VERIFIED", True)
    assert decodes_on_device(DataConfig(), cuda) and not decodes_on_device(DataConfig(), CPU)
