"""Connecting to Ray: the version guard (Ray Train V2 or nothing), a local Ray that claims a fair share
of a shared machine, joining a cluster, its capacity, and the dashboard URL for `hsjp-study status`.

The version guard: a stage resumes because a re-created trainer of the stage's name in the same storage
continues from its last registered checkpoint, which only Train V2 does (under V1 every half-done stage
would silently start over). V2 is the default from Ray 2.51.0 on (release notes, 2025-10-29; PR
ray-project/ray#57857), pyproject.toml's floor; `RAY_TRAIN_V2_ENABLED=0` selects V1 again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from typing import Any

import ray

from orchestrator.ray import host
from workloads.user_errors import UserError

RAY_FLOOR = (2, 51, 0)
"""First Ray release where Train V2 is the default (Ray 2.51.0 release notes)."""
V2_FLAG = "RAY_TRAIN_V2_ENABLED"
"""Ray Train's feature flag (ray.train.v2._internal.constants.V2_ENABLED_ENV_VAR); 0 selects V1."""


class RayVersionError(UserError, RuntimeError):
    """The installed Ray cannot run a study (too old, or Train V1 selected); the CLI exits 2."""


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of '2.60.0', '2.51.0rc1', '3.0.0.dev0'."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise RayVersionError(f"cannot read the Ray version {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_ray(version: str | None = None, trainer_cls: type | None = None) -> None:
    """Raise RayVersionError when Ray is older than RAY_FLOOR or its TorchTrainer is the V1 class.
    `version` / `trainer_cls` default to the installed Ray's (tests pass stand-ins)."""
    floor = ".".join(map(str, RAY_FLOOR))
    if version is None:
        version = ray.__version__
    if parse_version(version) < RAY_FLOOR:
        raise RayVersionError(
            f"Ray {version} is installed, hsjp-study needs Ray ≥ {floor} (the first release whose "
            f"Ray Train is V2 by default; stages resume by trainer name, which V1 cannot): "
            f"pip install 'ray[tune,train]>={floor}'"
        )
    if trainer_cls is None:
        from ray.train.torch import TorchTrainer as trainer_cls
    module = getattr(trainer_cls, "__module__", "")
    if not module.startswith("ray.train.v2."):
        flag = os.environ.get(V2_FLAG)
        why = f" because {V2_FLAG}={flag} is set" if flag is not None else ""
        raise RayVersionError(
            f"ray.train.torch.TorchTrainer is the Ray Train V1 class ({module}){why}: hsjp-study needs "
            f"Train V2, whose trainer of the same name resumes a half-done stage from its last "
            f"checkpoint (under V1 every interrupted stage would silently start over); unset "
            f"{V2_FLAG} or set it to 1"
        )


TRIAL_RESOURCE = "hsjp_trial_driver"
"""Custom resource for trial drivers: the local Ray started here defines it, so drivers hold no CPU;
a cluster may define it on non-preemptible nodes (`ray start --resources '{"hsjp_trial_driver": 100}'`)
to keep drivers there. Without it a trial reserves 1 byte of Ray's `memory` resource."""


# ------------------------------------------------------------------------------------- connecting
def start_local_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    *,
    demand: Any = None,
    study: str = "",
    claim: bool = True,
) -> None:
    """A local Ray for this process (no dashboard, worker logs kept out of the driver's output). With
    `claim` (real runs) it takes this machine's fair share (`orchestrator.ray.host.LocalClaim`), at most
    `demand` / `num_cpus` / `num_gpus`; without (`--simulate`'s fake cluster) exactly `num_cpus` /
    `num_gpus`, claiming nothing."""
    # Ray 2.60 turns token authentication on for `ray start` clusters; a local one needs none (unless set)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    options: dict[str, Any] = dict(
        address="local",
        resources={TRIAL_RESOURCE: 10_000},
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    if not claim:
        with _local_node_env():
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, **options)
        return
    with host.LocalClaim(demand, study=study, num_cpus=num_cpus, num_gpus=num_gpus) as local:
        # the raylet inherits CUDA_VISIBLE_DEVICES = the claimed GPUs, and _local_node_env
        with local.visible_gpus(), _local_node_env():
            context = ray.init(num_cpus=local.claim.cpus, num_gpus=len(local.claim.gpu_ids), **options)
        info = getattr(context, "address_info", None) or {}
        local.register(address=info.get("gcs_address", ""), session_dir=info.get("session_dir", ""))


def _local_node_env() -> contextlib.AbstractContextManager[None]:
    """While the local Ray starts (its raylet, and so every worker, inherits the environment): one node
    that nobody drains, so Ray Train's per-stage PreemptionWatcher actor (one more process per stage)
    is off. A user's explicit setting wins. Set only for the start, so that a Ray cluster this process
    joins or starts later (tests) keeps the watcher that drains need."""
    return host.env_set("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0", keep_given=True)


def connect(address: str | None, demand: Any = None, study: str = "") -> bool:
    """Whether this call started / joined Ray (an initialised Ray is reused)."""
    if ray.is_initialized():
        return False
    if address is None:
        start_local_ray(demand=demand, study=study)
    else:  # a real cluster: its auth token (RAY_AUTH_TOKEN / ~/.ray/auth_token) is used as is
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


def cluster_capacity() -> dict[str, float]:
    # untyped in Ray: its dict of resource name → amount, and of one dict per node
    return {k: float(v) for k, v in ray.cluster_resources().items()}  # type: ignore[no-untyped-call]


def trial_resources(cluster: dict[str, float]) -> dict[str, float]:
    """A trial driver's request: the custom resource where the cluster has it, else 1 byte of memory
    (not a CPU fraction, which the stages' whole-CPU requests would not leave room for)."""
    if cluster.get(TRIAL_RESOURCE, 0) >= 1:
        return {"CPU": 0, TRIAL_RESOURCE: 1}
    return {"CPU": 0, "memory": 1}


def node_ip() -> str | None:
    """This node's IP address (a label in error records; None when Ray cannot say)."""
    try:
        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]  # untyped in Ray
    except Exception:  # noqa: BLE001 — a label only
        return None


def dashboard_url(address: str | None = None, timeout_s: float = 3.0) -> str | None:
    """The Ray dashboard URL of the cluster at `address` (else $RAY_ADDRESS, else the cluster `ray start`
    recorded, which `ray.init(address="auto")` finds), read by joining it briefly as a driver; None when
    there is no cluster, it has no dashboard (the local Ray of `hsjp-study run` starts none) or it does
    not answer within `timeout_s`."""
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("http://", "https://")):  # a job-submission address is the dashboard
        return address
    if address.startswith("ray://") or address == "local":
        return None
    found: list[str | None] = []

    def lookup() -> None:
        try:
            found.append(_joined_dashboard_url(address))
        except Exception:  # noqa: BLE001 — no cluster, a stale address or a cluster that went away
            found.append(None)

    thread = threading.Thread(target=lookup, daemon=True)  # joining a dead address retries for long
    thread.start()
    thread.join(timeout_s)
    url = found[0] if found else None
    return (url if url.startswith("http") else f"http://{url}") if url else None


def _joined_dashboard_url(address: str) -> str | None:
    """`ray.init(address=...)`'s `dashboard_url`, then disconnected (this process was not a driver)."""
    if ray.is_initialized():
        return None
    context = ray.init(
        address=address, log_to_driver=False, configure_logging=False, logging_level=logging.ERROR
    )
    try:
        return getattr(context, "dashboard_url", None) or None
    finally:
        ray.shutdown()
