"""Training and evaluation code that runs inside Ray Train workers (and in plain tests).

Knows nothing of Ray Tune or the orchestrator: every entry point is a plain function of
(config, data config, StageContext).
"""

WORKLOAD_VERSIONS: dict[str, str] = {"hsjp": "2", "pose": "2"}
"""The numerics version of each workload (the HSJP pretext, the pose finetune and its evaluation).

Recorded with every stage a workload computes (`workload_versions` of result.json, with the versions of
the stages it was made from); not part of any stage id, so a bump does not orphan a store: `status`,
`plan` and `run` name the stages made by an older version, and `run --recompute-stale` recomputes them.
Guarded rather than hand-kept: `workloads/fingerprint.py` computes a golden numerics fingerprint of each
workload (a fixed-seed tiny run through its real data, targets, loss, optimiser, schedule and
evaluation) and tests/workloads/test_fingerprint.py fails, naming the version to bump, when it differs
from the one recorded for the current version in `workloads/fingerprints.json`."""

STAGE_WORKLOADS: dict[str, str] = {"pretrain": "hsjp", "finetune": "pose", "evaluate": "pose"}
"""Stage kind → the workload whose numerics it runs (the key of WORKLOAD_VERSIONS)."""
