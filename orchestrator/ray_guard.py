"""The Ray version guard: refuse, before anything starts, a Ray whose `TorchTrainer`
is Ray Train V1.

The design relies on Train V2's same-name resume: a stage's trainer is named after the stage id, and a
re-created trainer of that name in the same storage continues from its last registered checkpoint
(orchestrator/stages.py). V1's `TorchTrainer` has no such thing (it resumes only through
`TorchTrainer.restore`), so under V1 every half-done stage would silently start over. V2 is the default
from Ray 2.51.0 on (its release notes, 2025-10-29: "Ray Train v2 is now enabled by default"; PR
ray-project/ray#57857); before that, and whenever `RAY_TRAIN_V2_ENABLED=0`, `ray.train.torch.TorchTrainer`
is the V1 class. pyproject.toml's floor is that release.
"""

from __future__ import annotations

import os
import re

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
        import ray

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
