"""Fair claims on a shared machine and no leftovers, Ray-free.

A local Ray (no `--address`) takes only what this process may use (`usable_cpus`: affinity ∩ cgroup
quota; `box_gpu_ids`: CUDA_VISIBLE_DEVICES, else the NVIDIA driver's list), less what the live records
of other runs on this machine hold (`state_dir()/ray-*.json`: driver pid + start time, CPUs, GPU ids,
GCS address, its Ray processes), at most what its study can use (`Demand`); with nothing free it
refuses, naming the holders. The processes of a record whose driver died are ended by the next local
start, each verified by pid *and* start time (`end_orphans`). A second run does not join another's
local Ray by default: that Ray ends with the driver that started it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from orchestrator.plan import stage_request
from workloads.user_errors import UserError

log = logging.getLogger(__name__)

STATE_DIR_ENV = "HSJP_LOCAL_STATE"
"""Overrides where the local-Ray records live (default: <temp dir>/hsjp-study-<uid>/local-ray)."""
REFRESH_S = 20.0
"""How often a running driver re-records the processes of its Ray (workers start later)."""
TERM_WAIT_S = 5.0
"""Grace between SIGTERM and SIGKILL when ending orphans."""


class HostBusy(UserError, RuntimeError):
    """Nothing is free on this machine for a local Ray (the CLI exits 2)."""


# ------------------------------------------------------------------------------------------- CPUs
def usable_cpus(
    affinity: int | None = None, cgroup_text: str | None = None, cgroup_root: str = "/sys/fs/cgroup"
) -> int:
    """CPUs this process may use: affinity mask ∩ cgroup quota (floored, at least 1)."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_text, cgroup_root)
    if quota is not None:
        affinity = min(affinity, int(math.floor(quota + 1e-9)))
    return max(1, affinity)


def cgroup_cpu_quota(cgroup_text: str | None = None, cgroup_root: str = "/sys/fs/cgroup") -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup path, None when unlimited / unknown.
    `cgroup_text` is /proc/self/cgroup (read when None)."""
    root = Path(cgroup_root)
    limits: list[float] = []
    for line in (_read(Path("/proc/self/cgroup")) if cgroup_text is None else cgroup_text).splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2 unified hierarchy: cpu.max at every level up to the root
            mount: Path | None = root
            level_quota = _v2_quota
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            mount = next((root / n for n in (controllers, "cpu,cpuacct", "cpu") if (root / n).is_dir()), None)
            level_quota = _v1_quota
        else:
            continue
        if mount is None:
            continue
        folder = mount / rel.lstrip("/")
        for level in (folder, *(p for p in folder.parents if p == mount or mount in p.parents)):
            limits += level_quota(level)
    return min(limits) if limits else None


def _v2_quota(level: Path) -> list[float]:
    """cpu.max: "<quota|max> <period>"."""
    fields = _read(level / "cpu.max").split()
    return _quota(fields[0], fields[1]) if len(fields) >= 2 else []


def _v1_quota(level: Path) -> list[float]:
    return _quota(_read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us"))


def _quota(quota: str, period: str) -> list[float]:
    """[quota / period] in CPUs; [] when unlimited ("max" in v2, -1 in v1) or unreadable."""
    try:
        q, t = float(quota), float(period)
    except ValueError:
        return []
    return [q / t] if q > 0 and t > 0 else []


def _read(path: Path | str) -> str:
    """A /proc, /sys or record file's text, "" when it cannot be read (gone, no permission)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------- GPUs
def visible_gpu_ids(env: Mapping[str, str] | None = None) -> list[str] | None:
    """GPU ids in CUDA_VISIBLE_DEVICES, None when unset. CUDA stops at the first invalid entry
    (`0,1,-1,2` is `0,1`); `""`, `-1` or `NoDevFiles` mean none. Indices, `GPU-<uuid>`, `MIG-<uuid>`."""
    text = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    ids: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isdigit() or item.startswith(("GPU-", "MIG-"))):
            break
        if item not in ids:
            ids.append(item)
    return ids


