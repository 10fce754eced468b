"""CUDA only: the device JPEG decode does not write into memory that queued kernels still read.

The race (pytorch/vision PR 9606; torchcodec PR 1634): tensors are filled, slow kernels that read them
are queued, the tensors are freed on the host (their blocks go back to the caching allocator while the
readers are still pending), and then the decoder allocates its outputs — possibly those very blocks — and
nvJPEG writes them from its own stream at once. If that happened before the readers ran, they read pixels
instead of the fill value. `device_decode.decode_jpegs` synchronises the caller's stream before decoding;
this test checks the readers' results over many trials, and the decoded images against the CPU decode.
When it has passed on a device, `device_decode.DEVICE_DECODE_VERIFIED` may be set to True (then
`data.decode_on: auto` decodes on CUDA). benchmarks/device_check.sh runs it.
"""

from __future__ import annotations

import pytest
import torch

from workloads.data.device_decode import decode_jpegs, read_jpeg_bytes

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (nvJPEG stream-safety check of decode_on: device)",
)
TRIALS = 200  # vision PR 9606 saw corruption in 199 of 200 runs without a fix
FILL = 7


@pytest.mark.realdata
def test_queued_readers_never_see_decoded_pixels(coco_mini):
    device = torch.device("cuda")
    paths = sorted((coco_mini / "train2017").glob("*.jpg"))[:8]
    assert paths, "no JPEGs in the sample set"
    data = [read_jpeg_bytes(p) for p in paths]
    reference = decode_jpegs(data, torch.device("cpu"))
    sizes = [int(im.numel()) for im in reference]  # the decoder's output blocks: same sizes, same pool
    bad_reads, bad_images = 0, 0
    for _ in range(TRIALS):
        tensors = [torch.full((n,), FILL, dtype=torch.uint8, device=device) for n in sizes]
        torch.cuda._sleep(2_000_000)  # ~1 ms of GPU time: the readers below are still queued on return
        sums = [t.sum(dtype=torch.int64) for t in tensors]
        del tensors  # blocks back to the allocator, readers pending
        images = decode_jpegs(data, device)
        got = torch.stack(sums).cpu()
        expected = torch.tensor([FILL * n for n in sizes])
        bad_reads += int((got != expected).sum())
        bad_images += sum(
            int(im is None or (im.cpu().int() - ref.int()).abs().float().mean() > 3.0)
            for im, ref in zip(images, reference, strict=True)
        )
    assert bad_reads == 0 and bad_images == 0, (bad_reads, bad_images)
