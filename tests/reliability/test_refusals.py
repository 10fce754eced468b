"""Inputs that used to get through, each refused by `hsjp-study run` with
exit 2, one line naming the argument or key (and its line), no traceback and nothing written:
`--storage` naming a file, an unknown URI scheme or an unwritable place; a study giving a key twice; a
study over the trial bound (refused before it is expanded); fractional GPUs with several workers per
stage; a Ray Train V1 `TorchTrainer` (`RAY_TRAIN_V2_ENABLED=0`) or a Ray older than the floor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.ray.connect import RAY_FLOOR, RayVersionError, check_ray, parse_version
from orchestrator.spec import study as study_mod
from orchestrator.spec.study import load_study
from orchestrator.store.store import Store, StoreError, check_storage
from tests.orchestrator.standins import SMALL_STUDY as SMALL
from workloads.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def refused(argv: list[str], capsys, cwd: Path) -> str:
    """Run the CLI; assert exit 2, exactly one line on stderr starting `error: `, no traceback, and
    nothing written under `cwd`. Returns the line."""
    before = tree(cwd)
    code = main(argv)
    out = capsys.readouterr()
    assert code == 2, out
    assert out.err.startswith("error: ") and out.err.count("\n") == 1, out.err
    assert "Traceback" not in out.err + out.out
    assert tree(cwd) == before
    return out.err.strip()


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path a bad URI might create would land here
    (tmp_path / "study.yaml").write_text(SMALL)
    return tmp_path


# -------------------------------------------------------------------------------------- --storage
def test_storage_naming_an_existing_file(work, capsys):
    (work / "not-a-dir").write_text("precious")
    line = refused(["run", "study.yaml", "--storage", str(work / "not-a-dir")], capsys, work)
    assert (
        line
        == f"error: --storage {work / 'not-a-dir'}: is a file, not a folder; give a folder (created when missing) or a bucket URI"
    )


def test_storage_below_an_existing_file(work, capsys):
    (work / "f").write_text("x")
    line = refused(["run", "study.yaml", "--storage", str(work / "f" / "store")], capsys, work)
    assert (
        line
        == f"error: --storage {work / 'f' / 'store'}: {work / 'f'} is a file, so the store folder cannot be created"
    )


def test_storage_with_an_unknown_uri_scheme(work, capsys):
    line = refused(["run", "study.yaml", "--storage", "ftp://host/hsjp"], capsys, work)
    assert line.startswith(
        "error: --storage ftp://host/hsjp: unknown URI scheme 'ftp://'; give a folder or a URI of s3://"
    )


def test_storage_in_an_unwritable_place(work, capsys):
    line = refused(["run", "study.yaml", "--storage", "/proc/hsjp-store"], capsys, work)
    assert line.startswith("error: --storage /proc/hsjp-store: cannot create the store folder under /proc (")
    assert not os.path.exists("/proc/hsjp-store")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only-mode folder anyway")
def test_storage_in_a_folder_without_write_permission(work, capsys):
    locked = work / "locked"
    locked.mkdir(mode=0o500)
    try:
        line = refused(["run", "study.yaml", "--storage", str(locked / "store")], capsys, work)
    finally:
        locked.chmod(0o700)
    assert "cannot create the store folder under" in line and "Permission denied" in line


def test_check_storage_accepts_good_places_and_leaves_no_probe(tmp_path):
    check_storage(str(tmp_path / "new" / "store"))
    check_storage(str(tmp_path))
    check_storage(f"file://{tmp_path}")
    check_storage("s3://bucket/hsjp")  # bucket URIs are not contacted
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="unknown URI scheme 'webdav://'"):
        check_storage("webdav://x/y")


def test_store_turns_pyarrow_errors_into_a_store_error_naming_the_root():
    with pytest.raises(StoreError, match=r"^store ftp://host/x: cannot be opened \("):
        Store("ftp://host/x")


# ------------------------------------------------------------------------------------ study file
def test_a_key_given_twice_is_rejected_naming_the_key_and_its_line(work, capsys):
    (work / "study.yaml").write_text(
        SMALL.replace("epochs: 2}\n  finetune", "epochs: 2}\n  pretrain: {n: 3}\n  finetune", 1)
    )
    text = (work / "study.yaml").read_text()
    assert text.splitlines()[5] == "  pretrain: {n: 3}"  # line 6 repeats `pretrain` of line 5
    line = refused(["run", "study.yaml", "--storage", "store"], capsys, work)
    assert line == (
        "error: study.yaml: line 6: key 'pretrain' is given twice in one mapping (first at line 5); "
        "YAML would silently keep the last one, give it once"
    )


def test_a_nested_duplicate_and_a_flow_mapping_duplicate(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SMALL + "matrix: {pretrain.n: [2], pretrain.n: [3]}\n")
    with pytest.raises(ConfigError, match=r"line 7: key 'pretrain.n' is given twice .* \(first at line 7\)"):
        load_study(path)


def test_merge_keys_may_still_be_overridden():
    from orchestrator.spec import strict_yaml

    text = "a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n"
    assert strict_yaml.parse(text) == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


def test_a_study_over_the_trial_bound_is_refused_before_it_is_expanded(work, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the matrix must not be expanded")

    monkeypatch.setattr(study_mod, "_expand_matrix", never)
    monkeypatch.setattr(study_mod, "_make_trial", never)
    values = ", ".join(str(1e-4 * (i + 1)) for i in range(100))
    (work / "study.yaml").write_text(
        SMALL
        + f"matrix:\n  pretrain.lr: [{values}]\n  finetune.lr: [{values}]\n  pretrain.seed: [{', '.join(map(str, range(100)))}]\n"
    )
    line = refused(["run", "study.yaml", "--storage", "store"], capsys, work)
    assert line == (
        "error: study.yaml: this study would make 1,000,000 trials (matrix pretrain.lr (100) × finetune.lr (100) × "
        "pretrain.seed (100)), over compute.trial_limit = 10,000; check the matrix for a typo, or raise "
        "compute.trial_limit if you mean it"
    )


def test_the_trial_bound_counts_include_and_seeds_and_is_a_setting(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        SMALL
        + "compute: {trial_limit: 5}\nmatrix: {pretrain.n: [2, 3]}\ninclude:\n  - {pretrain.n: 4}\nseeds: [0, 1]\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"would make 6 trials \(matrix pretrain.n \(2\) \+ 1 include entries, × 2 seeds\), over compute.trial_limit = 5",
    ):
        load_study(path)
    path.write_text(
        SMALL
        + "compute: {trial_limit: 6}\nmatrix: {pretrain.n: [2, 3]}\ninclude:\n  - {pretrain.n: 4}\nseeds: [0, 1]\n"
    )
    assert len(load_study(path).trials) == 6  # exactly at the bound: allowed, and the count was right


def test_fractional_gpus_with_several_workers_are_refused_naming_both_keys(work, capsys):
    (work / "study.yaml").write_text(
        SMALL + "compute: {use_gpu: true, gpus_per_worker: 0.5, workers_per_stage: 2}\n"
    )
    line = refused(["run", "study.yaml", "--storage", "store"], capsys, work)
    assert line.startswith(
        "error: study.yaml: compute.gpus_per_worker = 0.5 with study.yaml: compute.workers_per_stage = 2:"
    )
    assert "NCCL" in line
    (work / "study.yaml").write_text(
        SMALL + "compute: {use_gpu: true, gpus_per_worker: 0.5, workers_per_stage: 1}\n"
    )
    assert load_study(work / "study.yaml").compute.gpus_per_worker == 0.5  # one worker may share a GPU


# ----------------------------------------------------------------------------------- Ray version
class _V1Trainer:
    __module__ = "ray.train.torch.torch_trainer"


class _V2Trainer:
    __module__ = "ray.train.v2.torch.torch_trainer"


def test_version_guard_units(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "0")
    with pytest.raises(
        RayVersionError,
        match=r"Ray Train V1 class \(ray.train.torch.torch_trainer\) because RAY_TRAIN_V2_ENABLED=0",
    ):
        check_ray("2.60.0", _V1Trainer)
    check_ray("2.60.0", _V2Trainer)
    with pytest.raises(RayVersionError, match=r"Ray 2.50.1 is installed, hsjp-study needs Ray ≥ 2.51.0"):
        check_ray("2.50.1", _V2Trainer)
    assert parse_version("2.51.0rc1") == RAY_FLOOR and parse_version("3.0.0.dev0") == (3, 0, 0)


def test_the_installed_ray_passes(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_V2_ENABLED", raising=False)  # (imported now: must not be V1)
    check_ray()


def test_pyproject_floor_is_the_guards_floor():
    text = (REPO / "pyproject.toml").read_text()
    assert f'"ray[tune,train]>={RAY_FLOOR[0]}.{RAY_FLOOR[1]}"' in text


def test_train_v1_is_refused_by_run_with_exit_2_and_nothing_written(tmp_path):
    """A real process with RAY_TRAIN_V2_ENABLED=0: Ray hands out the V1 TorchTrainer, `run` refuses."""
    (tmp_path / "study.yaml").write_text(SMALL)
    env = {**os.environ, "RAY_TRAIN_V2_ENABLED": "0", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "run", "study.yaml", "--storage", "store"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith(
        "error: ray.train.torch.TorchTrainer is the Ray Train V1 class (ray.train.torch.torch_trainer) "
        "because RAY_TRAIN_V2_ENABLED=0 is set: hsjp-study needs Train V2"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
