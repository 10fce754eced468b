"""The lr schedule: drops at the official epoch (the official tools/train.py steps the lr scheduler at the
start of each epoch: LR_STEP m applies from 0-based epoch m − 1), steps scaled for other lengths, and a
lr scheduler restored from its state continuing exactly."""

from __future__ import annotations

import collections

import pytest
import torch

from workloads.config import FinetuneConfig, ModelConfig, PretrainConfig, lr_drop_epochs
from workloads.engine import make_lr_schedule


def _lrs(milestones: list[int], epochs: int, lr: float = 1e-3) -> list[float]:
    """The lr of each epoch as run_epochs sees it: read before the epoch, the lr scheduler stepped after."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_lr_schedule(opt, milestones, 0.1)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _runs(lrs: list[float]) -> list[tuple[int, int]]:
    """(first epoch, length) of each run of equal lr."""
    counts = collections.Counter(f"{v:.3e}" for v in lrs)
    firsts = {}
    for e, v in enumerate(lrs):
        firsts.setdefault(f"{v:.3e}", e)
    return sorted((firsts[k], counts[k]) for k in counts)


@pytest.mark.parametrize(
    "backbone, runs",
    [
        ("hrnet_w32", [(0, 169), (169, 30), (199, 11)]),  # LR_STEP [170, 200] of 210
        ("simplebaseline_r50", [(0, 89), (89, 30), (119, 21)]),  # LR_STEP [90, 120] of 140
    ],
)
def test_the_finetune_drops_the_lr_at_the_official_epoch(backbone, runs):
    cfg = FinetuneConfig(model=ModelConfig(backbone=backbone))
    lrs = _lrs(cfg.milestones, cfg.total_epochs)
    assert _runs(lrs) == runs
    assert lrs[0] == pytest.approx(1e-3) and lrs[runs[1][0]] == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-5)


def test_the_pretext_drops_at_the_190th_and_220th_epoch():
    lrs = _lrs(PretrainConfig().milestones, 240)
    assert _runs(lrs) == [(0, 189), (189, 30), (219, 21)]  # paper §3.4, epochs counted from 1


def test_steps_are_scaled_for_other_lengths():
    assert FinetuneConfig(epochs=450).milestones == [364, 429]  # Table 3's 450-epoch scratch run
    assert PretrainConfig(epochs=120).milestones == [95, 110]
    assert PretrainConfig(epochs=480).milestones == [380, 440]
    assert lr_drop_epochs([364, 429]) == [363, 428] and lr_drop_epochs([1]) == [0]
    assert _runs(_lrs([364, 429], 450)) == [(0, 363), (363, 65), (428, 22)]


def test_a_restored_lr_schedule_continues_exactly():
    full = _lrs([3, 5], 8)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make_lr_schedule(opt, [3, 5], 0.1)
    for _ in range(3):
        opt.step()
        sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched2 = make_lr_schedule(opt2, [3, 5], 0.1)
    opt2.load_state_dict(state_opt)
    sched2.load_state_dict(state_sched)
    rest = []
    for _ in range(5):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == full[3:]
