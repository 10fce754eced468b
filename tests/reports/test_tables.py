"""Tables 1–3: measured cells beside the paper's, missing / collapsed / running / failed cells, seeds,
GPU-hours, the written CSV / Markdown / LaTeX."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.cells import Cell, References, references
from reports.collect import collect
from reports.render import write_table
from reports.tables import epoch_row, load_reported, long_epochs, table1, table2, table3

REPORTED = load_reported()


@pytest.fixture(scope="module")
def stages(known_store):
    return collect(known_store.store.uri)


@pytest.fixture(scope="module")
def written(stages, tmp_path_factory):
    """Each table written and read back: {name: (csv DataFrame, markdown text, latex text)}."""
    out = tmp_path_factory.mktemp("tables")
    back = {}
    for name, build in (("table1", table1), ("table2", table2), ("table3", table3)):
        paths = write_table(build(stages, REPORTED), out, name)
        assert [p.suffix for p in paths] == [".md", ".csv", ".tex"]
        back[name] = (pd.read_csv(paths[1]), paths[0].read_text(), paths[2].read_text())
    return back


def _row(frame: pd.DataFrame, **equal) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for k, v in equal.items():
        mask &= frame[k] == v
    assert mask.sum() == 1, f"{equal}: {mask.sum()} rows"
    return frame[mask].iloc[0]


def _md_cells(markdown: str, first: str, second: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == first and cells[1] == second:
            return cells
    raise AssertionError(f"no Markdown row {first} | {second}")


def test_table1_measured_beside_paper(written):
    csv, md, tex = written["table1"]
    hrnet = {
        p: _row(csv, approach="HRNet", pretraining=p, split="val2017")
        for p in ("scratch", "imagenet", "hsjp_n6")
    }
    assert hrnet["scratch"]["ap"] == pytest.approx(60.0) and hrnet["scratch"]["ap_paper"] == 72.9
    assert hrnet["scratch"]["ap_diff"] == pytest.approx(60.0 - 72.9)
    assert hrnet["imagenet"]["ap"] == pytest.approx(70.0) and hrnet["imagenet"]["ap_paper"] == 74.4
    # HSJP: N=6 preferred over N=3 (71.0) and over 4 pretrain epochs (75.0); two pretrain seeds
    hsjp = hrnet["hsjp_n6"]
    assert (
        hsjp["ap"] == pytest.approx(73.0)
        and hsjp["ap_n"] == 2
        and hsjp["ap_std"] == pytest.approx(math.sqrt(2))
    )
    assert hsjp["ap_measured"] == "73.00 ± 1.41 (n=2)" and hsjp["ap_paper"] == 74.5
    assert hsjp["ap_spread"] == "outside seed spread"  # |74.5 − 73.0| = 1.5 > 1.41
    assert "N=6 lr=1e-3 2 pretrain ep" in hsjp["settings"] and "pretrain seeds 0,1" in hsjp["settings"]
    assert _row(csv, approach="SimpleBaseline", pretraining="imagenet", split="val2017")[
        "ap"
    ] == pytest.approx(69.0)
    assert _md_cells(md, "HRNet", "HRNet-W32")[4:7] == ["60.00", "72.9", "-12.90"]
    assert "73.00 $\\pm$ 1.41 (n=2)" in tex


def test_table1_cells_not_run(written):
    csv, md, _ = written["table1"]
    # test-dev cells: val finetunes without finetune.test_splits say so; no finetune at all: not run
    test_dev = csv[csv["split"] == "test-dev2017"].set_index(["approach", "pretraining"])["ap_measured"]
    assert test_dev[("HRNet", "imagenet")] == "no test-dev results (finetune.test_splits)"
    assert test_dev[("SimpleBaseline", "scratch")] == "not run"
    assert (
        _row(csv, approach="SimpleBaseline", pretraining="scratch", split="val2017")["ap_measured"]
        == "not run"
    )
    for cited in ("Stacked Hourglass", "CPN+OHKM"):  # other methods the paper cites: never filled
        assert _row(csv, approach=cited)["ap_measured"] == "not run"
    assert _row(csv, approach="Stacked Hourglass")["ap_paper"] == 66.9
    assert "not run" in _md_cells(md, "SimpleBaseline", "ResNet50")


def test_gpu_hours_per_cell_and_table(written, stages):
    csv, md, _ = written["table1"]
    # HSJP cell: two pretrains (1.0 each) + two finetunes (0.5 each)
    assert _row(csv, approach="HRNet", pretraining="hsjp_n6", split="val2017")["gpu_hours"] == pytest.approx(
        3.0
    )
    assert "GPU-hours for this table: 4.25" in md  # 3.0 + scratch 0.25 + ImageNet 0.5 + SB ImageNet 0.5
    # Table 2: lr 1e-3 and 240-epoch rows share their stages: counted once per table
    t2 = table2(stages, REPORTED)
    assert t2.attrs["gpu_hours"] == pytest.approx(3.0 + 1.5 + 1.5)


def test_table2_statuses_and_values(written):
    csv, md, _ = written["table2"]
    a = {r["setting"]: r for _, r in csv[csv["part"] == "a"].iterrows()}
    assert a["lr 1e-3"]["precision"] == pytest.approx(0.35) and a["lr 1e-3"]["precision_paper"] == 0.368
    assert a["lr 1e-3"]["precision_spread"] == "within seed spread"  # 0.35 ± 0.071 covers 0.368
    assert a["lr 1e-3"]["ap"] == pytest.approx(73.0)
    # as the paper: the collapsed pretrain's P cell says collapsed, its finetune's AP is not available
    assert (a["lr 2e-3"]["precision_measured"], a["lr 2e-3"]["ap_measured"]) == ("collapsed", "not available")
    assert (a["lr 3e-4"]["precision_measured"], a["lr 3e-4"]["ap_measured"]) == ("running", "running")
    b = {r["epochs"]: r for _, r in csv[csv["part"] == "b"].iterrows()}
    assert b[120]["precision_measured"] == "failed" and b[120]["measured_as"] == "1 ep, lr 1e-3"
    assert b[240]["measured_as"] == "2 ep, lr 1e-3" and b[240]["ap"] == pytest.approx(73.0)
    assert b[480]["measured_as"] == "4 ep, lr 1e-3" and b[480]["precision"] == pytest.approx(0.5)
    assert b[480]["ap"] == pytest.approx(75.0) and b[480]["ap_paper"] == 74.5
    cells = _md_cells(md, "a", "lr 2e-3")
    assert "collapsed" in cells[3] and "0.000 (collapsed)" in cells[4]


def test_table3_rows(written):
    csv, md, _ = written["table3"]
    a = csv[csv["part"] == "a"]
    n6 = _row(a, setting="N=6")
    assert (n6["precision"], n6["ap"], n6["precision_paper"], n6["ap_paper"]) == pytest.approx(
        (0.35, 73.0, 0.368, 74.5)
    )
    n3 = _row(a, setting="N=3")
    assert (n3["precision"], n3["ap"]) == pytest.approx((0.9, 71.0))
    assert _row(a, setting="N=4")["ap_measured"] == "not run"
    b2 = _row(csv[csv["part"] == "b"], setting="N=2")
    assert (b2["precision"], b2["ap"], b2["ap_paper"]) == pytest.approx((0.99, 73.0, 73.4))
    s210, s450 = _row(csv, setting="From Scratch (210)"), _row(csv, setting="From Scratch (450)")
    assert (s210["ap"], s210["ap_paper"], s210["finetune_epochs"]) == pytest.approx((60.0, 72.9, 2))
    assert (s450["ap"], s450["ap_paper"], s450["finetune_epochs"]) == pytest.approx((65.0, 73.4, 5))
    assert "scratch, 5 finetune ep" in _md_cells(md, "a", "From Scratch (450)")


def test_empty_store_says_not_run(tmp_path):
    empty = collect(tmp_path / "none")
    for build in (table1, table2, table3):
        t = build(empty, REPORTED)
        for m in t.attrs["metrics"]:
            assert set(t[f"{m}_measured"]) <= {"not run", "not applicable"}
        assert t.attrs["gpu_hours"] == 0.0


def test_references_prefer_paper_values_else_most_common(stages):
    assert references(stages, "hrnet_w32") == References("hrnet_w32", 6, 1e-3, 2, 2)
    paper = stages.copy()
    paper.loc[len(paper)] = {
        **paper.iloc[-1].to_dict(),
        "kind": "pretrain",
        "backbone": "hrnet_w32",
        "method": "hsjp",
        "n": 5,
        "lr": 1e-3,
        "pt_epochs": 240,
    }
    assert references(paper, "hrnet_w32").pt_epochs == 240


def test_epoch_mapping():
    assert [epoch_row(e, 2, [120, 240, 480]) for e in (1, 2, 4, 10)] == [120, 240, 480, None]
    assert [epoch_row(e, 240, [120, 240, 480]) for e in (120, 240, 480)] == [120, 240, 480]
    assert long_epochs([2, 4, 5, 20], 2) == 4 and long_epochs([450, 300], 210) == 450
    assert long_epochs([2], 2) is None


def test_cell_seed_statistics():
    cell = Cell(values=[0.70, 0.72, 0.74], status="done")
    assert cell.mean == pytest.approx(0.72) and cell.std == pytest.approx(0.02)
    assert cell.text(100) == "72.00 ± 2.00 (n=3)"
    assert cell.spread(73.5, 100) == "within seed spread" and cell.spread(74.5, 100) == "outside seed spread"
    assert Cell(values=[0.7]).spread(70.0, 100) == ""  # one seed: no spread to compare with


def test_settings_not_in_paper_become_extra_rows(builder):
    b = builder
    b.finetune(b.pretrain(precision=0.3), ap=0.72)  # the reference: N=6, lr 1e-3, 2 epochs
    b.finetune(b.pretrain(lr=5e-4, precision=0.2), ap=0.70)
    b.finetune(b.pretrain(epochs=20, precision=0.6), ap=0.76)  # ×10 the reference: no paper row
    b.finetune(b.pretrain(n=9, precision=0.01), ap=0.69)
    b.finetune(b.pretrain("scratch"), ap=0.6, epochs=3)  # longer than 2: stands for the 450 run
    b.write_plans()
    stages = collect(b.store.uri)
    t2, t3 = table2(stages, REPORTED), table3(stages, REPORTED)
    extra_lr = _row(t2, setting="lr 5e-4")
    assert (extra_lr["precision"], extra_lr["ap"], extra_lr["paper_note"]) == (
        0.2,
        pytest.approx(70.0),
        "not in paper",
    )
    assert math.isnan(extra_lr["ap_paper"]) and math.isnan(extra_lr["ap_diff"])
    extra_ep = _row(t2, setting="20 epochs (×10 ref; not in paper)")
    assert extra_ep["ap"] == pytest.approx(76.0)
    assert set(t2.loc[t2["epochs"] == 480, "ap_measured"]) == {"not run"}
    assert _row(t3, setting="N=9")["precision"] == pytest.approx(0.01)
    long = _row(t3, setting="From Scratch (450)")
    assert (long["ap"], long["finetune_epochs"], long["ap_paper"]) == (pytest.approx(60.0), 3, 73.4)
    assert _row(t3, setting="From Scratch (210)")["ap_measured"] == "not run"


def test_preferred_group_and_others_named(builder):
    """N=6 wins over a better-seeded N=3; two model sizes at N=6: the one with more finished runs,
    the other named in the cell's settings (never silently dropped)."""
    b = builder
    for seed in range(3):
        b.finetune(b.pretrain(n=3, seed=seed), ap=0.5)
    narrow, wide = b.pretrain(width=8), b.pretrain(width=16)
    b.finetune(narrow, ap=0.70)
    b.finetune(narrow, ap=0.72, seed=1)
    b.finetune(wide, ap=0.80)
    b.write_plans()
    t1 = table1(collect(b.store.uri), REPORTED)
    hsjp = _row(t1, approach="HRNet", pretraining="hsjp_n6", split="val2017")
    assert hsjp["ap"] == pytest.approx(71.0) and hsjp["ap_n"] == 2
    shown, others = hsjp["settings"].split("2 other matching group(s) not shown: ")
    assert "N=6" in shown and "W8" in shown and "W16" not in shown
    assert "N=6" in others and "W16" in others and "N=3" in others


def test_runs_differing_beyond_seeds_are_not_pooled(builder):
    """Two finetunes of one pretrain that differ in finetune lr are two experiments, not two seeds."""
    b = builder
    pt = b.pretrain()
    b.finetune(pt, ap=0.70)
    b.finetune(pt, ap=0.70, seed=1)
    b.finetune(pt, ap=0.90, ft_lr=5e-4)
    b.write_plans()
    hsjp = _row(
        table1(collect(b.store.uri), REPORTED), approach="HRNet", pretraining="hsjp_n6", split="val2017"
    )
    assert (hsjp["ap"], hsjp["ap_n"]) == (pytest.approx(70.0), 2)  # more finished runs win
    assert "differs in finetune.lr=0.0005 (shown: 0.001)" in hsjp["settings"]
