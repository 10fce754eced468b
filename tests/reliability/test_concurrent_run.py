"""Two `hsjp-study run` of the same study at once: the second fails fast with a clear message
and exit code 2, before anything is written and before Ray starts (a study-level file lock,
`<store>/locks/study-<name>.lock`). Tested without Ray: the lock is held by the test."""

from __future__ import annotations

from pathlib import Path

import filelock
import pytest

from orchestrator.cli import run as execution
from orchestrator.cli.main import main
from orchestrator.plan import make_plan
from orchestrator.ray import tune as ray_backend
from orchestrator.spec.inputs import data_config
from orchestrator.spec.study import load_study
from orchestrator.store.store import Store
from tests.orchestrator.standins import SMALL_STUDY

SMALL = "\nname: locked" + SMALL_STUDY + "matrix: {pretrain.n: [2, 3]}\n"


@pytest.fixture
def setup(tmp_path):
    study_file = tmp_path / "locked.yaml"
    study_file.write_text(SMALL)
    study = load_study(study_file)
    store = Store(tmp_path / "store")
    plan = make_plan(study, data_config(study.data, store.base))
    return study_file, study, store, plan


def _lock_path(store: Store, name: str) -> Path:
    return Path(store.base) / "locks" / f"study-{name}.lock"


def _no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start while another run holds the study")

    monkeypatch.setattr(ray_backend, "connect", refuse)


def test_run_study_fails_fast_while_another_run_holds_the_study(setup, monkeypatch):
    _, study, store, plan = setup
    _no_ray(monkeypatch)
    path = _lock_path(store, "locked")
    path.parent.mkdir(parents=True)
    with filelock.FileLock(path):
        with pytest.raises(execution.StudyBusy) as info:
            execution.run_study(plan, store, study_text=study.text, progress=False)
    assert str(info.value) == (
        f"study locked is already being run by another `hsjp-study run` (lock file {path}); "
        "wait for it or stop it"
    )
    assert not Path(store.study_path("locked")).exists()  # nothing written


def test_cli_run_exits_2_with_the_message(setup, monkeypatch, capsys):
    study_file, _, store, _ = setup
    _no_ray(monkeypatch)
    path = _lock_path(store, "locked")
    path.parent.mkdir(parents=True)
    with filelock.FileLock(path):
        assert main(["run", str(study_file), "--storage", store.base]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study locked is already being run by another `hsjp-study run`")
    assert str(path) in err and "Traceback" not in err
    assert not Path(store.study_path("locked")).exists()


def test_lock_is_released_after_a_run_and_other_studies_are_not_blocked(setup, monkeypatch):
    """A run with nothing to do (every stage finished) never starts Ray; it takes and frees the lock."""
    _, study, store, plan = setup
    _no_ray(monkeypatch)
    for sid, spec in plan.stages.items():
        store.write_result(sid, {"kind": spec.kind, "status": "done", "metrics": {}})
    other = _lock_path(store, "other-study")
    other.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(other):  # another study's run does not block this one
        summary = execution.run_study(plan, store, study_text=study.text, progress=False)
    assert summary["ran"] == 0
    lock = filelock.FileLock(_lock_path(store, "locked"))
    lock.acquire(timeout=0)  # free again
    lock.release()


def test_lock_is_released_when_the_run_fails(setup, monkeypatch):
    _, study, store, plan = setup

    def boom(address, *args):  # _connect(address, demand, study)
        raise RuntimeError("cluster unreachable")

    monkeypatch.setattr(ray_backend, "connect", boom)
    with pytest.raises(RuntimeError, match="cluster unreachable"):
        execution.run_study(plan, store, study_text=study.text, progress=False)
    lock = filelock.FileLock(_lock_path(store, "locked"))
    lock.acquire(timeout=0)
    lock.release()
