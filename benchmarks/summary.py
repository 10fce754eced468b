"""One summary table of a device check (benchmarks/device_check.sh): the CUDA-only tests' outcome and,
per backbone × task, our full / model-only / data-only img/s, data wait, peak memory and the ratio to the
reference measured in the same run, against the issue's targets on one H100/H200; then the evaluation
time for the box count measured, scaled to val2017's boxes.

Reads the JSON files that `benchmarks.throughput --json` writes (one per run; a run cut short by its
time limit leaves the rows it finished) and a pytest --junitxml file. Rows that no file holds are shown
as "not measured", never left out. Run as `python -m benchmarks.summary --bench a.json b.json --tests t.xml`.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.throughput import BACKBONES, TASKS, VAL2017_BOXES

# Targets on one H100/H200 (issue 16, "Must show"): full-step img/s with data, and ×reference for HRNet.
TARGET_IMG_S = {("hrnet_w32", "finetune"): 2500, ("simplebaseline_r50", "finetune"): 3500,
                ("hrnet_w32", "pretext"): 2000, ("simplebaseline_r50", "pretext"): 2000}  # fmt: skip
TARGET_RATIO = {("hrnet_w32", "finetune"): 3.0}
TARGET_WAIT = 0.05
TARGET_EVAL_S = 120.0


def load_bench(paths: list[str]) -> tuple[list[dict], list[dict], dict]:
    """(rows, eval entries, header of the first file) over the files that exist."""
    rows, evals, header = [], [], {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            continue
        report = json.loads(p.read_text())
        header = header or report
        rows += report.get("rows", [])
        evals += report.get("eval", [])
    return rows, evals, header


def load_tests(paths: str | list[str] | None) -> str:
    """'N passed, M failed, K skipped' over pytest junit xml files, or why there is none."""
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    found = [p for p in paths if Path(p).is_file()]
    if not found:
        return "no test report (the tests did not run or timed out)"
    suites = []
    for path in found:
        root = ET.parse(path).getroot()
        suites += [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    names = [
        f"{c.get('classname', '')}::{c.get('name', '')}"
        for s in suites
        for c in s.iter("testcase")
        if c.find("failure") is not None or c.find("error") is not None
    ]
    text = f"{total - failed - skipped} passed, {failed} failed, {skipped} skipped"
    if len(found) < len(paths):
        text += f" ({len(paths) - len(found)} of {len(paths)} test runs left no report: timed out?)"
    return text + (f" (failed: {', '.join(names)})" if names else "")


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def table(rows: list[dict], evals: list[dict], header: dict, tests: str) -> str:
    lines = [f"device check — {header.get('device_name', 'unknown device')}, torch {header.get('torch', '?')}, "
             f"{header.get('workers', '?')} loader workers, compile {header.get('compile', '?')}, "
             f"decode on the {header.get('decode_on', '?')}",
             f"CUDA-only tests: {tests}"]  # fmt: skip
    cols = ["backbone", "task", "full img/s", "model img/s", "data img/s", "data wait", "peak mem", "x ref",
            "target", "met"]  # fmt: skip
    cells = [cols]
    for backbone in BACKBONES:
        for task in TASKS:
            ours = next(
                (r for r in rows if (r["backbone"], r["task"], r["pipeline"]) == (backbone, task, "ours")),
                None,
            )
            ref = next((r for r in rows if (r["backbone"], r["task"], r["pipeline"]) == (backbone, task, "reference")), None)  # fmt: skip
            target = TARGET_IMG_S[(backbone, task)]
            ratio_target = TARGET_RATIO.get((backbone, task))
            target_text = f">={target}" + (f", >={ratio_target:g}x" if ratio_target else "") + ", wait<=5%"
            if ours is None:
                cells.append([backbone, task, "not measured", "", "", "", "", "", target_text, "n/a"])
                continue
            ratio = ours["full_img_s"] / ref["full_img_s"] if ref and ref["full_img_s"] > 0 else None
            mem = "n/a" if ours.get("peak_mem_gib") is None else f"{ours['peak_mem_gib']:.1f} GiB"
            met = ours["full_img_s"] >= target and ours["data_wait_share"] <= TARGET_WAIT
            if ratio_target:
                met = met and ratio is not None and ratio >= ratio_target
            cells.append([backbone, task, f"{ours['full_img_s']:.0f}", f"{ours['model_img_s']:.0f}",
                          f"{ours['data_img_s']:.0f}", f"{100 * ours['data_wait_share']:.1f}%", mem,
                          "n/a" if ratio is None else f"{ratio:.2f}x", target_text, _mark(met)])  # fmt: skip
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines += [
        "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
        for c in cells
    ]
    for ev in evals:
        est = ev.get("val2017_seconds_est", VAL2017_BOXES / max(ev["inst_s"], 1e-9))
        lines.append(f"eval {ev['backbone']} {ev['input']}: {ev['instances']} boxes with flip in {ev['seconds']:.1f} s "
                     f"({ev['inst_s']:.0f} boxes/s, one rank) -> val2017 {VAL2017_BOXES:,} boxes ~{est:.0f} s; "
                     f"target <= {TARGET_EVAL_S:.0f} s: {_mark(est <= TARGET_EVAL_S)}")  # fmt: skip
    if not evals:
        lines.append("eval: not measured")
    if header.get("small"):
        lines.append("NOTE: a small (CPU) run: these figures check the machinery, not the targets.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", nargs="*", default=[], help="benchmarks.throughput --json files")
    p.add_argument("--tests", nargs="*", default=[], help="pytest --junitxml files of the CUDA-only tests")
    args = p.parse_args(argv)
    rows, evals, header = load_bench(args.bench)
    print(table(rows, evals, header, load_tests(args.tests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
