"""`hsjp-study report`: read every stage of a store and write Tables 1–3, the differences table,
Figures 3–6, learning curves per study, a page per stage, results.csv and index.html (docs/design.md §6).
Works from the store alone: no Ray, no GPU. AP cells and differences get 95 % intervals from the
finetunes' stored per-image outcomes (paired bootstrap over images, `reports.intervals`; the samples
are cached under `<out>/bootstrap-cache/`, so a rebuild redoes only new stages)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from orchestrator.store.format import StageKind, StageState
from reports.bootstrap import N_RESAMPLES, SEED
from reports.collect import collect
from reports.curves import study_curves
from reports.differences import differences
from reports.figures import figure3, figure4, figure5, figure6
from reports.intervals import Bootstraps, add_intervals
from reports.pages import write_stage_pages
from reports.render import write_differences, write_figure, write_index, write_results, write_table
from reports.tables import load_reported, table1, table2, table3

log = logging.getLogger(__name__)

TABLES = {"table1": table1, "table2": table2, "table3": table3}
FIGURES = {"figure3": figure3, "figure4": figure4, "figure5": figure5, "figure6": figure6}
CACHE_DIR = "bootstrap-cache"


def make_report(
    storage: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    progress: bool = False,
) -> list[Path]:
    """Write the report of the store at `storage` (local path or URI) into the local folder `out`;
    returns the files written (index.html last). `progress`: say on stderr when bootstrapping starts."""
    start = time.perf_counter()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stages = collect(storage)
    reported = load_reported()
    boots = Bootstraps(str(storage), out / CACHE_DIR, n_resamples=n_resamples, seed=seed, progress=progress)
    finetunes = stages[(stages["kind"] == StageKind.FINETUNE) & (stages["status"] == StageState.DONE)][
        "stage_id"
    ]
    boots.prepare(finetunes)  # all at once: one pass over the resamples per image set
    written: list[Path] = []
    tables = {name: add_intervals(build(stages, reported), stages, boots) for name, build in TABLES.items()}
    for name, table in tables.items():
        written += write_table(table, out, name)
    diffs = differences(stages, boots, reported)
    written += write_differences(diffs, out)
    series = {}
    for name, build in FIGURES.items():
        fig, data = build(stages, reported, boots)
        written += write_figure(fig, data, out, name)
        series[name] = data
    curves = {}
    studies = sorted({s for v in stages["studies"] for s in str(v or "").split(";") if s})
    for study in studies:
        fig, data = study_curves(stages, boots.store, study)
        name = f"curves-{study}"
        written += write_figure(fig, data, out, name)
        curves[study] = name
    pages = write_stage_pages(stages, boots.store, out, storage=str(storage), tables=tables, boots=boots)
    written += pages
    written.append(write_results(stages, out))
    seconds = time.perf_counter() - start
    listed = [(p.stem, _page_label(stages, p.stem)) for p in pages if p.suffix == ".html"]
    written.append(
        write_index(
            out,
            tables,
            series,
            storage=str(storage),
            seconds=seconds,
            n_stages=len(stages),
            differences=diffs,
            curves=curves,
            stage_pages=listed,
            stages=stages,
        )
    )
    log.info(
        "report of %s (%d stages) written to %s: %d files in %.1f s (bootstrap %.1f s)",
        storage,
        len(stages),
        out,
        len(written),
        seconds,
        boots.seconds,
    )
    return written


def _page_label(stages, stage_id: str) -> str:
    from reports.curves import setting_label

    row = stages[stages["stage_id"] == stage_id].iloc[0]
    return f"{row['kind']}, {row['status']}: {setting_label(row)}"