def box_gpu_ids(
    env: Mapping[str, str] | None = None, driver_dir: str = "/proc/driver/nvidia/gpus"
) -> list[str]:
    """The GPUs this process may use (see `visible_gpu_ids`), else one id per GPU the NVIDIA driver lists."""
    ids = visible_gpu_ids(env)
    if ids is not None:
        return ids
    try:
        return [str(i) for i in range(len(os.listdir(driver_dir)))]
    except OSError:
        return []


# ------------------------------------------------------------------------------------- processes
def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name: [state, ppid, ...] ([] when gone)."""
    text = _read(f"/proc/{pid}/stat")
    return text[text.rfind(")") + 2 :].split()


def proc_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22), None when there is no
    such live process (gone, or a zombie)."""
    fields = _stat(pid)
    return int(fields[19]) if len(fields) >= 20 and fields[0] not in ("Z", "X") else None


def same_process(pid: int, start: int | None) -> bool:
    """Whether `pid` is still the process that started at `start` (not a reused pid)."""
    return start is not None and proc_start(pid) == start


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from the parent pids in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and len(fields := _stat(entry.name)) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        out.append(todo.pop())
        todo += children.get(out[-1], [])
    return sorted(out)


def _alive(p: dict[str, Any]) -> bool:
    """Whether a recorded process ({pid, start, name}) still runs (the same one, not a reused pid)."""
    return same_process(p["pid"], p.get("start"))


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id").strip()


@contextlib.contextmanager
def env_set(name: str, value: str, keep_given: bool = False) -> Iterator[None]:
    """Environment variable `name` = `value` within (with `keep_given`: unless it is set already), as it
    was afterwards."""
    old = os.environ.get(name)
    if old is None or not keep_given:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# --------------------------------------------------------------------------------------- records
def state_dir() -> Path:
    """Where this user's local-Ray records live on this machine (created, mode 0700)."""
    given = os.environ.get(STATE_DIR_ENV)
    path = Path(given) if given else Path(tempfile.gettempdir()) / f"hsjp-study-{os.getuid()}" / "local-ray"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass
class Record:
    """One local Ray started by an `hsjp-study run` on this machine."""

    driver_pid: int
    driver_start: int | None
    cpus: int
    gpu_ids: list[str]
    study: str = ""
    address: str = ""
    """GCS address (`ray.init(address=...)` joins it while its driver lives)."""
    session_dir: str = ""
    processes: list[dict[str, Any]] = field(default_factory=list)
    """[{pid, start, name}] of the Ray processes the driver started (its descendants)."""
    host: str = field(default_factory=socket.gethostname)
    boot_id: str = field(default_factory=_boot_id)
    started_at: float = field(default_factory=time.time)
    path: str = ""
    """The record's file (not stored)."""

    def driver_alive(self) -> bool:
        return same_process(self.driver_pid, self.driver_start)

    def ray_alive(self) -> bool:
        """Whether its Ray still runs (the first recorded process, the GCS server, is alive)."""
        return any(_alive(p) for p in self.processes if p.get("name") == "gcs_server")

    def claims(self) -> bool:
        """A live run's Ray: its resources are taken. A driver that shut its Ray down claims nothing."""
        return self.driver_alive() and (self.ray_alive() or not self.processes)

    def describe(self) -> str:
        gpus = f", GPUs {','.join(self.gpu_ids)}" if self.gpu_ids else ""
        study = f"study {self.study}: " if self.study else ""
        return f"pid {self.driver_pid} ({study}{self.cpus} CPUs{gpus}; Ray at {self.address or '?'})"


def read_records(folder: Path | None = None) -> list[Record]:
    """Every record of this machine (others' hosts / boots ignored: the folder may be shared)."""
    folder = folder or state_dir()
    out = []
    names = {f.name for f in dataclasses.fields(Record)}
    for path in sorted(folder.glob("ray-*.json")):
        try:
            data = json.loads(path.read_text())
            rec = Record(**{k: v for k, v in data.items() if k in names})
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: unreadable local-Ray record (%s); ignored", path, exc)
            continue
        rec.path = str(path)
        if rec.host == socket.gethostname() and (not rec.boot_id or rec.boot_id == _boot_id()):
            out.append(rec)
    return out


