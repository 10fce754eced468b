"""Corrupt files left by a crash: a truncated result.json means "not finished" (warned, the
stage is redone); a truncated epoch checkpoint falls back to the previous good one, both in the plain
LocalContext and in the Ray Train context (`orchestrator.ray.tune`, tested without a Ray cluster)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from orchestrator.store.store import Store
from workloads.context import LocalContext

STAGE = "pretrain-0123456789abcdef"


def _truncate(path: Path, keep: int = 30) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ------------------------------------------------------------------------------------------ result.json
def test_truncated_result_json_counts_as_not_finished_with_a_warning(tmp_path, caplog):
    store = Store(tmp_path / "store")
    store.write_result(STAGE, {"kind": "pretrain", "status": "done", "metrics": {"precision": 0.9}})
    assert store.read_result(STAGE) is not None
    path = Path(store.stage_path(STAGE, "result.json"))
    _truncate(path)
    with caplog.at_level(logging.WARNING, logger="orchestrator.store.store"):
        assert store.read_result(STAGE) is None
        assert not (store.read_result(STAGE) is not None)
        assert [s for s in store.list_stages() if store.read_result(s)] == []
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages and all(str(path) in m and "corrupt JSON" in m and "recomputed" in m for m in messages)


def test_result_json_of_binary_garbage_counts_as_not_finished(tmp_path, caplog):
    store = Store(tmp_path / "store")
    path = Path(store.stage_path(STAGE, "result.json"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING, logger="orchestrator.store.store"):
        assert store.read_result(STAGE) is None
    assert str(path) in caplog.text


# ---------------------------------------------------------------------------------- LocalContext
def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}}


def test_truncated_epoch_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ctx = LocalContext(tmp_path / "ckpt", keep=3)
    for epoch in (1, 2, 3):
        ctx.save_epoch(_state(epoch), {"epoch": epoch})
    newest = tmp_path / "ckpt" / "epoch-0003.pt"
    _truncate(newest, keep=100)
    with caplog.at_level(logging.WARNING, logger="workloads.context"):
        state = LocalContext(tmp_path / "ckpt").resume_state()
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.full((2,), 2.0))
    assert str(newest) in caplog.text and "falling back to the previous one" in caplog.text


def test_every_epoch_checkpoint_truncated_starts_from_scratch(tmp_path, caplog):
    ctx = LocalContext(tmp_path / "ckpt")
    ctx.save_epoch(_state(1), {"epoch": 1})
    _truncate(tmp_path / "ckpt" / "epoch-0001.pt")
    with caplog.at_level(logging.WARNING, logger="workloads.context"):
        assert LocalContext(tmp_path / "ckpt").resume_state() is None
    assert "epoch-0001.pt" in caplog.text


# ---------------------------------------------------------------------- Ray Train checkpoints
import orchestrator.ray.train as rc  # noqa: E402  (beside the tests that use it)
import orchestrator.store.checkpoints as ckpt  # noqa: E402


def _ray_run(tmp_path: Path, epochs: list[int], truncate: tuple[int, ...] = (), drop: tuple[int, ...] = ()):
    """`<store>/stages/<id>/train/<id>/checkpoint_<time>/state.pt` folders as Ray Train lays them out."""
    run = tmp_path / "store" / "stages" / STAGE / "train" / STAGE
    dirs = []
    for epoch in epochs:
        folder = run / f"checkpoint_2026-01-01_00-00-{epoch:02d}.000000"
        folder.mkdir(parents=True)
        if epoch not in drop:
            torch.save(_state(epoch), folder / ckpt.STATE_FILE)
        if epoch in truncate:
            _truncate(folder / ckpt.STATE_FILE)
        dirs.append(str(folder))
    (run / "checkpoint_tmp_unrelated").mkdir()  # other names in the run dir sort but are no checkpoints
    (run / "checkpoint_tmp_unrelated" / "x").write_text("x")
    return run, dirs


def test_checkpoint_dirs_are_newest_first_and_never_newer_than_the_latest(tmp_path):
    run, dirs = _ray_run(tmp_path, [1, 2, 3, 4])
    listed = [str(p) for p in run.iterdir()]
    order = ckpt.checkpoint_dirs(listed, dirs[2])  # Ray handed back epoch 3's: epoch 4's is not ours
    assert order == [dirs[2], dirs[1], dirs[0]]
    assert ckpt.checkpoint_dirs([], dirs[0]) == [dirs[0]]


def test_first_loadable_state_skips_a_truncated_latest_and_warns_naming_it(tmp_path, caplog):
    from pyarrow.fs import LocalFileSystem

    _, dirs = _ray_run(tmp_path, [1, 2, 3], truncate=(3,), drop=(2,))
    fs = LocalFileSystem()
    with caplog.at_level(logging.WARNING, logger="orchestrator.store.checkpoints"):
        found = ckpt.first_loadable_state(dirs[::-1], lambda d: ckpt.load_state(fs, d))
    folder, state = found
    assert folder == dirs[0] and state["epoch"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"{dirs[2]}/state.pt is unreadable" in warnings[0]
    assert f"{dirs[1]}/state.pt is unreadable (FileNotFoundError" in warnings[1]
    assert all("falling back to the previous checkpoint" in w for w in warnings)


def test_first_loadable_state_none_when_nothing_is_readable(tmp_path):
    _, dirs = _ray_run(tmp_path, [1, 2], truncate=(1, 2))
    assert ckpt.first_loadable_state(dirs, lambda d: torch.load(f"{d}/state.pt", weights_only=True)) is None
    assert ckpt.first_loadable_state(["x"], lambda d: ["not", "a", "dict"]) is None


@pytest.mark.parametrize(
    "truncate, expected_epoch",
    [((), 3), ((3,), 2), ((2, 3), 1), ((1, 2, 3), None)],
    ids=["latest_ok", "latest_truncated", "two_truncated", "all_truncated"],
)
def test_ray_stage_context_resume_falls_back(tmp_path, monkeypatch, caplog, truncate, expected_epoch):
    """The whole of RayStageContext.resume_state with Ray Train's get_checkpoint faked (no cluster)."""
    import ray.train

    _, dirs = _ray_run(tmp_path, [1, 2, 3], truncate=truncate)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(dirs[-1]))
    ctx = object.__new__(rc.RayStageContext)
    ctx.stage_id, ctx.resumed_from = STAGE, None
    with caplog.at_level(logging.WARNING, logger="orchestrator.store.checkpoints"):
        state = ctx.resume_state()
    if expected_epoch is None:
        assert state is None and ctx.resumed_from is None
        assert "starting the stage from scratch" in caplog.text
    else:
        assert state["epoch"] == expected_epoch and ctx.resumed_from == expected_epoch
    for epoch in truncate:
        assert f"{dirs[epoch - 1]}/state.pt is unreadable" in caplog.text
