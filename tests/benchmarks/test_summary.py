"""The device check's summary table: targets judged from the benchmark's JSON rows, missing rows named."""

from __future__ import annotations

import json

from benchmarks import summary


def _row(backbone, task, pipeline, full, wait=0.01):
    return {"backbone": backbone, "task": task, "pipeline": pipeline, "full_img_s": full, "model_img_s": full * 1.2,
            "data_img_s": full * 2, "data_wait_share": wait, "peak_mem_gib": 20.0}  # fmt: skip


def test_targets_are_judged_and_missing_rows_are_named(tmp_path):
    bench = tmp_path / "b.json"
    rows = [_row("hrnet_w32", "finetune", "ours", 2600), _row("hrnet_w32", "finetune", "reference", 800),
            _row("simplebaseline_r50", "finetune", "ours", 3600, wait=0.2),
            _row("simplebaseline_r50", "finetune", "reference", 1500)]  # fmt: skip
    evals = [{"backbone": "hrnet_w32", "input": "256x192", "instances": 4096, "seconds": 4.0, "inst_s": 1024.0,
              "val2017_seconds_est": 101.7}]  # fmt: skip
    bench.write_text(json.dumps({"device_name": "H200", "torch": "x", "rows": rows, "eval": evals}))
    junit = tmp_path / "t.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
                     '<testcase classname="a" name="ok"/><testcase classname="a" name="bad"><failure/></testcase>'
                     '<testcase classname="a" name="ok2"/></testsuite></testsuites>')  # fmt: skip
    text = summary.table(*summary.load_bench([str(bench), str(tmp_path / "missing.json")]),
                         summary.load_tests(str(junit)))  # fmt: skip
    lines = {
        tuple(line.split()[:2]): line
        for line in text.splitlines()
        if line.split()[:1] in (["hrnet_w32"], ["simplebaseline_r50"])
    }
    assert lines[("hrnet_w32", "finetune")].endswith("yes") and "3.25x" in lines[("hrnet_w32", "finetune")]
    assert lines[("simplebaseline_r50", "finetune")].endswith("NO")  # 20 % data wait
    assert "not measured" in lines[("hrnet_w32", "pretext")]
    assert "2 passed, 1 failed, 0 skipped (failed: a::bad)" in text
    assert "val2017 104,125 boxes ~102 s; target <= 120 s: yes" in text


def test_the_reference_ratio_target_counts():
    rows = [_row("hrnet_w32", "finetune", "ours", 2600), _row("hrnet_w32", "finetune", "reference", 1000)]
    text = summary.table(rows, [], {}, "none")
    line = next(x for x in text.splitlines() if x.startswith("hrnet_w32           finetune"))
    assert "2.60x" in line and line.endswith("NO")  # fast enough, but not 3x the reference


def test_every_target_has_a_row_judged_or_explained(tmp_path):
    ours = _row("hrnet_w32", "finetune", "ours", 2600) | {
        "first_step_s": 41.5,
        "compiled_frames": 2,
        "recompiles": 0,
    }
    sb = _row("simplebaseline_r50", "finetune", "ours", 3600) | {"first_step_s": 20.0, "compiled_frames": 2,
                                                                  "recompiles": 1}  # fmt: skip
    rows = [ours, _row("hrnet_w32", "finetune", "reference", 800), sb]
    evals = [{"backbone": "hrnet_w32", "input": "256x192", "val2017_seconds_est": 70.0}]
    eval_time = {"results": 1000, "seconds": 0.4, "AP": 0.97, "val2017_seconds_est": 41.6}
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "bench-hrnet_w32-pretext.txt").write_text("timeout\t80\ttimed out after 80 s\n")
    (steps / "shared-box.txt").write_text("skipped\t0\tnot run: Ray is not importable here\n")
    junit = tmp_path / "cuda-tests.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="r" name="test_queued_readers_never_see_decoded_pixels"/>'
                     '<testcase classname="h" name="test_pose_steady_state_step_has_no_host_sync[cuda]"><failure message="3 syncs"/>'
                     "</testcase></testsuite></testsuites>")  # fmt: skip
    cells = summary.target_rows(rows, evals, eval_time, summary.load_steps(str(steps)), [str(junit)], [])
    by, stage = {}, ""
    for check, _, measured, met in cells:  # indented rows ("  data wait") belong to the stage above
        stage = stage if check.startswith(" ") else check
        by[f"{stage} {check.strip()}" if check.startswith(" ") else check] = (measured, met)
    assert by["nvJPEG race test"] == ("passed", "yes")
    assert (
        by["other CUDA-only tests"][1] == "NO" and "test_pose_steady_state" in by["other CUDA-only tests"][0]
    )
    assert by["numerics tests"] == ("not measured (the step did not run)", "n/a")
    assert by["hrnet_w32 finetune"] == ("2,600 img/s, 3.25x ref", "yes")
    assert by["hrnet_w32 finetune compile"] == (
        "first step 41.5 s, 2 frame(s) compiled, 0 recompile(s)",
        "yes",
    )
    assert by["simplebaseline_r50 finetune"] == ("3,600 img/s, reference not measured", "yes")
    assert by["simplebaseline_r50 finetune compile"][1] == "NO"  # a recompile after the warm-up
    assert by["hrnet_w32 pretext"] == ("not measured: timed out after 80 s", "n/a")
    assert by["simplebaseline_r50 pretext"] == ("not measured (the step did not run)", "n/a")
    assert by["val2017-sized evaluation"][1] == "yes" and "~112 s" in by["val2017-sized evaluation"][0]
    assert by["shared machine (two local Rays)"] == ("not run: Ray is not importable here", "n/a")
    assert by["COCO AP evaluation"][1] == "yes"
