"""One summary table of a device check (benchmarks/device_check.sh): a row for every target on one
H100/H200 — full-step img/s with data against the target and the reference measured in the same run,
data wait, first-step (compile) time and recompiles per stage, the val2017-sized evaluation time
(predict + COCO evaluation), the nvJPEG race test, the other CUDA-only tests, the numerics tests, the
shared-machine check and COCO AP's availability — then the detail per run (model-only / data-only img/s,
peak memory).

Reads the JSON files that `benchmarks.throughput --json` and `benchmarks.eval_time --json` write (a run
cut short by its time limit leaves the rows it finished), pytest --junitxml files, and the step records
that device_check.sh writes (`<step>.txt`: status, seconds, reason). A row that nothing measured is never
left out: it says why ("not measured on CPU", "timed out after 95 s", "not run: Ray is not importable").
Run as `python -m benchmarks.summary --bench a.json ... --tests t.xml --eval-time e.json --steps DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.throughput import BACKBONES, TASKS, VAL2017_BOXES

# Targets on one H100/H200 (the performance work's acceptance figures, docs/performance.md): full-step
# img/s with data, ×reference for HRNet-W32 finetune, data wait, val2017-sized evaluation seconds.
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


# ------------------------------------------------------------------------------------ target table
STEP_WORDS = {
    "cpu": "not measured on CPU",
    "timeout": "not measured",
    "failed": "FAILED",
    "skipped": "not run",
}


def load_steps(folder: str | None) -> dict[str, dict]:
    """{step: {"status", "seconds", "reason"}} from device_check.sh's `<step>.txt` records."""
    steps = {}
    for path in sorted(Path(folder).glob("*.txt")) if folder else []:
        status, seconds, reason = (path.read_text().rstrip("\n").split("\t", 2) + ["", ""])[:3]
        steps[path.stem] = {"status": status, "seconds": seconds, "reason": reason}
    return steps


def why_missing(steps: dict[str, dict], name: str) -> str:
    """Why step `name` measured nothing, in a few words: the row's cell when its figure is absent."""
    st = steps.get(name)
    if st is None:
        return "not measured (the step did not run)"
    if st["status"] == "ok":
        return f"not measured (the step ended without this figure: {st['reason']})"
    word = STEP_WORDS.get(st["status"], st["status"])
    if st["status"] == "skipped":
        return st["reason"] if st["reason"].startswith("not run") else f"{word}: {st['reason']}"
    return f"{word}: {st['reason']}"


def _junit_cases(paths: list[str]) -> list[tuple[str, str, str]]:
    """(test name, outcome passed / failed / skipped, message) of every testcase in the junit files."""
    cases = []
    for path in (p for p in paths if Path(p).is_file()):
        for case in ET.parse(path).getroot().iter("testcase"):
            name = case.get("name", "")
            for tag, outcome in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
                el = case.find(tag)
                if el is not None:
                    cases.append(
                        (
                            name,
                            outcome,
                            (el.get("message") or "").splitlines()[0][:160] if el.get("message") else "",
                        )
                    )
                    break
            else:
                cases.append((name, "passed", ""))
    return cases


def _tests_cell(cases, steps, step) -> tuple[str, bool | None]:
    if not cases:
        return why_missing(steps, step), None
    counts = {o: sum(1 for c in cases if c[1] == o) for o in ("passed", "failed", "skipped")}
    text = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    failed = [c[0] for c in cases if c[1] == "failed"]
    if failed:
        text += f" (failed: {', '.join(failed)})"
    if counts["passed"] == 0 and not failed:
        st = steps.get(step, {})
        cpu = st.get("status") == "cpu"
        why = next((c[2] for c in cases if c[2]), "")
        return ("not measured on CPU: " if cpu else "not measured: ") + f"{text}; {why}", None
    return text, not failed


