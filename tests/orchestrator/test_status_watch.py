"""`hsjp-study status --watch`: refreshes until the study is complete, shows the dashboard URL of a
Ray cluster when one answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import io
import time

import pytest

from orchestrator.cli import main as cli
from orchestrator.cli.status import watch
from orchestrator.ray import connect
from orchestrator.ray.connect import dashboard_url


def test_watch_refreshes_until_complete():
    states = iter([("a", False), ("b", False), ("c", True)])
    sleeps: list[float] = []
    out = io.StringIO()
    n = watch(lambda: next(states), interval_s=2.5, out=out, clear=False, sleep=sleeps.append)
    text = out.getvalue()
    assert n == 3 and sleeps == [2.5, 2.5]
    assert text.index("a\n") < text.index("b\n") < text.index("c\n") and "study complete" in text
    assert "\033[H" not in text


def test_watch_redraws_a_terminal_in_place_and_stops_on_ctrl_c():
    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    assert watch(lambda: ("table", False), out=out, clear=True, sleep=interrupt) == 1
    assert out.getvalue().startswith("\033[H\033[J") and "Ctrl-C to stop" in out.getvalue()


def test_status_watch_on_a_finished_study_prints_once(tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setattr(cli, "status_totals", lambda rows, plan: {"complete": True})
    monkeypatch.setattr(connect, "dashboard_url", lambda address: "http://10.0.0.1:8265")
    assert cli.main(["status", "--watch", "0.01", "--storage", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Ray dashboard: http://10.0.0.1:8265") and out.count("study complete") == 1
    assert "STAGE" in out


def test_status_watch_refuses_json_and_bad_intervals(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    assert cli.main(["status", "--watch", "--json", "--storage", str(tmp_path / "s")]) == 2
    assert "--watch and --json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["status", "--watch", "0", "--storage", str(tmp_path / "s")])


def test_dashboard_url_from_the_joined_cluster(monkeypatch):
    asked = []

    def joined(address):
        asked.append(address)
        return "127.0.0.1:8265"

    monkeypatch.setattr(connect, "_joined_dashboard_url", joined)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert dashboard_url("10.1.2.3:6379") == "http://127.0.0.1:8265" and asked == ["10.1.2.3:6379"]
    assert dashboard_url("http://head:8265") == "http://head:8265"  # a job-submission address
    assert dashboard_url("ray://head:10001") is None
    assert dashboard_url(None) == "http://127.0.0.1:8265" and asked[-1] == "auto"  # what `ray start` recorded
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    assert dashboard_url(None) == "http://127.0.0.1:8265" and asked[-1] == "10.9.9.9:6379"


def test_dashboard_url_is_none_without_a_cluster_or_when_it_does_not_answer(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def dead(address):
        raise ConnectionError("no cluster")

    monkeypatch.setattr(connect, "_joined_dashboard_url", dead)
    assert dashboard_url(None) is None
    assert dashboard_url("10.0.0.9:6379") is None
    monkeypatch.setattr(connect, "_joined_dashboard_url", lambda address: time.sleep(5) or "late:8265")
    assert dashboard_url("10.0.0.8:6379", timeout_s=0.2) is None  # does not answer in time
