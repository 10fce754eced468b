"""Collapse as the paper means it: a pretext that failed to learn the puzzle (Table 2, lr 2e-3), decided on
patch accuracy near chance with flat heatmaps or a loss that does not fall, not on P = 0 (a healthy
N = 8 sits at P = 0 for long)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workloads.hsjp.train as hsjp_train
from workloads.config import ConfigError, DataConfig, ModelConfig, PretrainConfig
from workloads.context import LocalContext
from workloads.data.synthetic import generate
from workloads.engine import LoopSpec, Task, make_lr_schedule, make_optimizer, run_epochs
from workloads.hsjp.collapse import SIGNALS, CollapseRule, PretextCollapse, failure_of, pretext_collapsed
from workloads.hsjp.precision import heatmap_contrast

N8 = CollapseRule(n=8, warmup_epochs=40, patience=3, chance_factor=2.0, flat_contrast=0.1, loss_fraction=0.75)


def _rule(**changes) -> CollapseRule:
    return CollapseRule(**{**N8.__dict__, **changes})


def _h(*rows, first_loss: float = 1.0e-3) -> list[dict]:
    """Engine history: an epoch-0 record (loss only) then evaluations (epoch, P, patch accuracy,
    heatmap contrast, loss)."""
    history = [{"epoch": 0, "loss": first_loss}]
    for epoch, p, acc, contrast, loss in rows:
        history.append({"epoch": epoch, "loss": loss, "precision": p, "patch_accuracy": acc,
                        "heatmap_contrast": contrast})  # fmt: skip
    return history


# a healthy N = 8 stand-in: P = 0 at every evaluation (solving all 64 patches is rare), patch accuracy
# rising from 1/64 to 0.3, peaks growing, loss falling
HEALTHY_N8 = _h(
    (9, 0.0, 1 / 64, 0.02, 9.8e-4),
    (19, 0.0, 0.04, 0.05, 9.0e-4),
    (39, 0.0, 0.08, 0.12, 8.0e-4),
    (49, 0.0, 0.15, 0.20, 7.0e-4),
    (59, 0.0, 0.22, 0.26, 6.2e-4),
    (69, 0.0, 0.30, 0.31, 5.5e-4),
)
# the lr-2e-3 style failure: patch accuracy at chance, heatmaps not flat (noise), loss flat
NO_LEARNING = _h(*[(e, 0.0, 1 / 64, 0.4, 1.02e-3) for e in (9, 19, 39, 49, 59, 69)])
# flat heatmaps: the mean target map (bumps of 1/N² of the peak); the loss fell to its level
FLAT = _h(*[(e, 0.0, 0.01, 1 / 64, 0.6e-3) for e in (9, 19, 39, 49, 59, 69)])


def test_a_healthy_n8_at_p_zero_with_rising_patch_accuracy_is_not_collapsed():
    for k in range(2, len(HEALTHY_N8) + 1):  # at every evaluation, early stop or last epoch
        assert pretext_collapsed(HEALTHY_N8[:k], N8, final=False) is None
        assert pretext_collapsed(HEALTHY_N8[:k], N8, final=True) is None
    assert pretext_collapsed(HEALTHY_N8, _rule(patience=None), final=True) is None


def test_the_no_learning_failure_collapses_after_patience_evaluations():
    assert pretext_collapsed(NO_LEARNING[:5], N8, final=False) is None  # evaluations at 40, 50 only
    reason = pretext_collapsed(NO_LEARNING[:6], N8, final=False)
    assert reason is not None and "epochs 40, 50, 60" in reason and "ended early after 3" in reason
    assert "loss not falling" in reason and "P = 0" in reason and "1/N² = 0.016" in reason


def test_flat_heatmaps_collapse_even_though_the_loss_fell():
    assert failure_of(FLAT[3], N8, start_loss=1.0e-3) == "flat heatmaps"
    reason = pretext_collapsed(FLAT, N8, final=True)
    assert reason is not None and "flat heatmaps" in reason and "40-epoch warm-up" in reason
    # the same records with peaks (not flat) and that loss drop: learning something, not collapsed
    peaked = [dict(h, heatmap_contrast=0.3) if "precision" in h else h for h in FLAT]
    assert pretext_collapsed(peaked, N8, final=True) is None


def test_one_evaluation_above_chance_means_the_run_learns():
    history = NO_LEARNING[:4] + _h((49, 0.0, 0.05, 0.4, 1.0e-3))[1:] + NO_LEARNING[5:]  # 0.05 > 2/64
    assert pretext_collapsed(history, N8, final=True) is None


def test_thresholds_are_where_the_rule_says():
    rule = _rule(n=6)  # chance 1/36: at chance up to 2/36 = 0.0556
    record = {"patch_accuracy": 2 / 36, "heatmap_contrast": 0.5, "loss": 0.75}
    assert failure_of(record, rule, start_loss=1.0) == "loss not falling"  # 0.75 ≥ 0.75 × 1.0
    assert failure_of(dict(record, loss=0.74), rule, start_loss=1.0) is None
    assert failure_of(dict(record, patch_accuracy=0.056), rule, start_loss=1.0) is None
    assert failure_of(dict(record, heatmap_contrast=0.099, loss=0.1), rule, 1.0) == "flat heatmaps"
    assert failure_of({"patch_accuracy": 0.0, "loss": 1.0}, rule, 1.0) is None  # signals not recorded


def test_warmup_and_the_last_epoch():
    assert pretext_collapsed(NO_LEARNING[:3], N8, final=True) is None  # no evaluation after the warm-up
    short = _rule(patience=None)
    assert pretext_collapsed(NO_LEARNING[:5], short, final=False) is None  # judged at the end
    reason = pretext_collapsed(NO_LEARNING[:5], short, final=True)
    assert reason is not None and "epochs 40, 50)" in reason and "ended early" not in reason


def test_heatmap_contrast_is_zero_for_flat_maps_and_near_one_for_targets():
    flat = torch.full((2, 3, 8, 8), 0.4)
    assert torch.allclose(heatmap_contrast(flat), torch.zeros(2), atol=1e-6)
    peaked = torch.zeros(1, 2, 8, 8)
    peaked[0, :, 3, 4] = 1.0
    assert heatmap_contrast(peaked).item() == pytest.approx(1 - 1 / 64)


def test_single_process_check_needs_no_process_group():
    check = PretextCollapse(_rule(warmup_epochs=1, patience=1), rank=0, world_size=1, device="cpu")
    assert check(NO_LEARNING[:2], False) is not None
    other_rank = PretextCollapse(_rule(warmup_epochs=1, patience=1), rank=1, world_size=1, device="cpu")
    assert other_rank(NO_LEARNING[:2], False) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("collapse_patience", 0),
        ("collapse_warmup_epochs", -1),
        ("collapse_chance_factor", 0.5),
        ("collapse_chance_factor", float("nan")),
        ("collapse_flat_contrast", 1.5),
        ("collapse_loss_fraction", -0.1),
    ],
)
def test_config_rejects_bad_collapse_settings(field, value):
    with pytest.raises(ConfigError, match=rf"pretrain\.{field}"):
        PretrainConfig(**{field: value})


def _scripted_run(tmp_path, evals: dict[int, dict], losses: list[float], rule: CollapseRule):
    """The engine's loop with a scripted pretext: epoch e trains to loss losses[e] and its evaluation
    gives evals[e]; the collapse check and the history are the real ones."""
    model = nn.Linear(1, 1)
    optimizer = make_optimizer(model, 1e-3)
    epoch = {"now": -1}

    def train_step(tensors):
        optimizer.zero_grad()
        (0.0 * model(tensors[0]).sum()).backward()
        optimizer.step()
        return torch.tensor(losses[epoch["now"]])

    def prepare(batch):
        epoch["now"] += 1
        return (torch.zeros(1),)

    task = Task(model, optimizer, make_lr_schedule(optimizer, [], 0.1), [0], _Sampler(), prepare, train_step,
                lambda: dict(evals[epoch["now"]]))  # fmt: skip
    spec = LoopSpec(epochs=len(losses), eval_every=1, select_key="precision", collapse_loss=1.0, config={},
                    collapse_check=PretextCollapse(rule, 0, 1, "cpu"), history_keys=SIGNALS)  # fmt: skip
    return run_epochs(LocalContext(tmp_path), task, spec)


class _Sampler:
    def set_epoch(self, epoch: int) -> None:
        pass


def test_the_engine_keeps_a_healthy_n8_standin_and_ends_a_failing_one(tmp_path):
    rule = _rule(warmup_epochs=2, patience=2)
    epochs = 8
    acc = [1 / 64 + 0.04 * e for e in range(epochs)]  # rising from chance to 0.3
    healthy = {e: {"precision": 0.0, "patch_accuracy": acc[e], "heatmap_contrast": 0.02 + 0.04 * e,
                   "puzzles": 100} for e in range(epochs)}  # fmt: skip
    out = _scripted_run(tmp_path / "healthy", healthy, [1e-3 * (1 - 0.05 * e) for e in range(epochs)], rule)
    assert not out.collapsed and out.trained == list(range(epochs))
    assert [h["patch_accuracy"] for h in out.history] == acc  # the signals are in the history
    failing = {e: {"precision": 0.0, "patch_accuracy": 1 / 64, "heatmap_contrast": 0.3, "puzzles": 100}
               for e in range(epochs)}  # fmt: skip
    out = _scripted_run(tmp_path / "failing", failing, [1e-3] * epochs, rule)
    assert out.collapsed and out.trained == [0, 1, 2] and "loss not falling" in out.collapse_reason


class FlatHeatmaps(nn.Module):
    """A stand-in that can only learn flat heatmaps: one learnable constant per channel, broadcast over
    the heatmap. Trained with the real loss it converges to the targets' mean value, a flat map whose
    argmax is its first pixel, so no patch is ever located: P = 0 and patch accuracy 0 at every
    evaluation, heatmap contrast 0."""

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
    assert "flat heatmaps" in result.metrics["reason"] and abs(result.metrics["heatmap_contrast"]) < 1e-6
    # it did train, towards flat maps: the loss fell by far more than loss_fraction, flatness decides
    assert result.metrics["loss_last"] < cfg.collapse_loss_fraction * result.metrics["loss_first"]


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
