"""Training and evaluation code that runs inside Ray Train workers (and in plain tests).

Knows nothing of Ray Tune or the orchestrator: every entry point is a plain function of
(config, data config, StageContext).
"""

WORKLOAD_VERSION = "1"
"""Bumped when a change to the workloads changes results; part of every stage's content hash."""
