"""The shipped smoke study end to end with every tracker on (slow, ~4 min on 2 cores): TensorBoard events
for every trained stage (one scalar per epoch, read back with tensorboard's reader), MLflow (file
store) and W&B (offline) runs with per-epoch metrics, a per-image outcome per finetune that gives its
AP, and a report with learning curves, a page per stage and intervals on the AP cells and on the
HSJP − scratch difference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.store import Store
from reports.bootstrap import Accumulator, read_outcome
from tests.orchestrator.test_tracking import _event_scalars, local_ray, wandb_closed, wandb_history  # noqa: F401

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"


@pytest.mark.slow
def test_smoke_study_is_tracked_and_reported_with_intervals(local_ray, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("mlflow", reason="pip install 'hsjp-study[mlflow]'")
    pytest.importorskip("wandb", reason="pip install 'hsjp-study[wandb]'")
    from orchestrator.execution import run_study
    from orchestrator.inputs import prepare_data
    from orchestrator.plan import make_plan
    from orchestrator.study import load_study
    from reports.build import make_report

    study = load_study(SMOKE)
    store = Store(tmp_path / "store")
    plan = make_plan(study, prepare_data(study, store))
    mlruns, wandb_dir = tmp_path / "mlruns", tmp_path / "wandb"
    plan = dataclasses.replace(
        plan,
        tracking={
            "mlflow": {"tracking_uri": mlruns.as_uri(), "experiment_name": "smoke"},
            "wandb": {"project": "hsjp-smoke", "mode": "offline", "dir": str(wandb_dir)},
        },
    )
    summary = run_study(plan, store, study_text=study.text, progress=False)
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

    # per trial: the loss of every epoch of the stages it computed (a shared pretrain: by one trial)
    computed: dict[str, list[float]] = {}
    for t in plan.trials:
        how = next(r for r in summary["trials"] if r["trial_id"] == t.trial_id)
        computed[t.trial_id] = [
            r["loss"]
            for sid, key in ((t.pretrain, "pretrain_how"), (t.finetune, "finetune_how"))
            if sid in trained and how[key] == "computed"
            for r in store.read_metrics(sid)
        ]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert sorted(len(client.get_metric_history(r.info.run_id, "loss")) for r in runs) == sorted(
        len(v) for v in computed.values()
    )
    # W&B: one offline run per trial, its history rows the trial's epochs in order. Known defect (see
    # orchestrator/tracking.py): a run's last rows can be lost when Ray ends its logging actor while
    # wandb-core still writes (seen in 2 of 8 runs on 2 busy cores), so completeness is asserted for
    # the runs that closed (exit record) and order / values for every run.
    offline = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == len(plan.trials)
    for d in offline:
        losses = [h["loss"] for h in wandb_history(d) if "loss" in h]
        expected = [v for v in computed.values() if v[: len(losses)] == pytest.approx(losses)]
        assert losses and expected, d.name  # the trial's epochs, in order
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
