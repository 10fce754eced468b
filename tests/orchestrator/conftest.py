"""The local Ray of the orchestrator's end-to-end tests: one per module that asks for it (2 CPUs)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from orchestrator.ray.connect import start_local_ray

    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()