def write_record(rec: Record) -> None:
    if not rec.path:
        rec.path = str(state_dir() / f"ray-{rec.driver_pid}-{uuid.uuid4().hex[:8]}.json")
    tmp = f"{rec.path}.tmp"
    Path(tmp).write_text(
        json.dumps({k: v for k, v in dataclasses.asdict(rec).items() if k != "path"}, indent=2)
    )
    os.replace(tmp, rec.path)


def remove_record(rec: Record) -> None:
    with contextlib.suppress(OSError):
        os.remove(rec.path)


def snapshot_processes(driver_pid: int, session_dir: str = "") -> list[dict[str, Any]]:
    """[{pid, start, name}] of the Ray processes a driver started, the GCS server first: its
    descendants whose command line names the Ray session (gcs_server, raylet, log monitor, ...) and
    everything below those (agents, workers). Without a session folder: all its descendants. Other
    children of the driver (a test's subprocesses, their own Rays) are not its Ray."""
    pids = descendants(driver_pid)
    session = os.path.basename(session_dir.rstrip("/"))
    if session:
        roots = [p for p in pids if session in _read(f"/proc/{p}/cmdline")]
        pids = sorted({*roots, *(d for r in roots for d in descendants(r))})
    procs = [
        {"pid": p, "start": proc_start(p), "name": _read(f"/proc/{p}/comm").strip() or "?"} for p in pids
    ]
    procs = [p for p in procs if p["start"] is not None]
    return sorted(procs, key=lambda p: (p["name"] != "gcs_server", p["pid"]))


# --------------------------------------------------------------------------------------- orphans
def end_orphans(records: list[Record], term_wait_s: float = TERM_WAIT_S) -> int:
    """End the recorded Ray processes of runs whose driver is dead (only those, each verified by pid
    and start time); remove their records. Returns how many processes were ended."""
    dead = [rec for rec in records if not rec.driver_alive()]
    targets = [p for rec in dead for p in rec.processes if _alive(p)]
    for p in targets:
        _signal(p, signal.SIGTERM)
    deadline = time.time() + term_wait_s
    while time.time() < deadline and any(_alive(p) for p in targets):
        time.sleep(0.05)
    for p in targets:
        _signal(p, signal.SIGKILL)
    for rec in dead:
        remove_record(rec)
    return len(targets)


def _signal(p: dict[str, Any], sig: int) -> None:
    if not _alive(p):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(p["pid"], sig)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(p["pid"], os.WNOHANG)  # reap it when it is our own child (tests)


# ---------------------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Demand:
    """What a study can use at most, and what one stage needs at least."""

    cpus: float | None = None
    gpus: int | None = None
    min_cpus: float = 1.0
    min_gpus: int = 0


def study_demand(compute: Any, n_trials: int, max_concurrent: int | None = None) -> Demand:
    """Demand of a study's pending trials (ComputeConfig): concurrent stages × a stage's workers."""
    stages = max(1, min(n_trials, max_concurrent or compute.max_concurrent_trials or n_trials))
    one = stage_request(compute).total  # a training stage
    cpu_stage, gpu_stage = one["CPU"], math.ceil(one.get("GPU", 0.0))
    return Demand(cpus=stages * cpu_stage, gpus=stages * gpu_stage, min_cpus=cpu_stage, min_gpus=gpu_stage)


@dataclass(frozen=True)
class Claim:
    cpus: int
    gpu_ids: list[str]
    others: list[Record]


