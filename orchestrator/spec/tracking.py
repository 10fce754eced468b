"""Experiment trackers of a study (`tracking:`, off by default) through Ray Tune's callbacks: MLflow
(`MLflowLoggerCallback`) and W&B (`WandbLoggerCallback`); each trial is one run whose metrics are its
reported results, at their `training_iteration`. The packages are extras (`hsjp-study[mlflow]`,
`[wandb]`): one asked for and missing is a `TrackingError` naming the extra (the CLI exits 2).

Known defect (W&B): a run's last rows can be missing from its offline file when Ray ends the trial's
logging actor while wandb-core is still writing; seen in 2 of 8 smoke runs on 2 busy cores, never with
MLflow. It happens inside Ray's callback.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from workloads.config import ConfigError

MLFLOW_KEYS = ("tracking_uri", "experiment_name", "tags", "save_artifact")
WANDB_KEYS = ("project", "mode", "dir", "group", "entity", "tags", "api_key_file", "log_config")
WANDB_MODES = ("online", "offline", "disabled")
# tracker → (module Ray's callback imports, the pip extra that installs it)
EXTRAS = {"mlflow": ("mlflow", "hsjp-study[mlflow]"), "wandb": ("wandb", "hsjp-study[wandb]")}
# result fields W&B should not log as metrics (Tune bookkeeping)
EXCLUDED = ("config", "time_this_iter_s", "pid", "hostname", "node_ip", "date", "timestamp")


class TrackingError(ConfigError):
    """A requested tracker's package is missing (the CLI exits 2 and names the extra)."""


@dataclass(frozen=True)
class TrackingConfig:
    mlflow: dict[str, Any] | None = None
    wandb: dict[str, Any] | None = None
    trackers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("mlflow", self.mlflow), ("wandb", self.wandb)) if v is not None}


def parse_tracking(raw: Any, where: str) -> TrackingConfig:
    """The `tracking:` mapping of a study file; ConfigError naming `<where>: tracking.<key>` on a mistake."""
    if raw is None:
        return TrackingConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: tracking = {raw!r}: expected a mapping with mlflow and / or wandb")
    unknown = [k for k in raw if k not in EXTRAS]
    if unknown:
        raise ConfigError(f"{where}: tracking.{unknown[0]}: unknown tracker; allowed: mlflow, wandb")
    out: dict[str, dict[str, Any]] = {}
    for name, allowed, tags in (("mlflow", MLFLOW_KEYS, dict), ("wandb", WANDB_KEYS, list)):
        if name not in raw:
            continue
        section = raw[name] if raw[name] is not None else {}
        if not isinstance(section, dict):
            raise ConfigError(
                f"{where}: tracking.{name} = {section!r}: expected a mapping (may be empty: {{}})"
            )
        bad = [k for k in section if k not in allowed]
        if bad:
            raise ConfigError(
                f"{where}: tracking.{name}.{bad[0]}: unknown key; allowed: {', '.join(allowed)}"
            )
        if "tags" in section and not isinstance(section["tags"], tags):
            kind = "a mapping" if tags is dict else "a list"
            raise ConfigError(f"{where}: tracking.{name}.tags = {section['tags']!r}: expected {kind}")
        out[name] = dict(section)
    wandb = out.get("wandb")
    if wandb is not None and wandb.get("mode", "online") not in WANDB_MODES:
        raise ConfigError(
            f"{where}: tracking.wandb.mode = {wandb['mode']!r}: expected one of {', '.join(WANDB_MODES)}"
        )
    return TrackingConfig(mlflow=out.get("mlflow"), wandb=wandb, trackers=tuple(out))


def check_available(cfg: TrackingConfig, where: str = "tracking") -> None:
    """TrackingError naming the extra when a requested tracker's package is not importable."""
    for name in cfg.trackers:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise TrackingError(
                f"{where}.{name} is set but the {module} package is not installed: pip install '{extra}'"
            )
