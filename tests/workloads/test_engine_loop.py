"""The pieces both tasks take from one place: the within-epoch loop (`engine.train_one_epoch`), the
channels_last rule, the heatmap-size check, and the "did you mean" suggestion."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from workloads.config import RuntimeConfig, heatmap_hw_of_input, suggest
from workloads.engine import Task, check_heatmap_output, train_one_epoch, wants_channels_last


class _Ctx:
    device, world_size, rank = torch.device("cpu"), 1, 0

    def __init__(self) -> None:
        self.reports: list[dict] = []

    def report(self, metrics: dict) -> None:
        self.reports.append(metrics)


class _Sampler:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _run(losses: list[float], counts: list[int]):
    ctx, sampler, model = _Ctx(), _Sampler(), torch.nn.Linear(1, 1)
    model.eval()
    loader = list(zip(losses, counts))
    task = Task(  # a batch of `count` samples whose step's loss is `loss`
        model,
        None,
        None,
        loader,
        sampler,
        prepare=lambda b: (torch.zeros(b[1]), torch.tensor(b[0])),
        train_step=lambda tensors: tensors[1],
        evaluate=dict,
    )
    stats = train_one_epoch(ctx, task, 3)
    return stats, ctx, sampler, model


def test_the_epoch_loss_is_the_sample_weighted_mean_and_progress_is_reported():
    stats, ctx, sampler, model = _run([1.0, 2.0, 4.0, 8.0], [1, 1, 2, 4])
    assert stats["loss"] == pytest.approx((1 + 2 + 8 + 32) / 8) and stats["images"] == 8
    assert 0.0 <= stats["data_wait_share"] <= 1.0
    assert sampler.epochs == [3] and model.training  # the shard of this epoch, the model in train mode
    assert [r["step"] for r in ctx.reports] == [1, 2, 3, 4] and all(r["epoch"] == 3 for r in ctx.reports)
    assert ctx.reports[1]["loss"] == pytest.approx(1.5)  # the running mean at that step


def test_a_non_finite_loss_ends_the_epoch_early():
    stats, ctx, _, _ = _run([1.0, float("nan"), 1.0, 1.0], [1, 1, 1, 1])
    assert math.isnan(stats["loss"]) and stats["images"] == 2 and len(ctx.reports) == 2


@pytest.mark.parametrize(
    ("mode", "device", "want"),
    [("on", "cpu", True), ("off", "cuda", False), ("auto", "cpu", False), ("auto", "cuda", True)],
)
def test_one_channels_last_rule(mode, device, want):
    runtime = SimpleNamespace(channels_last=mode)
    assert wants_channels_last(runtime, torch.device(device)) is want  # type: ignore[arg-type]


def test_channels_last_default_is_auto():
    assert RuntimeConfig().channels_last == "auto"


def test_heatmaps_are_input_over_4_and_a_mismatch_names_the_key():
    assert heatmap_hw_of_input(256, 192) == (64, 48) and heatmap_hw_of_input(224, 224) == (56, 56)
    check_heatmap_output(torch.zeros(2, 17, 64, 48), (64, 48), "finetune.heatmap_hw", [64, 48])
    with pytest.raises(ValueError, match=r"finetune.heatmap_hw = \[32, 24\]: the model outputs \(64, 48\)"):
        check_heatmap_output(torch.zeros(2, 17, 64, 48), (32, 24), "finetune.heatmap_hw", [32, 24])


def test_one_did_you_mean():
    assert suggest("matrx", ["matrix", "defaults"]) == " (did you mean 'matrix'?)"
    assert suggest("hrnet", ["hrnet_w32", "simplebaseline_r50"]) == " (did you mean 'hrnet_w32'?)"
    assert suggest("zzz", ["matrix"]) == ""
