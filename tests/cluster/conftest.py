"""The simulated multi-node Ray cluster of the cluster tests (docs/cluster.md), all nodes on this machine.

`ray.cluster_utils.Cluster` starts a head node that advertises the trial-driver resource and holds no
CPU (trial drivers and Train controllers land there, as on a non-preemptible head) plus two 1-CPU
worker nodes (where the stages' Ray Train workers land); this process joins it. A test module that
needs more of the nodes' environment names it in a module-level `CLUSTER_ENV` dict.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.ray.connect import TRIAL_RESOURCE

HEAD_NODE = {"num_cpus": 0, "resources": {TRIAL_RESOURCE: 100}, "include_dashboard": False}
WORKER_NODES = 2
BASE_ENV = {"RAY_AUTH_MODE": "disabled"}
"""A test cluster needs no token; every process that joins it (drivers started by a test too) must
say so (docs/ray.md §3a)."""


@pytest.fixture(scope="module")
def cluster(request):
    """Head: 0 CPUs + the trial-driver resource; WORKER_NODES worker nodes with 1 CPU each. The
    environment (BASE_ENV and the module's CLUSTER_ENV; the nodes inherit it at their start) is set
    while the cluster lives and restored afterwards."""
    env = {**BASE_ENV, **getattr(request.module, "CLUSTER_ENV", {})}
    # Own, short temp dir: Cluster() writes <tmp>/ray/ray_current_cluster, which a plain ray.init() of
    # another process on this machine would otherwise connect to; Ray's sockets live there.
    tmp = tempfile.mkdtemp(prefix="hsjpc", dir="/tmp")
    c = None
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**env, "RAY_TMPDIR": tmp}.items():
            patch.setenv(key, value)
        try:
            c = Cluster(initialize_head=True, head_node_args=HEAD_NODE)
            for _ in range(WORKER_NODES):
                c.add_node(num_cpus=1)
            c.wait_for_nodes()
            ray.init(address=c.address, log_to_driver=False, configure_logging=False)
            yield c
        finally:
            ray.shutdown()
            if c is not None:
                c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
