"""The shipped smoke study end to end with every tracker on (the session's one smoke run): TensorBoard events
for every trained stage (one scalar per epoch, read back with tensorboard's reader), MLflow (file
store) and W&B (offline) runs with per-epoch metrics, a per-image outcome per finetune that gives its
AP, and a report with learning curves, a page per stage and intervals on the AP cells and on the
HSJP − scratch difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.bootstrap import Accumulator, read_outcome
from tests.orchestrator.test_tracking import _event_scalars, wandb_closed, wandb_history


@pytest.mark.slow
def test_smoke_study_is_tracked_and_reported_with_intervals(smoke_reference, tmp_path):
    """On the session's smoke run (tests/conftest.py `smoke_reference`, trackers on): one Ray Tune trial
    per computed stage, so one MLflow / W&B run per computed stage with one row per epoch."""
    if smoke_reference.tracking_dirs is None:
        pytest.skip("mlflow / wandb not installed (pip install 'hsjp-study[mlflow,wandb]'; make test does)")
    from reports.build import make_report

    plan, store, summary = smoke_reference.plan, smoke_reference.store, smoke_reference.summary
    mlruns, wandb_dir = smoke_reference.tracking_dirs.mlruns, smoke_reference.tracking_dirs.wandb
    assert summary["counts"] == {"done": len(plan.trials)}

    trained = {sid: spec for sid, spec in plan.stages.items() if spec.work}
    for sid, spec in trained.items():  # TensorBoard: one scalar per epoch for every trained stage
        epochs = spec.config.epochs if spec.kind == "pretrain" else spec.config.total_epochs
        scalars = _event_scalars(Path(store.stage_path(sid, "tb")))
        assert [s for s, _ in scalars["train/loss"]] == list(range(epochs)), sid
        key = "eval/precision" if spec.kind == "pretrain" else "eval/AP"
        assert scalars[key], sid
        if spec.kind == "finetune":  # its stored outcome re-accumulates to its AP
            outcome = read_outcome(store.read_bytes(store.stage_path(sid, "per_image.npz")))
            assert Accumulator(outcome).stats()[0] == pytest.approx(
                store.read_result(sid)["metrics"]["AP"], abs=1e-12
            )

    # per computed stage (= per Tune trial): the loss of every epoch
    computed = {sid: [r["loss"] for r in store.read_metrics(sid)] for sid in trained}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert sorted(len(client.get_metric_history(r.info.run_id, "loss")) for r in runs) == sorted(
        len(v) for v in computed.values()
    )
    # W&B: one offline run per stage trial, its history rows the stage's epochs in order. Known defect
    # (see orchestrator/spec/tracking.py): a run's last rows can be lost when Ray ends its logging actor while
    # wandb-core still writes (seen in 2 of 8 runs on 2 busy cores), so completeness is asserted for
    # the runs that closed (exit record) and order / values for every run.
    offline = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == len(trained)
    for d in offline:
        losses = [h["loss"] for h in wandb_history(d) if "loss" in h]
        expected = [v for v in computed.values() if v[: len(losses)] == pytest.approx(losses)]
        assert losses and expected, d.name  # the stage's epochs, in order
        if wandb_closed(d):
            assert any(len(v) == len(losses) for v in expected), d.name

    out = tmp_path / "report"
    files = {p.relative_to(out).as_posix() for p in make_report(store.base, out, n_resamples=200)}
    assert {"curves-smoke.png", "curves-smoke.pdf", "differences.md", "index.html"} <= files
    assert {f"stages/{sid}.html" for sid in plan.stages} <= files
    curves = pd.read_csv(out / "curves-smoke.csv")
    assert set(curves["series"]) == {"loss", "precision", "AP"}
    t1 = pd.read_csv(out / "table1.csv")
    hrnet = t1[(t1["backbone"] == "HRNet-W32") & (t1["split"] == "val2017")].set_index("pretraining")
    for method in ("scratch", "hsjp_n6"):
        row = hrnet.loc[method]
        assert row["ap_lo"] <= row["ap"] <= row["ap_hi"] and "[" in row["ap_measured"], method
    diffs = pd.read_csv(out / "differences.csv").set_index("comparison")
    d = diffs.loc["hrnet_w32: HSJP − scratch (Table 1, val2017)"]
    assert np.isfinite(d["lo"]) and d["lo"] <= d["delta"] <= d["hi"]
    index = (out / "index.html").read_text()
    assert "curves-smoke.png" in index and all(f"stages/{sid}.html" in index for sid in plan.stages)