def target_rows(rows, evals, eval_time, steps, cuda_junit, numerics_junit) -> list[list[str]]:
    """[check, target, measured, met] for every target of the device check, in a fixed order."""
    out = []
    cases = _junit_cases(cuda_junit)
    race = [c for c in cases if "race" in c[0] or "queued_readers" in c[0]]
    if race:
        name, outcome, msg = race[0]
        cpu = steps.get("cuda-tests", {}).get("status") == "cpu"
        cell = outcome if outcome != "skipped" else ("not measured on CPU: " if cpu else "skipped: ") + msg
        out.append(
            [
                "nvJPEG race test",
                "passes (200 trials)",
                cell,
                _mark({"passed": True, "failed": False}.get(outcome)),
            ]
        )
    else:
        out.append(["nvJPEG race test", "passes (200 trials)", why_missing(steps, "cuda-tests"), "n/a"])
    cell, ok = _tests_cell([c for c in cases if c not in race], steps, "cuda-tests")
    out.append(["other CUDA-only tests", "all pass", cell, _mark(ok)])
    cell, ok = _tests_cell(_junit_cases(numerics_junit), steps, "cuda-numerics")
    out.append(["numerics tests", "all pass", cell, _mark(ok)])
    for task in ("finetune", "pretext"):
        for backbone in BACKBONES:
            step = f"bench-{backbone}-{task}"
            ours = _find(rows, backbone, task, "ours")
            ref = _find(rows, backbone, task, "reference")
            target, ratio_target = TARGET_IMG_S[(backbone, task)], TARGET_RATIO.get((backbone, task))
            want = f">= {target:,} img/s" + (f", >= {ratio_target:g}x ref" if ratio_target else "")
            if ours is None:
                out.append([f"{backbone} {task}", want, why_missing(steps, step), "n/a"])
                out.append(
                    ["  data wait", f"<= {100 * TARGET_WAIT:g} %", "not measured (the run above)", "n/a"]
                )
                out.append(["  compile", "0 recompiles", "not measured (the run above)", "n/a"])
                continue
            ratio = ours["full_img_s"] / ref["full_img_s"] if ref and ref["full_img_s"] > 0 else None
            met = ours["full_img_s"] >= target and (
                not ratio_target or (ratio is not None and ratio >= ratio_target)
            )
            ratio_text = "reference not measured" if ratio is None else f"{ratio:.2f}x ref"
            out.append(
                [f"{backbone} {task}", want, f"{ours['full_img_s']:,.0f} img/s, {ratio_text}", _mark(met)]
            )
            wait = ours["data_wait_share"]
            out.append(
                [
                    "  data wait",
                    f"<= {100 * TARGET_WAIT:g} %",
                    f"{100 * wait:.1f} %",
                    _mark(wait <= TARGET_WAIT),
                ]
            )
            first, frames, recompiles = (
                ours.get("first_step_s"),
                ours.get("compiled_frames"),
                ours.get("recompiles"),
            )
            if first is None or recompiles is None:
                out.append(["  compile", "0 recompiles", "not recorded (an older benchmark file)", "n/a"])
            else:
                text = f"first step {first:.1f} s, {frames} frame(s) compiled, {recompiles} recompile(s)"
                out.append(["  compile", "0 recompiles", text, _mark(recompiles == 0)])
    predict = next((e for e in evals if e.get("backbone") == "hrnet_w32"), evals[0] if evals else None)
    want = f"<= {TARGET_EVAL_S:.0f} s (predict + COCO eval)"
    if predict is None:
        out.append(
            [
                "val2017-sized evaluation",
                want,
                "predict "
                + why_missing(steps, "bench-hrnet_w32-finetune")
                + (
                    f"; COCO eval ~{eval_time['val2017_seconds_est']:.0f} s"
                    if eval_time
                    else "; COCO eval " + why_missing(steps, "eval-time")
                ),
                "n/a",
            ]
        )
    elif eval_time is None:
        out.append(["val2017-sized evaluation", want, f"predict ~{predict['val2017_seconds_est']:.0f} s; COCO eval "
                    + why_missing(steps, "eval-time"), "n/a"])  # fmt: skip
    else:
        total = predict["val2017_seconds_est"] + eval_time["val2017_seconds_est"]
        out.append(["val2017-sized evaluation", want, f"~{total:.0f} s = predict ~{predict['val2017_seconds_est']:.0f} s "
                    f"({predict['backbone']}) + COCO eval ~{eval_time['val2017_seconds_est']:.0f} s", _mark(total <= TARGET_EVAL_S)])  # fmt: skip
    st = steps.get("shared-box")
    cell = st["reason"] if st and st["status"] == "ok" else why_missing(steps, "shared-box")
    out.append(["shared machine (two local Rays)", "disjoint GPUs", cell, _mark(st["status"] == "ok") if st and st["status"] in ("ok", "failed") else "n/a"])  # fmt: skip
    if eval_time is not None:
        out.append(
            [
                "COCO AP evaluation",
                "pycocotools works",
                f"AP {eval_time['AP']:.3f} on {eval_time['results']} results",
                "yes",
            ]
        )
    else:
        out.append(["COCO AP evaluation", "pycocotools works", why_missing(steps, "eval-time"), "n/a"])
    env = steps.get("environment")
    if env:
        out.append(["environment", "", env["reason"], ""])
    return out


def _find(rows, backbone, task, pipeline):
    return next(
        (r for r in rows if (r["backbone"], r["task"], r["pipeline"]) == (backbone, task, pipeline)), None
    )


def format_rows(cells: list[list[str]], head: list[str]) -> str:
    cells = [head, *cells]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join([*(v.ljust(w) for v, w in zip(c[:-1], widths)), c[-1]]).rstrip() for c in cells
    )


def load_eval_time(path: str | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", nargs="*", default=[], help="benchmarks.throughput --json files")
    p.add_argument("--tests", nargs="*", default=[], help="pytest --junitxml files of the CUDA-only tests")
    p.add_argument("--eval-time", help="the benchmarks.eval_time --json file")
    p.add_argument("--steps", help="the folder of device_check.sh's step records (<step>.txt)")
    args = p.parse_args(argv)
    rows, evals, header = load_bench(args.bench)
    steps = load_steps(args.steps)
    cuda, numerics = (
        [t for t in args.tests if "numerics" not in Path(t).name],
        [t for t in args.tests if "numerics" in Path(t).name],
    )
    print(f"device check targets — {header.get('device_name', 'device: see the environment row')}")
    print(format_rows(target_rows(rows, evals, load_eval_time(args.eval_time), steps, cuda, numerics),
                      ["check", "target", "measured", "met"]))  # fmt: skip
    print()
    if rows:
        print(table(rows, evals, header, load_tests(args.tests)))
    else:
        print("detail per run: no throughput run measured anything (see the rows above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
