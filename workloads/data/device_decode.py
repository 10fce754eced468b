"""JPEG decoding and top-down cropping on the training device (`data.decode_on: device`).

The loader workers then only read each file's bytes (checked to be a whole JPEG: SOI at the start, EOI
at the end) and compute the crop geometry and targets; the training process decodes the batch with
torchvision.io.decode_jpeg on its device (nvJPEG on CUDA, one batched call; libjpeg-turbo on CPU) and
cuts every crop with one bilinear warp over the batch (`transforms.warp_affine_uint8`: the images stay
uint8 on one zero-padded canvas, only the crops are float) — the same affine, interpolation and
black border as `transforms.warp_crop` (cv2.warpAffine, INTER_LINEAR, BORDER_CONSTANT 0). EXIF
orientation is ignored, as `transforms.read_image` (and HRNet) do; grayscale JPEGs are decoded to RGB.

Failure handling (one bad file among 150k must not end a run): a file that is missing, empty or not a
whole JPEG is skipped in the worker and the next person stands in (`read_jpeg_skipping`, as
`read_image_skipping`); a JPEG the device decoder refuses is decoded again on the CPU (torchvision, then
OpenCV); one that nothing decodes becomes an all-black crop flagged in the returned `ok` mask, which the
callers use to drop it from the loss, with a warning naming the file.

Only JPEG is decoded here: a data set of PNGs needs `decode_on: loader`.

Stream safety (CUDA). torchvision's nvJPEG decode allocates its outputs on the caller's stream but
writes them from nvJPEG's own stream without waiting for it; the caching allocator may hand it a block
that kernels already queued on the caller's stream (the previous step, reading tensors freed on the host
since) have yet to read, so those kernels read decoded pixels (pytorch/vision PR 9606 reproduced this on
an H100; torchcodec PR 1634 fixed the same bug and found that nvJPEG's hardware engine ignores the stream
it is given, so a `wait_stream` does not help). `decode_jpegs` therefore synchronises the caller's stream
on the host before the device decode: nothing queued there can still read a block the decoder gets.
tests/workloads/data/test_decode_race.py reproduces the race pattern on CUDA (fill tensors, queue slow
readers, free the tensors, decode, check what the readers read). Until that test has passed on a device
(`DEVICE_DECODE_VERIFIED`), `decode_on: auto` decodes in the loader (OpenCV), and says so once.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

from workloads.config import DataConfig
from workloads.data.coco import CocoDataError, PersonInstance
from workloads.data.transforms import pixel_index_to_continuous, read_image_skipping, warp_affine_uint8

log = logging.getLogger(__name__)

JPEG_SOI = b"\xff\xd8"  # start-of-image marker (ITU T.81, B.1.1.3)
JPEG_EOI = b"\xff\xd9"  # end-of-image marker
EOI_TAIL = 1024  # bytes at the end searched for EOI (some writers pad after it)
BYTES_KEY = "jpeg"  # the item key holding the file's bytes (collated as a list, not stacked)
_WARNED: list[bool] = []  # the batched device decode has failed once in this process (warned)
_AUTO_NOTED: list[bool] = []  # decode_on: auto chose the loader on CUDA (logged once per process)
DEVICE_DECODE_VERIFIED = False
"""Set to True once tests/workloads/data/test_decode_race.py has passed on a CUDA device (it is run by
benchmarks/device_check.sh); until then `decode_on: auto` keeps the decoding in the loader."""


def decodes_on_device(data: DataConfig, device: torch.device) -> bool:
    """Whether `data.decode_on` puts the training images' decoding on `device`: `device` always; `auto` on
    CUDA once the stream-safety race test has passed on a device (`DEVICE_DECODE_VERIFIED`), else the
    loader (logged once)."""
    if data.decode_on == "device":
        return True
    if data.decode_on != "auto" or device.type != "cuda":
        return False
    if not DEVICE_DECODE_VERIFIED and not _AUTO_NOTED:
        _AUTO_NOTED.append(True)
        log.info(
            "data.decode_on: auto decodes in the loader workers (OpenCV): the nvJPEG path's stream-safety "
            "test (tests/workloads/data/test_decode_race.py) has not passed on a CUDA device yet; "
            "set data.decode_on: device to use it anyway"
        )
    return DEVICE_DECODE_VERIFIED


def read_jpeg_bytes(path: str | os.PathLike) -> torch.Tensor:
    """[n] uint8: the whole file; CocoDataError naming the file when it is missing or not a whole JPEG."""
    path = str(path)
    if not os.path.isfile(path):
        raise CocoDataError(f"image file {path} not found")
    data = np.fromfile(path, dtype=np.uint8)
    head, tail = data[:2].tobytes(), data[-EOI_TAIL:].tobytes()
    if head != JPEG_SOI:
        raise CocoDataError(
            f"image file {path} is not a JPEG (decode_on: device decodes JPEG only; use data.decode_on: loader)"
        )
    if JPEG_EOI not in tail:
        raise CocoDataError(f"image file {path} is truncated (no JPEG end-of-image marker)")
    return torch.from_numpy(data)


def read_jpeg_skipping(
    instances: Sequence[PersonInstance], index: int, skipped: set[str]
) -> tuple[int, torch.Tensor]:
    """(j, bytes) of the first whole JPEG among instances index, index + 1, ... (see read_image_skipping)."""
    return read_image_skipping(instances, index, skipped, reader=read_jpeg_bytes)


def collate_with_bytes(items: list[dict]) -> dict:
    """default_collate, except the variable-length file bytes (BYTES_KEY) stay a list of tensors."""
    data = [item[BYTES_KEY] for item in items]
    batch = default_collate(
        [{k: v for k, v in item.items() if k not in (BYTES_KEY, "path")} for item in items]
    )
    batch[BYTES_KEY] = data
    batch["path"] = [item.get("path", "") for item in items]
    return batch


def _decode_jpeg(data, device: torch.device):
    """torchvision.io.decode_jpeg to RGB. torchvision 0.29 marks its image decoders deprecated in favour of
    TorchCodec (a DeprecationWarning on every call, silenced here); a torchvision without them raises
    RuntimeError, so the callers fall back to OpenCV."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # lazy: torchvision's import is slow
    except ImportError as exc:
        raise RuntimeError(f"torchvision.io.decode_jpeg is not available ({exc})") from exc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_jpegs(
    data: list[torch.Tensor], device: torch.device, paths: Sequence[str] = ()
) -> list[torch.Tensor | None]:
    """[3, H, W] uint8 RGB per file on `device` (None where nothing could decode it, warned)."""
    cpu = [d.cpu() for d in data]
    if device.type == "cuda":  # stream safety: see the module docstring (torchcodec PR 1634's fix)
        torch.cuda.current_stream(device).synchronize()
    try:
        return list(_decode_jpeg(cpu, device))
    except (RuntimeError, ValueError) as exc:  # one bad file fails the whole batched call
        if device.type != "cpu" and not _WARNED:
            _WARNED.append(True)
            log.warning(
                "batched decode_jpeg on %s failed (%s); this batch is decoded one image at a time "
                "(warned once; if every batch does this, set data.decode_on: loader)",
                device,
                exc,
            )
    out: list[torch.Tensor | None] = []
    for i, raw in enumerate(cpu):
        name = paths[i] if i < len(paths) else f"item {i}"
        image = None
        for where in dict.fromkeys([device, torch.device("cpu")]):
            try:
                image = _decode_jpeg(raw, where).to(device)
                break
            except (RuntimeError, ValueError):
                continue
        if image is None:
            bgr = cv2.imdecode(raw.numpy(), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if bgr is not None:
                image = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).to(device)
        if image is None:
            log.warning(
                "image file %s could not be decoded (corrupt); its sample is left out of the loss", name
            )
        out.append(image)
    return out


