"""`hsjp-study report`: read every stage of a store and write Tables 1–3, Figures 3–6, results.csv and
index.html (DESIGN.md §6). Works from the store alone: no Ray, no GPU, seconds."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from reports.collect import collect
from reports.figures import figure3, figure4, figure5, figure6
from reports.render import write_figure, write_index, write_results, write_table
from reports.tables import load_reported, table1, table2, table3

log = logging.getLogger(__name__)

TABLES = {"table1": table1, "table2": table2, "table3": table3}
FIGURES = {"figure3": figure3, "figure4": figure4, "figure5": figure5, "figure6": figure6}


def make_report(storage: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write the report of the store at `storage` (local path or URI) into the local folder `out`;
    returns the files written (index.html last)."""
    start = time.perf_counter()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stages = collect(storage)
    reported = load_reported()
    written: list[Path] = []
    tables = {name: build(stages, reported) for name, build in TABLES.items()}
    for name, table in tables.items():
        written += write_table(table, out, name)
    series = {}
    for name, build in FIGURES.items():
        fig, data = build(stages, reported)
        written += write_figure(fig, data, out, name)
        series[name] = data
    written.append(write_results(stages, out))
    seconds = time.perf_counter() - start
    written.append(
        write_index(
            out, tables, series, storage=str(storage), seconds=seconds, n_stages=len(stages), stages=stages
        )
    )
    log.info(
        "report of %s (%d stages) written to %s: %d files in %.1f s",
        storage,
        len(stages),
        out,
        len(written),
        seconds,
    )
    return written
