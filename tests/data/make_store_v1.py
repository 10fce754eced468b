"""Write `tests/data/store_v1/`: a small result store as the code of store schema version 1 wrote it.

It was made with the repository at commit 029457b (the last one writing `schema_version` 1, before
config.json was written for stages published without a trial), from the repository root:

    git archive 029457b | tar -x -C /tmp/v1        # that commit's code, beside this checkout
    PYTHONPATH=/tmp/v1 python tests/data/make_store_v1.py /tmp/hsjp-store-v1
    rm -rf tests/data/store_v1 && cp -r /tmp/hsjp-store-v1 tests/data/store_v1

Nothing is trained: each stage's files are written by the functions a run calls for it
(`orchestrator.schedule.stage.stage_record` / `publish`, `Store.append_metrics`, `failures.record_failure`),
in the order a run calls them. The study (below) has four trials, one per kind of stage:

    n2       pretrain done (its result.json then rewritten as version 0, without `schema_version` and
             `status`, as code before version 1 wrote it) -> finetune done
    n3       pretrain collapsed -> finetune skipped (published by the scheduler: no config.json)
    n4       pretrain running (config.json, 2 epochs in metrics.jsonl) -> finetune waiting (no files)
    scratch  pretrain no-work (published by the scheduler: no config.json) -> finetune failed
             (config.json, 1 epoch, error.txt, attempts.json)

`tests/orchestrator/test_store_format.py` reads it through `hsjp-study status` and the reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STUDY = """\
# The fixture study of tests/data/store_v1 (tests/data/make_store_v1.py): the smoke study's model, smaller.
name: store-v1
data:
  synthetic: {train: 8, val: 4, seed: 0}
  loader_workers: 0
compute: {workers_per_stage: 1, use_gpu: false, cpus_per_worker: 1, max_failures: 1}
defaults:
  model: {backbone: hrnet_w32, width: 8, num_blocks: 1, num_modules: [1, 1, 1]}
  pretrain: {input_size: 64, heatmap_size: 16, epochs: 2, lr_steps: [], batch_size: 4, eval_every: 1}
  finetune:
    {input_hw: [64, 64], heatmap_hw: [16, 16], sigma: 1.0, epochs: 2, lr_steps: [], batch_size: 4, eval_every: 1}
matrix:
  pretrain.n: [2, 3, 4]
include:
  - {pretrain.method: scratch}
"""
PROVENANCE = {"fixture": "tests/data/make_store_v1.py", "device": {"type": "cpu", "world_size": 1}}


def main(out: str) -> None:
    from orchestrator.plan import make_plan
    from orchestrator.schedule import failures
    from orchestrator.schedule.scheduler import SKIP_REASON
    from orchestrator.schedule.stage import publish, stage_record
    from orchestrator.spec.inputs import data_config
    from orchestrator.spec.study import load_study
    from orchestrator.store import format as store_format
    from orchestrator.store.store import Store

    if store_format.SCHEMA_VERSION != 1:
        sys.exit(f"this code writes schema_version {store_format.SCHEMA_VERSION}: run it on commit 029457b")
    root = Path(out)
    if root.exists():
        sys.exit(f"{root} exists: give a new folder")
    root.mkdir(parents=True)
    (root / "study.yaml").write_text(STUDY)
    study = load_study(root / "study.yaml")
    (root / "study.yaml").unlink()
    store = Store(root)
    plan = make_plan(study, data_config(study.data, "/data"))  # the data path is not read
    store.write_study(plan.study, study.text, plan.to_dict())
    trial = {t.params["pretrain.n"] if "pretrain.n" in t.params else "scratch": t for t in plan.trials}

    def computed(sid: str, status: str, summary: dict, epochs: int) -> None:
        """What `stages.compute_stage` writes: config.json, the epochs, then result.json."""
        spec = plan.stages[sid]
        store.write_stage_config(sid, stage_record(plan, spec))
        for epoch in range(epochs):
            store.append_metrics(sid, {"epoch": epoch, "loss": 0.5 / (epoch + 1), "seconds": 2.0, **summary})
        if status:
            full = {"epochs_trained": list(range(epochs)), "provenance": PROVENANCE, **summary}
            publish(store, plan, spec, status=status, summary=full, wall_seconds=4.0)

    n2 = trial[2]
    computed(n2.pretrain, "done", {"metrics": {"precision": 0.9}, "has_weights": True}, 2)
    computed(n2.finetune, "done", {"metrics": {"AP": 0.25, "AP50": 0.5}, "has_weights": True}, 2)
    path = Path(store.stage_path(n2.pretrain, "result.json"))
    old = json.loads(path.read_text())
    del old["schema_version"], old["status"]  # version 0: written before the field existed
    path.write_text(json.dumps(old, indent=2, sort_keys=True))

    n3 = trial[3]
    summary = {"metrics": {"precision": 0.0}, "collapsed": True, "collapsed_epoch": 1}
    computed(n3.pretrain, "collapsed", summary, 2)
    publish(store, plan, plan.stages[n3.finetune], status="skipped", summary={"reason": SKIP_REASON})

    computed(trial[4].pretrain, "", {"precision": 0.4}, 2)  # running: no result yet

    scratch = trial["scratch"]
    publish(store, plan, plan.stages[scratch.pretrain], status="done", summary={"provenance": PROVENANCE})
    computed(scratch.finetune, "", {"AP": 0.01}, 1)
    try:
        raise RuntimeError("CUDA out of memory (fixture)")
    except RuntimeError as exc:
        trace = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory (fixture)\n"
        attempt = failures.attempt_from_exception(
            exc, node="fixture-node", run_token="fixture", traceback_text=trace
        )
    policy = failures.FailurePolicy.from_compute(plan.compute)
    failures.record_failure(store, scratch.finetune, attempt, policy, study=plan.study)
    print(json.dumps({t.trial_id: [t.pretrain, t.finetune] for t in plan.trials}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hsjp-store-v1")