def plan_claim(
    box_cpus: int, box_gpus: list[str], others: list[Record], demand: Demand | None = None
) -> Claim:
    """What a new local Ray takes: what the live runs `others` leave free, at most the demand.
    HostBusy when less than one stage's need is free."""
    demand = demand or Demand()
    free_cpus = box_cpus - sum(o.cpus for o in others)
    taken = {g for o in others for g in o.gpu_ids}
    free_gpus = [g for g in box_gpus if g not in taken]
    cpus = free_cpus if demand.cpus is None else min(free_cpus, int(math.ceil(demand.cpus - 1e-9)))
    gpus = free_gpus if demand.gpus is None else free_gpus[: demand.gpus]
    if free_cpus < demand.min_cpus or len(free_gpus) < demand.min_gpus:
        holders = "; ".join(o.describe() for o in others) or "none recorded"
        need = f"{demand.min_cpus:g} CPUs" + (f" and {demand.min_gpus} GPUs" if demand.min_gpus else "")
        raise HostBusy(
            f"not enough free on this machine for a local Ray: of its {box_cpus} CPUs / {len(box_gpus)} "
            f"GPUs, other hsjp-study runs hold the rest ({holders}); {free_cpus} CPUs and "
            f"{len(free_gpus)} GPUs are free, one stage needs {need}. "
            "Wait for them, or join one with --address ADDRESS (its Ray ends with that run)"
        )
    return Claim(cpus=max(1, cpus), gpu_ids=gpus, others=others)


class LocalClaim:
    """The claim of one local Ray start: held under the machine's registry lock from the reading of the
    records to the writing of ours, so two runs starting together cannot both take the same GPUs."""

    def __init__(
        self,
        demand: Demand | None = None,
        study: str = "",
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        report: Callable[[str], None] | None = None,
    ):
        self.demand, self.study = demand, study
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.claim: Claim  # set by __enter__
        self.record: Record  # set by register
        self.orphans_ended = 0
        self._stop = threading.Event()

    def __enter__(self) -> LocalClaim:
        folder = state_dir()
        self._lock = filelock.FileLock(str(folder / "registry.lock"))
        self._lock.acquire()
        try:
            records = read_records(folder)
            self.orphans_ended = end_orphans(records)
            if self.orphans_ended:
                self.report(
                    f"ended {self.orphans_ended} leftover Ray process(es) of an earlier hsjp-study run "
                    "whose driver had died"
                )
            others = [r for r in read_records(folder) if r.claims()]
            cpus = self.num_cpus or usable_cpus()  # an explicit num_cpus is the size of the box
            self.claim = plan_claim(cpus, box_gpu_ids()[: self.num_gpus], others, self.demand)
            if others:
                self.report(
                    f"sharing this machine with {len(others)} other hsjp-study run(s) "
                    f"({'; '.join(o.describe() for o in others)}): taking {self.claim.cpus} CPUs"
                    + (f" and GPUs {','.join(self.claim.gpu_ids)}" if self.claim.gpu_ids else "")
                )
        except BaseException:
            self._lock.release()
            raise
        return self

    def visible_gpus(self) -> contextlib.AbstractContextManager[None]:
        """CUDA_VISIBLE_DEVICES = the claimed GPUs while Ray starts (its raylet inherits it and hands
        out only those ids); the driver's own setting is restored afterwards."""
        return env_set("CUDA_VISIBLE_DEVICES", ",".join(self.claim.gpu_ids))

    def register(self, address: str = "", session_dir: str = "") -> Record:
        """Record the started Ray (call right after ray.init, inside the `with`); refreshed every
        REFRESH_S by a daemon thread until its Ray is gone."""
        pid = os.getpid()
        self.record = Record(
            driver_pid=pid,
            driver_start=proc_start(pid),
            cpus=self.claim.cpus,
            gpu_ids=list(self.claim.gpu_ids),
            study=self.study,
            address=address,
            session_dir=session_dir,
            processes=snapshot_processes(pid, session_dir),
        )
        write_record(self.record)
        threading.Thread(target=self._refresh, daemon=True, name="hsjp-local-ray-record").start()
        return self.record

    def _refresh(self) -> None:
        rec = self.record
        while not self._stop.wait(REFRESH_S):
            if not rec.ray_alive():
                remove_record(rec)  # shut down: nothing is claimed any more
                return
            known = {p["pid"] for p in rec.processes}
            fresh = snapshot_processes(rec.driver_pid, rec.session_dir)
            rec.processes += [p for p in fresh if p["pid"] not in known]
            with contextlib.suppress(OSError):
                write_record(rec)

    def stop(self) -> None:
        """Stop refreshing the record (it also stops by itself once its Ray is gone)."""
        self._stop.set()

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()
