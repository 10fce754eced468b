"""Device simulation: run a command as if on the bare GPU machine the device check is for, on this one.

The GPU machines the project is checked on have no network, no Ray, no pycocotools and no torchcodec
(docs/performance.md "The device check's machine"). This module makes those absent in any Python it
starts — a `sitecustomize.py` in a temporary folder put first on PYTHONPATH, so every child Python
(pytest, the benchmarks, pip) gets it too:

- importing `ray`, `pycocotools` or `torchcodec` (or a submodule) raises ModuleNotFoundError naming the
  simulation when the package is installed in this Python's own site-packages (one installed elsewhere
  on sys.path, as the device check installs the carried pycocotools wheel, imports as on the machine);
- `socket.connect` / `connect_ex` / `getaddrinfo` to anything but loopback or a Unix socket raise
  OSError (the GPU machine reaches nothing outside it);
- CUDA is hidden (CUDA_VISIBLE_DEVICES empty), so every GPU step takes its "not measured on CPU" path.

By hand, from the repository root:

    python -m benchmarks.device_sim -- bash benchmarks/device_check.sh
    python -m benchmarks.device_sim --check-imports     # import every workload and benchmark module

`--allow pycocotools` leaves a name importable (e.g. to simulate a box where the carried wheel was
installed). The blocks hold only inside the Python processes started under it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the GPU machines lack (their package list: docs/performance.md "The device check's machine").
BLOCKED = ("ray", "pycocotools", "torchcodec")
PACKAGES = ("workloads", "benchmarks")

_SITECUSTOMIZE = '''\
"""Written by benchmarks/device_sim.py: the bare GPU machine's absences, in this Python."""
import importlib.abc
import importlib.machinery
import os
import site
import socket
import sys

_BLOCKED = tuple(n for n in os.environ.get("HSJP_DEVICE_SIM_BLOCK", "").split(",") if n)


_HIDDEN = tuple(os.path.realpath(p) for p in [*site.getsitepackages(), site.getusersitepackages()])


class _Absent(importlib.abc.MetaPathFinder):
    """A blocked package is found only outside this Python's own site-packages (e.g. in the folder the
    device check installs a carried wheel into), as on the GPU machine."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in _BLOCKED or "." in name:  # a submodule follows its package
            return None
        allowed = [p for p in sys.path if not os.path.realpath(p or ".").startswith(_HIDDEN)]
        spec = importlib.machinery.PathFinder.find_spec(name, allowed)
        if spec is None:
            raise ModuleNotFoundError(
                f"No module named {name!r} (blocked by benchmarks/device_sim.py: the GPU machine lacks it)",
                name=name,
            )
        return spec


sys.meta_path.insert(0, _Absent())
for _name in list(sys.modules):  # nothing imported it yet in a fresh Python; be sure
    if _name.split(".")[0] in _BLOCKED:
        del sys.modules[_name]


def _local(address):
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = str(address[0])
    return host in ("localhost", "::1", "0.0.0.0", "") or host.startswith("127.")


def _refuse(address):
    raise OSError(101, f"Network is unreachable: {address!r} (benchmarks/device_sim.py: no network on the GPU machine)")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _guarded_connect(self, address):
    if not _local(address):
        _refuse(address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if not _local(address):
        _refuse(address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _local((host,)):
        raise socket.gaierror(-3, f"Temporary failure in name resolution: {host!r} (benchmarks/device_sim.py)")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex = _guarded_connect, _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
'''


def write_sitecustomize(folder: Path) -> Path:
    """The simulation's sitecustomize.py in `folder` (which then goes first on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sitecustomize.py"
    path.write_text(_SITECUSTOMIZE)
    return path


def sim_env(folder: Path, blocked: tuple[str, ...] = BLOCKED, base: dict | None = None) -> dict[str, str]:
    """An environment for child processes under the simulation, its sitecustomize written to `folder`."""
    write_sitecustomize(folder)
    env = dict(os.environ if base is None else base)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO), *rest])
    env["HSJP_DEVICE_SIM_BLOCK"] = ",".join(blocked)
    env["HSJP_DEVICE_SIM"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU: every GPU step reaches its "not measured on CPU" row
    env["PIP_NO_INDEX"] = "1"  # pip could not reach an index anyway; say so before it tries
    return env


def module_names(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every module under `packages` (the repository's own), sorted."""
    names = []
    for package in packages:
        names.append(package)
        for info in pkgutil.walk_packages([str(REPO / package)], prefix=f"{package}."):
            names.append(info.name)
    return sorted(names)


def check_imports(packages: tuple[str, ...] = PACKAGES) -> int:
    """Import every module under `packages` in this Python; print one line per failure; 0 when all import."""
    failed = []
    names = module_names(packages)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 — every failure is reported, with its last line
            failed.append(name)
            print(f"FAILED import {name}:\n{traceback.format_exc(limit=3)}", file=sys.stderr)
    absent = [n for n in BLOCKED if _importable(n) is False]
    print(f"python {sys.version.split()[0]}: {len(names) - len(failed)} of {len(names)} modules under "
          f"{', '.join(packages)} import; absent here: {', '.join(absent) or 'none'}")  # fmt: skip
    return 1 if failed else 0


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--allow", action="append", default=[], choices=BLOCKED, help="leave this name importable")
    p.add_argument("--check-imports", action="store_true", help="import every workload and benchmark module")
    p.add_argument("command", nargs="*", help="the command to run under the simulation (after --)")
    args = p.parse_args(argv)
    if not args.check_imports and not args.command:
        p.error("give a command to run (after --) or --check-imports")
    blocked = tuple(n for n in BLOCKED if n not in args.allow)
    command = args.command or [sys.executable, "-m", "benchmarks.device_sim", "--in-sim-check-imports"]
    with tempfile.TemporaryDirectory(prefix="hsjp-device-sim-") as tmp:
        env = sim_env(Path(tmp), blocked)
        return subprocess.run(command, env=env, cwd=REPO).returncode


if __name__ == "__main__":
    if sys.argv[1:] == ["--in-sim-check-imports"]:
        sys.exit(check_imports())
    sys.exit(main())
