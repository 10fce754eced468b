"""Collapse as the paper defines it: HSJP precision P stays 0 after a warm-up (Table 2, lr 2e-3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workloads.hsjp.train as hsjp_train
from workloads.config import ConfigError, DataConfig, ModelConfig, PretrainConfig
from workloads.context import LocalContext
from workloads.data.synthetic import generate
from workloads.hsjp.collapse import PrecisionCollapse, post_warmup, precision_collapsed


def _h(*pairs) -> list[dict]:
    return [{"epoch": e, "loss": 0.1, "precision": p} for e, p in pairs]


def test_zero_precision_after_warmup_is_collapsed_at_the_end():
    history = _h((9, 0.2), (19, 0.0), (29, 0.0))  # a P > 0 during warm-up (epochs < 20) does not count
    assert post_warmup(history, 20) == [(19, 0.0), (29, 0.0)]
    reason = precision_collapsed(history, 20, final=True, patience=None)
    assert reason is not None and "epochs 20, 30" in reason and "20-epoch warm-up" in reason
    assert precision_collapsed(history, 20, final=False, patience=None) is None  # judged at the end


def test_any_positive_precision_after_warmup_is_not_collapsed():
    assert precision_collapsed(_h((19, 0.0), (29, 0.01), (39, 0.0)), 20, final=True, patience=1) is None


def test_patience_ends_early_once_enough_evaluations_are_zero():
    history = _h((9, 0.0), (19, 0.0))
    assert precision_collapsed(history, 10, final=False, patience=3) is None
    history += _h((29, 0.0))
    reason = precision_collapsed(history, 10, final=False, patience=3)
    assert reason is not None and "ended early after 3" in reason


def test_no_evaluation_after_the_warmup_is_never_collapsed():
    # a run shorter than its warm-up (the smoke study: 8 epochs, warm-up 40) is not judged by P
    assert precision_collapsed(_h((3, 0.0), (7, 0.0)), 40, final=True, patience=1) is None


def test_single_process_check_needs_no_process_group():
    check = PrecisionCollapse(1, 1, rank=0, world_size=1, device="cpu")
    assert check(_h((0, 0.0)), False) is not None
    assert PrecisionCollapse(1, 1, rank=1, world_size=1, device="cpu")(_h((0, 0.0)), False) is None


def test_config_rejects_bad_collapse_settings():
    with pytest.raises(ConfigError, match="collapse_patience"):
        PretrainConfig(collapse_patience=0)
    with pytest.raises(ConfigError, match="collapse_warmup_epochs"):
        PretrainConfig(collapse_warmup_epochs=-1)


class FlatHeatmaps(nn.Module):
    """A stand-in that can only learn flat heatmaps: one learnable constant per channel, broadcast over
    the heatmap. Trained with the real loss it converges to the targets' mean value, a flat map whose
    argmax is its first pixel, so no patch is ever located: P = 0 at every evaluation."""

    def __init__(self, channels: int, heatmap: int):
        super().__init__()
        self.level = nn.Parameter(torch.full((channels,), 0.5))
        self.heatmap = heatmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        flat = self.level.view(1, -1, 1, 1).expand(b, -1, self.heatmap, self.heatmap)
        return flat + 0.0 * x.mean()


@pytest.fixture
def flat_pretrain(tmp_path, monkeypatch):
    root = tmp_path / "data"
    generate(root, n_train=6, n_val=3, seed=0, image_size=(96, 64))
    data = DataConfig(coco_root=str(root), loader_workers=0, max_train_instances=8, max_val_instances=4)
    monkeypatch.setattr(
        hsjp_train, "build_model", lambda cfg, channels, generator=None: FlatHeatmaps(channels, 8)
    )
    cfg = PretrainConfig(
        model=ModelConfig(width=4, num_blocks=1, num_modules=(1, 1, 1)),
        n=2,
        input_size=32,
        heatmap_size=8,
        epochs=6,
        eval_every=1,
        batch_size=4,
        lr=0.05,
        lr_steps=(),
        collapse_warmup_epochs=2,
    )
    return cfg, data


def test_flat_heatmap_standin_collapses_and_ends_early(flat_pretrain, tmp_path):
    cfg, data = flat_pretrain
    cfg = PretrainConfig(**{**cfg.__dict__, "collapse_patience": 2})
    result = hsjp_train.run_pretrain(cfg, data, LocalContext(tmp_path / "early"))
    assert result.collapsed and result.collapsed_epoch == 2  # evaluations at epochs 2 and 3 (1-based)
    assert result.epochs_trained == [0, 1, 2]  # ended early: 3 of 6 epochs
    assert all(p == 0.0 for p in result.metrics["precision_history"].values())
    assert "P = 0" in result.metrics["reason"] and "ended early" in result.metrics["reason"]
    assert result.metrics["loss_last"] < result.metrics["loss_first"]  # it did train: towards flat maps


def test_flat_heatmap_standin_without_patience_is_judged_at_the_last_epoch(flat_pretrain, tmp_path):
    cfg, data = flat_pretrain
    cfg = PretrainConfig(**{**cfg.__dict__, "collapse_patience": None})
    ctx = LocalContext(tmp_path / "full")
    result = hsjp_train.run_pretrain(cfg, data, ctx)
    assert result.collapsed and result.collapsed_epoch == 5 and result.epochs_trained == list(range(6))
    assert "epochs 2, 3, 4, 5, 6" in result.metrics["reason"]
    again = hsjp_train.run_pretrain(cfg, data, ctx)  # resumed from the last checkpoint: still collapsed
    assert (
        again.collapsed and again.epochs_trained == [] and again.metrics["reason"] == result.metrics["reason"]
    )
