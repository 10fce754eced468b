"""No host sync in a steady-state training step, for both tasks and both backbones (CPU, in CI).

The real epoch loop (`engine.train_one_epoch` of each task's `task_of`) run a dozen steps on the
batches the CUDA path gets (pose: uint8 crops + joints, targets made in the step; pretext: uint8 crops +
draws, rendered in the step) under `HostSyncCounter`, a TorchDispatchMode that sees every aten call.
The loader below notes the counter each time the loop pulls a batch; with the two-ahead prefetch, the
calls between pull j and pull j+1 are the preparation of batch j and step j − 2. Only the intervals
holding a progress report (the loss read once every `steps // REPORTS_PER_EPOCH` steps) and the warm-up
(first steps: device constants made once, the fused optimiser's state) may count anything.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from workloads.config import FinetuneConfig, ModelConfig, PretrainConfig
from workloads.engine import make_optimizer, train_one_epoch
from workloads.hostsync import HostSyncCounter, OpCounter
from workloads.hsjp import train as hsjp_train
from workloads.hsjp.dataset import draw_puzzle
from workloads.hsjp.puzzle import padded_size
from workloads.models import build_model
from workloads.pose import train as pose_train

CPU = torch.device("cpu")
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    ),
]
STEPS = 12  # report_every = 12 // 4 = 3: reports after steps 3, 6, 9, 12
WARMUP = 2  # intervals 0..WARMUP: batches 0-2 prepared and step 0 run (constants, optimiser state)
BACKBONES = {
    "hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
    "simplebaseline_r50": ModelConfig(
        backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=16
    ),
}


class ProbedLoader:
    """A fixed list of batches; each pull notes the counter's total so far."""

    def __init__(self, batches: list, counter: HostSyncCounter):
        self.batches, self.counter, self.marks = batches, counter, []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.marks.append(Counter(self.counter.by_op))
            yield batch
        self.marks.append(Counter(self.counter.by_op))


class NoSampler:
    def set_epoch(self, epoch: int) -> None:
        pass


class Ctx:
    rank, world_size = 0, 1

    def __init__(self, device: torch.device):
        self.device = device
        self.reports: list[dict] = []

    def report(self, metrics: dict) -> None:
        self.reports.append(metrics)


def _intervals(loader: ProbedLoader) -> list[Counter]:
    return [b - a for a, b in zip(loader.marks, loader.marks[1:], strict=False)]


def _check(loader: ProbedLoader, ctx: Ctx) -> None:
    per_interval = _intervals(loader)
    report_steps = [r["step"] for r in ctx.reports]  # 1-based
    assert report_steps == [3, 6, 9, 12]
    # interval j holds step j - 2; the report after 1-based step s is in interval s + 1
    allowed = set(range(WARMUP + 1)) | {s + 1 for s in report_steps}
    steady = {j: dict(c) for j, c in enumerate(per_interval) if j not in allowed}
    assert len(steady) >= 5
    assert all(not c for c in steady.values()), steady
    for s in report_steps[:-1]:  # a report reads the running loss: one host read, never zero
        assert per_interval[s + 1]["aten._local_scalar_dense"] >= 1


def _train_epoch_and_check(
    train_module, run_class, cfg, model, batches: list, device: torch.device, *run_args
) -> None:
    """One epoch of `train_module`'s task (`run_class(cfg, ctx, model, optimizer, loader, sampler, *run_args)`
    through its `task_of`, run by `engine.train_one_epoch`) over `batches` under the counter, then `_check`
    of what it counted."""
    counter = HostSyncCounter()
    loader = ProbedLoader([_pinned(b, device) for b in batches], counter)
    ctx = Ctx(device)
    run = run_class(cfg, ctx, model, make_optimizer(model, 1e-3), loader, NoSampler(), *run_args)
    with counter:
        stats = train_one_epoch(ctx, train_module.task_of(run, None, dict), 0)
    assert stats["images"] == 2 * STEPS and np.isfinite(stats["loss"])
    _check(loader, ctx)


def _pinned(tree, device: torch.device):
    """The loader's pinned host memory (DataLoader pin_memory on CUDA); as is on CPU."""
    if device.type != "cuda":
        return tree
    if isinstance(tree, dict):
        return {k: v.pin_memory() for k, v in tree.items()}
    return tuple(t.pin_memory() for t in tree)


def _pose_batches(cfg: FinetuneConfig, count: int) -> list:
    g = torch.Generator().manual_seed(0)
    h, w = cfg.input_hw
    out = []
    for _ in range(count):
        images = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=g)
        joints = torch.rand(2, 17, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h])
        visible = (torch.rand(2, 17, generator=g) > 0.3).float()
        out.append((images, joints, visible))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_pose_steady_state_step_has_no_host_sync(backbone, device):
    device = torch.device(device)
    cfg = FinetuneConfig(model=BACKBONES[backbone], input_hw=(64, 64), heatmap_hw=(16, 16))
    model = build_model(cfg.model, 17, generator=torch.Generator().manual_seed(0)).to(device)
    _train_epoch_and_check(
        pose_train,
        pose_train.FinetuneRun,
        cfg,
        model,
        _pose_batches(cfg, STEPS),
        device,
        pose_train.make_forward_loss(cfg, device),
    )


def _pretext_batches(cfg: PretrainConfig, count: int) -> list:
    rng = np.random.default_rng(0)
    side = padded_size(cfg.input_size, cfg.n)
    out = []
    for _ in range(count):
        draws = [draw_puzzle(cfg, rng, augment=True) for _ in range(2)]
        out.append(
            {
                "crop": torch.from_numpy(rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8)),
                "color": torch.from_numpy(np.stack([d.color.to_vector() for d in draws])),
                "perm": torch.from_numpy(np.stack([d.perm for d in draws])),
                "matrix": torch.from_numpy(np.stack([d.matrix for d in draws])),
                "centers_xy": torch.from_numpy(np.stack([d.centers_xy for d in draws])),
                "mask": torch.from_numpy(np.stack([d.mask for d in draws])),
            }
        )
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_pretext_steady_state_step_has_no_host_sync(backbone, device):
    device = torch.device(device)
    cfg = PretrainConfig(model=BACKBONES[backbone], n=2, input_size=64, heatmap_size=16)
    model = build_model(cfg.model, cfg.n**2, generator=torch.Generator().manual_seed(0)).to(device)
    hw = hsjp_train.heatmap_hw_of(cfg)
    _train_epoch_and_check(
        hsjp_train,
        hsjp_train.PretextRun,
        cfg,
        model,
        _pretext_batches(cfg, STEPS),
        device,
        hw,
        hsjp_train.heatmap_stride(cfg.input_size, cfg.heatmap_size),
        hsjp_train.make_forward_loss(cfg, device, hw),
    )


def test_the_counter_sees_the_syncs_it_names():
    """The counter is not blind: the usual host reads are counted, plain device math is not."""
    x = torch.rand(8)
    with HostSyncCounter() as c:
        _ = (x * 2 + 1).sum()
    assert c.total == 0
    with HostSyncCounter() as c:
        x.sum().item()
        bool(x.max() > 0.5)
        _ = x[x > 0.5]
        torch.nonzero(x > 0.2)
        torch.tensor([1.0, 2.0])
        torch.equal(x, x)
    assert c.by_op["aten._local_scalar_dense"] == 2 and c.by_op["aten.equal"] == 1
    assert c.by_op["aten.nonzero"] + c.by_op["aten.index(bool mask)"] >= 2 and c.by_op["aten.lift_fresh"] == 1
    with OpCounter() as ops:
        _ = x * 2 + 1
    assert ops.total == 2
