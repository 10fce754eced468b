"""Stage leases, Ray-free: the right to compute a stage, held by one run across the runs and studies
sharing a store. File locks on local and shared-filesystem stores (`FileLease`); on object stores the
same `LeaseTable` runs as a detached Ray actor (`orchestrator.ray.lease.ActorLease`)."""

from __future__ import annotations

import os
import time

import filelock

from orchestrator.store.format import LOCKS_DIR
from orchestrator.store.store import Store

LEASE_TTL_S = 120.0  # s after its holder's last heartbeat an object-store lease expires (a dead driver's)


class FileLease:
    """Stage leases as file locks under `<store>/locks/` (local and shared-filesystem stores), held by
    the driver from launch to completion; the OS frees a dead holder's lock."""

    def __init__(self, store: Store):
        self.folder = os.path.join(store.base, LOCKS_DIR)
        os.makedirs(self.folder, exist_ok=True)
        self._held: dict[str, filelock.BaseFileLock] = {}

    def try_acquire(self, stage_id: str) -> bool:
        if stage_id in self._held:
            return True
        lock = filelock.FileLock(os.path.join(self.folder, f"{stage_id}.lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        self._held[stage_id] = lock
        return True

    def release(self, stage_id: str) -> None:
        lock = self._held.pop(stage_id, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for stage_id in list(self._held):
            self.release(stage_id)


class LeaseTable:
    """Leases with expiry: `acquire` succeeds when the key is free, expired, or already the caller's."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        current = self._leases.get(key)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[key] = (holder, now + ttl_s)
        return True

    def release(self, key: str, holder: str) -> None:
        if self._leases.get(key, ("", 0.0))[0] == holder:
            del self._leases[key]
