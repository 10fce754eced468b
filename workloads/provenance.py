"""Provenance recorded with every stage: the workloads' numerics versions, the git commit (and whether
the tree had uncommitted changes), package versions, Python and the device."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from workloads import WORKLOAD_VERSIONS

_PACKAGES = ("torch", "torchvision", "ray", "pycocotools", "numpy", "opencv-python-headless")


def config_hash(config: Any) -> str:
    """sha1 of the canonical JSON of plain config data (sorted keys)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def git_state(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(config: Any, device: torch.device | str = "cpu", world_size: int = 1) -> dict[str, Any]:
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "workload_versions": dict(WORKLOAD_VERSIONS),
        "git": git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "device": {"type": device.type, "name": name, "world_size": world_size},
        "config_hash": config_hash(config),
    }