def crop_images(
    images: list[torch.Tensor | None],
    matrices: torch.Tensor,
    output_wh: tuple[int, int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops [B, 3, H, W] float32 in 0–255, ok [B] bool) on `device`.

    images: [3, h_i, w_i] uint8 per sample (None = undecodable → black, ok False); matrices [B, 2, 3]
    image px → crop px in OpenCV's pixel-index convention (the matrix `transforms.warp_crop` takes)."""
    b = len(images)
    out_w, out_h = int(output_wh[0]), int(output_wh[1])
    ok = torch.tensor([im is not None for im in images], dtype=torch.bool)
    if not ok.any():
        return torch.zeros(b, 3, out_h, out_w, device=device), ok
    h_max = max(im.shape[1] for im in images if im is not None)
    w_max = max(im.shape[2] for im in images if im is not None)
    canvas = torch.zeros(b, 3, h_max, w_max, dtype=torch.uint8, device=device)  # uint8: ¼ of a float canvas
    for i, im in enumerate(images):
        if im is not None:  # zeros beyond each image: bilinear there blends with black, as BORDER_CONSTANT 0
            canvas[i, :, : im.shape[1], : im.shape[2]] = im.to(device=device)
    crops = warp_affine_uint8(canvas, pixel_index_to_continuous(matrices), output_wh)
    return crops * ok.to(device).view(-1, 1, 1, 1), ok


def decode_and_crop(
    batch: dict, output_wh: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops [B, 3, H, W] float 0–255, ok [B] bool) of a batch collated by `collate_with_bytes` whose
    items carry BYTES_KEY and "crop_matrix" [2, 3]."""
    images = decode_jpegs(batch[BYTES_KEY], device, batch.get("path", ()))
    return crop_images(images, batch["crop_matrix"], output_wh, device)
