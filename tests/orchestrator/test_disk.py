"""Disk: pruning a finished stage's epoch checkpoints on a fake store layout
(`<store>/stages/<id>/train/<id>/checkpoint_*`, as Ray Train V2 writes it), and the store's size in
`hsjp-study status` (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.store.disk import format_bytes, prune_stage, store_usage
from orchestrator.store.store import Store

SID = "pretrain-0123456789abcdef"
SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"


def fake_stage(store: Store, sid: str = SID, *, finished=True, weights=True, checkpoints=3) -> Path:
    stage = Path(store.stage_path(sid))
    run = stage / "train" / sid
    for i in range(checkpoints):
        ck = run / f"checkpoint_2026-12-01_08-0{i}-00.000000"
        ck.mkdir(parents=True)
        (ck / "state.pt").write_bytes(b"x" * 1000 * (i + 1))
    if checkpoints:
        (run / "checkpoint_manager_snapshot.json").write_text("{}")
    store.append_metrics(sid, {"epoch": 0, "loss": 1.0})
    store.write_stage_config(sid, {"stage_id": sid})
    if weights:
        (stage / "weights.pt").write_bytes(b"w" * 500)
    if finished:
        store.write_result(sid, {"status": "done", "has_weights": True})
    return stage


def test_prune_removes_the_train_folder_and_keeps_what_later_steps_read(tmp_path):
    store = Store(tmp_path / "store")
    stage = fake_stage(store)
    report = prune_stage(store, SID)
    assert report.skipped is None and report.freed_bytes == 6000 + 2  # 1000+2000+3000 + snapshot "{}"
    assert not (stage / "train").exists()
    assert sorted(p.name for p in stage.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "result.json",
        "weights.pt",
    ]
    assert report.line() == f"stage {SID}: pruned 1 checkpoint folder(s), freed 6.0 kB"


def test_prune_keep_last_keeps_only_the_newest_checkpoint(tmp_path):
    store = Store(tmp_path / "store")
    stage = fake_stage(store)
    report = prune_stage(store, SID, keep_last=True)
    left = sorted(p.name for p in (stage / "train" / SID).iterdir())
    assert left == ["checkpoint_2026-12-01_08-02-00.000000", "checkpoint_manager_snapshot.json"]
    assert (
        report.freed_bytes == 3000 and len(report.removed) == 2 and report.kept[0].endswith("08-02-00.000000")
    )
    assert (stage / "weights.pt").exists()
    again = prune_stage(store, SID, keep_last=True)
    assert again.removed == [] and again.skipped == "only the last checkpoint is there"


@pytest.mark.parametrize(
    "finished, weights, reason",
    [
        (False, True, "the stage is not finished"),
        (True, False, "its result names output weights but weights.pt is missing"),
    ],
)
def test_prune_leaves_unfinished_or_weightless_stages_alone(finished, weights, reason, tmp_path):
    store = Store(tmp_path / "store")
    stage = fake_stage(store, finished=finished, weights=weights)
    report = prune_stage(store, SID)
    assert report.skipped == reason and report.removed == []
    assert len(list((stage / "train" / SID).glob("checkpoint_2026*"))) == 3


def test_prune_without_checkpoints_is_a_no_op(tmp_path):
    store = Store(tmp_path / "store")
    fake_stage(store, checkpoints=0)
    assert prune_stage(store, SID).skipped == "nothing to prune"


def test_store_usage_counts_everything_and_the_checkpoint_share(tmp_path):
    store = Store(tmp_path / "store")
    fake_stage(store)
    usage = store_usage(store)
    files = [p for p in Path(store.base).rglob("*") if p.is_file()]
    assert usage.files == len(files) and usage.total_bytes == sum(p.stat().st_size for p in files)
    assert usage.checkpoint_bytes == 6002
    prune_stage(store, SID)
    assert store_usage(store).checkpoint_bytes == 0


def test_format_bytes():
    assert [format_bytes(n) for n in (12, 1500, 2_500_000, 55e9, 3e12)] == [
        "12 B",
        "1.5 kB",
        "2.5 MB",
        "55.0 GB",
        "3000.0 GB",
    ]


def test_status_prints_the_store_size(tmp_path, capsys):
    store = Store(tmp_path / "store")
    fake_stage(store)
    assert main(["status", str(SMOKE), "--storage", store.base]) == 0
    out = capsys.readouterr().out
    usage = store_usage(store)
    assert out.rstrip().splitlines()[-1] == (
        f"store {store.base}: {format_bytes(usage.total_bytes)} in {usage.files} files (6.0 kB of them epoch checkpoints)"
    )
    assert main(["status", str(SMOKE), "--storage", store.base, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["store"] == {
        "uri": store.base,
        "bytes": usage.total_bytes,
        "files": usage.files,
        "checkpoint_bytes": 6002,
    }
