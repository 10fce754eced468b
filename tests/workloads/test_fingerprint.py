"""The golden numerics fingerprints guard WORKLOAD_VERSIONS (workloads/fingerprint.py).

Each workload's fixed-seed tiny run must reproduce the fingerprint recorded for its current version; a
change of what it computes (here: the JointsMSE factor) fails, naming the version to bump.
"""

from __future__ import annotations

import json

import pytest

from workloads import WORKLOAD_VERSIONS, fingerprint
from workloads.pose import loss as pose_loss


@pytest.mark.parametrize("workload", sorted(WORKLOAD_VERSIONS))
def test_each_workload_reproduces_the_golden_fingerprint_of_its_version(workload):
    assert fingerprint.check(workload) is None


def test_a_changed_loss_constant_fails_and_names_the_version_to_bump(monkeypatch):
    monkeypatch.setattr(pose_loss, "JOINTS_MSE_FACTOR", 0.25)  # official: 0.5
    problem = fingerprint.check("pose")
    version = WORKLOAD_VERSIONS["pose"]
    assert problem is not None
    assert f"bump WORKLOAD_VERSIONS['pose'] to '{int(version) + 1}'" in problem
    assert "epoch0.loss" in problem and "python -m workloads.fingerprint --record pose" in problem


def test_a_version_without_a_recorded_fingerprint_says_how_to_record_it(monkeypatch):
    monkeypatch.setitem(WORKLOAD_VERSIONS, "hsjp", "99")
    problem = fingerprint.check("hsjp", now={"x": 1.0})
    assert "version 99: no golden fingerprint recorded" in problem and "--record hsjp" in problem


def test_values_compare_within_the_tolerance_only():
    assert fingerprint.differences({"a": 1.0}, {"a": 1.0 + 1e-6}) == []
    assert fingerprint.differences({"a": 1.0}, {"a": 1.001}) == ["a: 1.0 → 1.001"]
    assert fingerprint.differences({"a": 1.0}, {"b": 1.0}) == ["a: 1.0 → None", "b: None → 1.0"]


def test_recording_refuses_to_overwrite_a_version_whose_values_differ(tmp_path, monkeypatch):
    golden = tmp_path / "fingerprints.json"
    version = WORKLOAD_VERSIONS["pose"]
    golden.write_text(json.dumps({"pose": {version: {"digest": "x", "values": {"epoch0.loss": 1.0}}}}))
    with pytest.raises(SystemExit, match="already has a different fingerprint: bump"):
        fingerprint.record("pose", path=golden)
    now = fingerprint.record("pose", replace=True, path=golden)
    assert json.loads(golden.read_text())["pose"][version]["values"] == now
