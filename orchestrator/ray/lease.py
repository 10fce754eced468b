"""Stage leases for object-store roots through Ray: the `LeaseTable` as a named detached actor."""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from orchestrator.schedule.lease import LEASE_TTL_S, LeaseTable

log = logging.getLogger(__name__)


class ActorLease:
    """Stage leases for object-store roots (no file locks there): a named detached `LeaseTable` actor
    created by the driver, outside any placement group (so no trial's placement group owns it and it
    outlives every trial), heartbeated by one driver thread. The holder is the study's name, so a
    re-run of a killed study takes its own leases back at once; another study waits until they are
    released or expire (LEASE_TTL_S after the dead driver's last heartbeat)."""

    def __init__(self, holder: str, ttl_s: float = LEASE_TTL_S):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.holder, self.ttl_s = holder, ttl_s
        self.table: Any = (  # an actor handle: Ray types its methods as LeaseTable's, without .remote
            ray.remote(num_cpus=0)(LeaseTable)
            .options(
                name="hsjp-stage-leases",
                namespace="hsjp-study",
                lifetime="detached",
                get_if_exists=True,
                # None: outside any placement group (Ray's annotation omits the None its docs use)
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),  # type: ignore[arg-type]
            )
            .remote()
        )
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="hsjp-leases")
        self._beat.start()

    def try_acquire(self, stage_id: str) -> bool:
        ok = bool(ray.get(self.table.acquire.remote(stage_id, self.holder, self.ttl_s)))
        if ok:
            self._held.add(stage_id)
        return ok

    def release(self, stage_id: str) -> None:
        if stage_id in self._held:
            self._held.discard(stage_id)
            ray.get(self.table.release.remote(stage_id, self.holder))

    def release_all(self) -> None:
        self._stop.set()
        for stage_id in list(self._held):
            self.release(stage_id)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            for stage_id in list(self._held):
                try:
                    ray.get(self.table.acquire.remote(stage_id, self.holder, self.ttl_s))
                except Exception as exc:  # noqa: BLE001 — a missed beat is retried at the next one
                    log.warning("lease heartbeat for %s failed: %s", stage_id, exc)
