"""make_report: every file written, valid PNG / PDF, index.html links them all, results.csv lists every
finetune, an empty store gives 'not run' everywhere."""

from __future__ import annotations

import re
import sys
import time

import pandas as pd
import pytest

from reports.build import make_report

TABLES = ("table1", "table2", "table3")
FIGURES = ("figure3", "figure4", "figure5", "figure6")
EXPECTED = (
    {f"{t}.{ext}" for t in (*TABLES, "differences") for ext in ("md", "csv", "tex")}
    | {f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf", "csv")}
    | {"results.csv", "index.html"}
)
STUDIES = ("s", "fig5", "fig6")  # the known store's studies: one learning-curve figure each


@pytest.fixture(scope="module")
def report(known_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    start = time.perf_counter()
    files = make_report(known_store.store.uri, out)
    return out, files, time.perf_counter() - start


def test_writes_every_file(report, known_store):
    out, files, seconds = report
    curves = {f"curves-{s}.{ext}" for s in STUDIES for ext in ("png", "pdf", "csv")}
    top = {p.name for p in files if p.parent == out}
    assert top == EXPECTED | curves
    pages = {p.name for p in files if p.parent == out / "stages"}
    assert pages == {f"{sid}.{ext}" for sid in known_store.stages for ext in ("html", "png")}
    assert all(p.stat().st_size > 0 for p in files)
    assert files[-1].name == "index.html"
    assert seconds < 60


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_valid_png_and_pdf(report, name):
    out = report[0]
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_index_links_every_table_and_figure(report):
    out = report[0]
    page = (out / "index.html").read_text()
    images = set(re.findall(r"<img src='([^']+)'", page))
    assert images == {f"{f}.png" for f in FIGURES} | {f"curves-{s}.png" for s in STUDIES}
    links = set(re.findall(r"href='([^']+)'", page))
    assert {f"{f}.pdf" for f in FIGURES} <= links and "results.csv" in links
    assert {f"{t}.{ext}" for t in (*TABLES, "differences") for ext in ("md", "csv", "tex")} <= links
    assert "73.00 ± 1.41 (n=2)" in page
    pages = {link for link in links if link.startswith("stages/")}
    assert pages and all((out / link).is_file() for link in pages)  # every stage link resolves


def test_results_csv_lists_every_finetune(report, known_store):
    out = report[0]
    results = pd.read_csv(out / "results.csv")
    finetunes = {sid for sid, spec in known_store.stages.items() if spec["kind"] == "finetune"}
    assert set(results["stage_id"]) == finetunes
    row = results.set_index("stage_id").loc[known_store.ids["hsjp_a"]]
    assert (row["method"], row["n"], row["status"], row["AP"], row["precision"]) == (
        "hsjp",
        6,
        "done",
        0.72,
        0.30,
    )
    assert row["AP@0.50"] == pytest.approx(0.92) and row["err_good"] == pytest.approx(0.82)


def test_empty_store_reports_not_run_everywhere(tmp_path):
    files = make_report(tmp_path / "empty-store", tmp_path / "out")
    assert {p.name for p in files} == EXPECTED
    for t in TABLES:
        table = pd.read_csv(tmp_path / "out" / f"{t}.csv")
        measured = [c for c in table.columns if c.endswith("_measured")]
        assert set(table[measured].to_numpy().ravel()) <= {"not run", "not applicable"}
    assert pd.read_csv(tmp_path / "out" / "results.csv").empty
    assert "not run" in (tmp_path / "out" / "table1.md").read_text()


def test_reports_import_no_ray_torch_or_orchestrator_beyond_the_store_readers():
    """The dependency rule (docs/architecture.md): reports read the store through its readers only — of
    the orchestrator they import `orchestrator.store.format`, `orchestrator.store.store`, the stage view
    `orchestrator.schedule.view` (with the attempts reader `orchestrator.schedule.failures` it uses),
    the stale-stage reader `orchestrator.schedule.lineage` (and the packages), nothing else; no Ray, no
    torch."""
    import subprocess

    code = (
        "import sys, reports.build; allowed = {'orchestrator', 'orchestrator.store', 'orchestrator.schedule',"
        " 'orchestrator.store.format', 'orchestrator.store.store', 'orchestrator.schedule.view',"
        " 'orchestrator.schedule.failures', 'orchestrator.schedule.lineage'};"
        "bad = [m for m in sys.modules if m in ('ray', 'torch')"
        " or (m.split('.')[0] == 'orchestrator' and m not in allowed)];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
