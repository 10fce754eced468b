"""One `UserError` base for everything a user can fix (the CLI: one line, exit 2); anything else is a
bug (its traceback and a request to report it, exit 1); and the store's one policy for corrupt JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import orchestrator.cli.main as cli
from orchestrator.cli.run import StudyBusy
from orchestrator.ray.connect import RayVersionError
from orchestrator.ray.host import HostBusy
from orchestrator.schedule import failures
from orchestrator.spec.tracking import TrackingError
from orchestrator.store.format import StoreError, parse_json, parse_json_lines, parse_json_or_warn
from orchestrator.store.store import Store
from reports.collect import open_store
from workloads.config import ConfigError
from workloads.data.coco import CocoDataError
from workloads.user_errors import BadFileError, CheckpointError, MissingFileError, UserError

STAGE = "pretrain-0123456789abcdef"


@pytest.mark.parametrize(
    "cls",
    [
        ConfigError,
        TrackingError,
        StoreError,
        StudyBusy,
        CocoDataError,
        RayVersionError,
        HostBusy,
        CheckpointError,
        MissingFileError,
        BadFileError,
    ],
)
def test_every_user_fixable_error_is_a_user_error(cls):
    assert issubclass(cls, UserError)


def test_user_errors_keep_the_builtin_base_callers_caught_before():
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(StoreError, RuntimeError)


def _command_raising(monkeypatch, exc: BaseException) -> None:
    def cmd_plan(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_plan", cmd_plan)


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    _command_raising(monkeypatch, CheckpointError("w.pt: key 'x' missing"))
    assert cli.main(["plan"]) == 2
    err = capsys.readouterr().err
    assert err == "error: w.pt: key 'x' missing\n"


@pytest.mark.parametrize("exc", [ValueError("bad index"), OSError("disk"), KeyError("k"), RuntimeError("x")])
def test_anything_else_is_a_bug_with_its_traceback_and_exit_1(monkeypatch, capsys, exc):
    _command_raising(monkeypatch, exc)
    assert cli.main(["plan"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and type(exc).__name__ in err and err.rstrip().endswith(cli.BUG_NOTE)


def test_make_data_into_an_unwritable_place_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["make-data", "--out", str(blocker / "sub"), "--train", "1", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: make-data --out {blocker / 'sub'}") and "Traceback" not in err


def test_evaluate_with_a_results_file_that_is_not_json_is_a_user_error(tmp_path, capsys):
    gt, results = tmp_path / "gt.json", tmp_path / "res.json"
    gt.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}')
    results.write_text("[{")
    assert cli.main(["evaluate", "--gt", str(gt), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(results) in err and "not valid JSON" in err


# ------------------------------------------------------------------------------------ corrupt JSON
def test_parse_json_raises_a_store_error_naming_the_file():
    assert parse_json(None, "a.json") is None and parse_json(b'{"x": 1}', "a.json") == {"x": 1}
    for bad in (b"{trunc", b"\xff\xfe\x00"):
        with pytest.raises(StoreError, match=r"^stages/x/a\.json: corrupt JSON"):
            parse_json(bad, "stages/x/a.json")


def test_parse_json_or_warn_reads_corrupt_as_absent_with_the_consequence(caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.store.format"):
        assert parse_json_or_warn("{trunc", "p/plan.json", "the study is left out") is None
    assert "p/plan.json: corrupt JSON" in caplog.text and "the study is left out" in caplog.text


def test_parse_json_lines_skips_a_partial_line_naming_it(caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.store.format"):
        rows = parse_json_lines(b'{"epoch": 0}\n{"epoch": 1}\n{"epo', "m.jsonl")
    assert rows == [{"epoch": 0}, {"epoch": 1}] and "m.jsonl line 3: unreadable row skipped" in caplog.text


def _corrupt_store(tmp_path: Path) -> tuple[Store, str]:
    store = Store(tmp_path / "store")
    store.write_result(STAGE, {"kind": "pretrain", "status": "done", "metrics": {}})
    path = store.stage_path(STAGE, "result.json")
    Path(path).write_text('{"kind": "pre')
    return store, path


def test_every_store_reader_applies_the_same_policy(tmp_path, caplog):
    store, path = _corrupt_store(tmp_path)
    with pytest.raises(StoreError, match="corrupt JSON"):  # the strict reader
        store.read_json(path)
    with caplog.at_level(logging.WARNING):
        assert store.read_result(STAGE) is None  # the stage is not finished: recomputed
        assert (
            open_store(tmp_path / "store").read_result(STAGE, "the report counts it as not finished") is None
        )
        store.write_bytes(failures.attempts_path(store, STAGE), b"{not json")
        assert failures.read_attempts(store, STAGE) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 3 and all("corrupt JSON" in m for m in messages)
    assert "recomputed" in messages[0] and "retry history is ignored" in messages[2]
