"""Trackers: the study's `tracking:` key (parsing, a missing package → exit 2 naming the extra), and
TensorBoard events per stage read back with tensorboard's own event reader. The slow test runs a
study through Ray with MLflow (file store) and W&B (offline) and reads their per-epoch metrics back."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main as cli
from orchestrator.ray.tune import tracking_callbacks as tune_callbacks
from orchestrator.spec.study import load_study
from orchestrator.spec.tracking import TrackingError, check_available, parse_tracking
from orchestrator.store import tb
from orchestrator.store.store import Store
from workloads.config import ConfigError

HERE = Path(__file__).resolve().parent
SMOKE = HERE.parents[1] / "studies" / "smoke.yaml"


def _event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every event file in `folder`, read by tensorboard's EventAccumulator."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package (pip install 'hsjp-study[test]') reads the event files back",
    )
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ------------------------------------------------------------------------------------------ parsing
def test_tracking_is_off_by_default_and_parsed_when_given():
    assert parse_tracking(None, "s.yaml").trackers == ()
    cfg = parse_tracking({"mlflow": None, "wandb": {"project": "p", "mode": "offline"}}, "s.yaml")
    assert cfg.trackers == ("mlflow", "wandb") and cfg.mlflow == {} and cfg.wandb["mode"] == "offline"
    assert tune_callbacks(None, "x") == [] and tune_callbacks({}, "x") == []


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"tensorboard": {}}, "tracking.tensorboard: unknown tracker"),
        ({"mlflow": {"uri": "x"}}, "tracking.mlflow.uri: unknown key; allowed: tracking_uri"),
        ({"wandb": {"mode": "sometimes"}}, "tracking.wandb.mode = 'sometimes'"),
        ({"wandb": ["p"]}, "tracking.wandb = \\['p'\\]: expected a mapping"),
        ("mlflow", "expected a mapping with mlflow"),
    ],
)
def test_bad_tracking_config_names_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_tracking(raw, "s.yaml")


def _study_with_tracking(tmp_path: Path, tracking: str) -> Path:
    path = tmp_path / "tracked.yaml"
    path.write_text(SMOKE.read_text().replace("name: smoke", "name: tracked") + "\ntracking:\n" + tracking)
    return path


def test_study_and_plan_carry_the_tracking_config(tmp_path):
    from orchestrator.plan import make_plan
    from orchestrator.spec.inputs import data_config

    study = load_study(_study_with_tracking(tmp_path, "  mlflow: {tracking_uri: file:///tmp/x}\n"))
    assert study.tracking.trackers == ("mlflow",)
    plan = make_plan(study, data_config(study.data, str(tmp_path / "store")))
    assert plan.tracking == {"mlflow": {"tracking_uri": "file:///tmp/x"}}
    assert load_study(SMOKE).tracking.trackers == ()


def test_missing_tracker_package_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    study = _study_with_tracking(tmp_path, "  wandb: {project: p, mode: offline}\n")
    store = tmp_path / "store"
    assert cli.main(["run", str(study), "--storage", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tracking.wandb" in err[0] and "pip install 'hsjp-study[wandb]'" in err[0]
    assert not store.exists()  # refused before anything was written
    with pytest.raises(TrackingError, match="hsjp-study\\[wandb\\]"):
        check_available(parse_tracking({"wandb": {}}, "s.yaml"))


# -------------------------------------------------------------------------------------- tensorboard
def _close_writers() -> None:
    """Flush this process's event files (a stage's worker process ends, which closes them)."""
    for writer in tb._WRITERS.values():
        if writer is not None:
            writer.close()
    tb._WRITERS.clear()


def test_tensorboard_events_one_scalar_per_epoch(tmp_path):
    store = Store(tmp_path / "store")
    sid = "finetune-" + "ab" * 8
    for epoch in range(3):
        row = {"epoch": epoch, "epochs": 3, "loss": 1.0 / (epoch + 1), "lr": 1e-3, "img_per_s": 50.0}
        tb.log_epoch(store, sid, row | ({"AP": 0.1 * epoch, "collapsed": False} if epoch else {}))
    _close_writers()
    scalars = _event_scalars(Path(store.stage_path(sid, "tb")))
    assert [s for s, _ in scalars["train/loss"]] == [0, 1, 2]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [s for s, _ in scalars["eval/AP"]] == [1, 2] and "eval/collapsed" not in scalars
    assert {"train/lr", "train/img_per_s"} <= set(scalars) and "train/epochs" not in scalars


def test_tensorboard_events_reach_an_object_store(tmp_path):
    class RemoteStore(Store):  # a store the writer must upload to (as for s3:// / gs://)
        @property
        def is_local(self) -> bool:
            return False

    store = RemoteStore(tmp_path / "remote")
    sid = "pretrain-" + "cd" * 8
    for epoch in range(2):
        tb.log_epoch(store, sid, {"epoch": epoch, "loss": 2.0 - epoch, "precision": 0.1})
    _close_writers()
    scalars = _event_scalars(Path(store.stage_path(sid, "tb")))
    assert [s for s, _ in scalars["train/loss"]] == [0, 1] and len(scalars["eval/precision"]) == 2


# ---------------------------------------------------------------------------------- through Ray
def wandb_records(run_dir: Path) -> list:
    """The protobuf `Record`s of an offline W&B run, read from its `run-*.wandb` file: a LevelDB-format
    log (32 KiB blocks of records: crc32, length, type; W&B adds a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run ({key: value}, values JSON-decoded)."""
    return [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in wandb_records(run_dir)
        if r.WhichOneof("record_type") == "history"
    ]


def wandb_closed(run_dir: Path) -> bool:
    """Whether the run was finished (W&B wrote its exit record)."""
    return any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_dir))


# local_ray: tests/orchestrator/conftest.py
@pytest.mark.slow
def test_mlflow_wandb_and_tensorboard_record_every_epoch_of_a_study(local_ray, tmp_path):
    pytest.importorskip("mlflow", reason="pip install 'hsjp-study[mlflow]'")
    pytest.importorskip("wandb", reason="pip install 'hsjp-study[wandb]'")
    import ray.cloudpickle

    sys.path.insert(0, str(HERE))
    import standins

    from orchestrator.cli.run import run_study

    ray.cloudpickle.register_pickle_by_value(standins)
    pre, ft = standins.pretrain_config(epochs=3), standins.finetune_config(epochs=4)
    plan = standins.make_plan("tracked", [("t-a", pre, ft)], salt="tracking")
    mlruns, wandb_dir = tmp_path / "mlruns", tmp_path / "wandb"
    plan = dataclasses.replace(
        plan,
        tracking={
            "mlflow": {"tracking_uri": mlruns.as_uri(), "experiment_name": "tracked"},
            "wandb": {"project": "hsjp-test", "mode": "offline", "dir": str(wandb_dir)},
        },
    )
    store = Store(tmp_path / "store")
    summary = run_study(
        plan, store, study_text="name: tracked\n", progress=False, workloads=standins.workloads()
    )
    assert summary["counts"] == {"done": 1}
    trial = plan.trials[0]
    expected = {trial.pretrain: 3, trial.finetune: 4}

    for sid, epochs in expected.items():  # TensorBoard: every trained stage, one scalar per epoch
        scalars = _event_scalars(Path(store.stage_path(sid, "tb")))
        assert [s for s, _ in scalars["train/loss"]] == list(range(epochs)), sid
        assert len(scalars["train/lr"]) == epochs and len(scalars["train/img_per_s"]) == epochs

    # one Ray Tune trial per stage, so one MLflow / W&B run per trained stage, one row per epoch
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == len(expected)
    by_length = sorted((len(client.get_metric_history(r.info.run_id, "loss")), r) for r in runs)
    assert [n for n, _ in by_length] == sorted(expected.values())
    for sid, (_, run) in zip(sorted(expected, key=expected.get), by_length):
        losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(losses) == pytest.approx(sorted(r["loss"] for r in store.read_metrics(sid))), sid

    runs_dir = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs_dir) == len(expected)
    series = {sid: [r["loss"] for r in store.read_metrics(sid)] for sid in expected}
    complete = 0
    for d in runs_dir:  # each run: one stage's epochs in order (complete when W&B closed it, see tracking.py)
        history = [h for h in wandb_history(d) if "loss" in h]
        losses = [h["loss"] for h in history]
        matches = [sid for sid, v in series.items() if losses and v[: len(losses)] == pytest.approx(losses)]
        assert matches, d.name
        assert [h["epoch"] for h in history] == list(range(len(history)))  # W&B logs numbers only
        if wandb_closed(d):
            assert any(len(losses) == expected[m] for m in matches), d.name
            complete += 1
    assert complete >= 1
