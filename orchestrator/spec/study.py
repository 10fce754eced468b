"""Study files (docs/design.md §1): a strict YAML loader from `studies/*.yaml` to typed trials.

A study names its data, compute, default pretrain + finetune configs, a `matrix` of dotted keys (its
cartesian product gives trials), `include` entries adding single trials over the defaults (without a
matrix they are the only trials; with neither, the defaults are the one trial) and `seeds` (an axis
over both stages' `seed`). `studies: [a.yaml, b.yaml]` merges the listed studies' trials (paper.yaml).
One trial = one finetune and the pretrain it starts from (paper §4.2). Every mistake is a
`ConfigError` naming the file, the dotted key, the value and what is allowed. Loading reads only the
study files; `orchestrator.spec.inputs` prepares the data.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import os
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec import strict_yaml
from orchestrator.spec.inputs import (
    ComputeConfig,
    DataSpec,
    dry_run_inputs,
    expand_env,
    expected,
    load_compute,
    load_data,
    resolve_path,
    short,
)
from orchestrator.spec.tracking import TrackingConfig, parse_tracking
from orchestrator.store.format import StoreError, check_study_name
from workloads.config import (
    HEATMAP_STRIDE,
    INPUT_MULTIPLE,
    ConfigError,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    from_dict,
    heatmap_hw_of_input,
    suggest,
    to_dict,
    types_only,
)

_STUDY_KEYS = ("name", "description", "data", "compute", "defaults", "matrix", "include", "seeds", "tracking")
_MERGED_KEYS = ("name", "description", "studies", "data", "compute", "tracking")
_SECTIONS: dict[str, type] = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "model": ModelConfig}


@dataclass(frozen=True)
class Trial:
    """One finetune and the pretrain it starts from, as the study defines them."""

    params: dict[str, Any]  # the matrix / include values that define it (dotted keys), and `seed`
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    study: str  # the study that defined it (in a merged study: a part's name)
    origin: str  # where in that study's `file`: `defaults`, `matrix[...]` or `include[i]` (+ `[seed=s]`)
    file: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    text: str  # the YAML as read (a merged study: its own text, then each listed file as a further document)
    data: DataSpec
    compute: ComputeConfig
    trials: tuple[Trial, ...]
    parts: tuple[str, ...] = ()  # a merged study: the names of its parts, in order
    unset_env: tuple[tuple[str, str], ...] = ()  # dry runs: (VAR, key) of each `${VAR}` left as written
    tracking: TrackingConfig = TrackingConfig()  # MLflow / W&B (orchestrator.spec.tracking); none by default


# ----------------------------------------------------------------------------------------- loading
def load_study(path: str | os.PathLike[str], dry_run: bool = False) -> Study:
    """Read and validate a study file (ConfigError naming file / key / value on any mistake).

    `dry_run`: an unset `${VAR}` is kept as written (and listed in `unset_env`) instead of an error,
    so that `plan` works without COCO or the checkpoints (`inputs.missing_inputs` says what a run needs).
    """
    path = Path(path)
    if dry_run:
        with dry_run_inputs() as unset:
            study = load_study(path)
        return dataclasses.replace(study, unset_env=tuple(unset))
    raw, text = _read_yaml(path)
    if "studies" in raw:
        return _load_merged(path, raw, text)
    return _load_single(path, raw, text)


def _read_yaml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: study file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the study file ({exc})") from None
    try:
        raw = strict_yaml.parse(text, str(path))  # yaml.safe_load that refuses a key given twice
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}; a study is a YAML mapping") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a YAML mapping with keys {', '.join(_STUDY_KEYS)}; "
            f"got {type(raw).__name__} {short(raw)}"
        )
    return raw, text


def _load_single(path: Path, raw: dict[str, Any], text: str) -> Study:
    _check_keys(raw, _STUDY_KEYS, f"{path}: ")
    name = _study_name(raw, path)
    data = load_data(raw.get("data"), path)
    compute = load_compute(raw.get("compute"), path)
    check_trial_count(raw, compute, path)  # before anything is expanded
    base = _load_defaults(raw.get("defaults"), path)
    seeds = _load_seeds(raw.get("seeds"), path)
    included = _load_include(raw.get("include"), path)
    if raw.get("matrix") is None and included:
        rows = included  # include only: exactly the listed trials
    else:
        rows = _expand_matrix(raw.get("matrix"), path) + included
    clash = [f"{o}: {k}" for o, ov in rows for k in ov if k.endswith(".seed")] if raw.get("seeds") else []
    if clash:
        raise ConfigError(f"{path}: {clash[0]}: the `seeds` axis sets both stages' seed; drop one of them")
    trials = tuple(
        _make_trial(base, overrides, seed, origin, name, path) for origin, overrides in rows for seed in seeds
    )
    tracking = parse_tracking(raw.get("tracking"), str(path))
    return Study(
        name=name, path=path, text=text, data=data, compute=compute, trials=trials, tracking=tracking
    )


def _load_merged(path: Path, raw: dict[str, Any], text: str) -> Study:
    _check_keys(raw, _MERGED_KEYS, f"{path}: ")
    name = _study_name(raw, path)
    files = raw["studies"]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise expected(
            f"{path}: studies", files, "a non-empty list of study file paths (relative to this file)"
        )
    parts = []
    for i, rel in enumerate(files):
        sub_path = path.parent / expand_env(rel, f"{path}: studies[{i}]")
        sub_raw, sub_text = _read_yaml(sub_path)
        if "studies" in sub_raw:
            raise ConfigError(
                f"{path}: studies[{i}] = {rel!r}: lists further studies; merge plain studies only"
            )
        parts.append(_load_single(sub_path, sub_raw, sub_text))
    data = load_data(raw["data"], path) if "data" in raw else _agreed_data(parts, path)
    compute = load_compute(raw["compute"], path) if "compute" in raw else _agreed(parts, "compute", path)
    tracking = (
        parse_tracking(raw["tracking"], str(path)) if "tracking" in raw else _agreed(parts, "tracking", path)
    )
    full_text = text + "".join(f"\n---\n# {p.path}\n{p.text}" for p in parts)
    trials = tuple(t for p in parts for t in p.trials)
    if len(trials) > compute.trial_limit:
        raise ConfigError(
            f"{path}: the listed studies make {len(trials):,} trials, over compute.trial_limit = "
            f"{compute.trial_limit:,}; raise compute.trial_limit in {path.name} if you mean it"
        )
    return Study(
        name=name,
        path=path,
        text=full_text,
        data=data,
        compute=compute,
        trials=trials,
        parts=tuple(p.name for p in parts),
        tracking=tracking,
    )


def _agreed(parts: list[Study], key: str, path: Path) -> Any:
    first = getattr(parts[0], key)
    for p in parts[1:]:
        if getattr(p, key) != first:
            raise ConfigError(
                f"{path}: the listed studies disagree on `{key}` ({parts[0].path} vs {p.path}); "
                f"give `{key}` in {path.name} to use one for all"
            )
    return first


def _agreed_data(parts: list[Study], path: Path) -> DataSpec:
    """The listed studies' common `data`. Only the evaluate stages read `test_detection_file`: a part
    giving it (Table 1's test-dev rows) agrees with parts that do not; two different ones disagree."""
    given = {d for p in parts if (d := p.data.config.test_detection_file) is not None}
    if len(given) > 1:
        raise ConfigError(
            f"{path}: the listed studies disagree on `data.test_detection_file` ({', '.join(sorted(given))}); "
            f"give `data` in {path.name} to use one for all"
        )

    def with_detections(spec: DataSpec, file: str | None) -> DataSpec:
        return dataclasses.replace(spec, config=dataclasses.replace(spec.config, test_detection_file=file))

    bare = [dataclasses.replace(p, data=with_detections(p.data, None)) for p in parts]
    return with_detections(_agreed(bare, "data", path), next(iter(given), None))


def _study_name(raw: dict[str, Any], path: Path) -> str:
    name = raw.get("name", path.stem)
    try:
        return check_study_name(name)
    except StoreError as exc:
        raise ConfigError(f"{path}: name = {name!r}: {exc}") from None


# -------------------------------------------------------------------------------------- sections
def _load_defaults(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """The defaults as plain data {pretrain: {...}, finetune: {...}} as given (type-checked, paths expanded)."""
    where = f"{path}: defaults"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise expected(where, raw, "a mapping with keys model, pretrain, finetune")
    _check_keys(raw, ("model", "pretrain", "finetune"), where)
    sections = {}
    for name in ("pretrain", "finetune"):
        sec = raw.get(name) or {}
        if not isinstance(sec, dict):
            raise expected(f"{where}.{name}", sec, f"a mapping of {_SECTIONS[name].__name__} fields")
        sections[name] = dict(sec)
    if raw.get("model") is not None:
        with _float_hint():
            model = to_dict(from_dict(ModelConfig, raw["model"], f"{where}.model"))
        for name in ("pretrain", "finetune"):
            if "model" in sections[name]:
                raise ConfigError(f"{where}.{name}.model: give the model once, under defaults.model")
            sections[name]["model"] = model
    if isinstance(ckpt := sections["pretrain"].get("checkpoint"), str):
        sections["pretrain"]["checkpoint"] = resolve_path(ckpt, f"{where}.pretrain.checkpoint", path)
    # Type-checked here but kept as given (not filled with defaults), so that a setting left out takes
    # the default of each trial's own backbone once the trial is built (BACKBONE_RECIPES).
    with _float_hint(), types_only():
        for name, sec in sections.items():
            from_dict(_SECTIONS[name], sec, f"{where}.{name}")
    return sections


def _load_seeds(raw: Any, path: Path) -> list[int | None]:
    if raw is None:
        return [None]
    ok = isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) for s in raw)
    if not ok or len(set(raw)) != len(raw):
        raise expected(f"{path}: seeds", raw, "a non-empty list of distinct integers")
    return list(raw)


def check_trial_count(raw: dict[str, Any], compute: ComputeConfig, path: Path) -> None:
    """Refuse a study making more than `compute.trial_limit` trials, counted from the lengths of the
    matrix axes, include and seeds without expanding anything (10^6 trials would take minutes to
    build). Malformed sections are left to their loaders' errors."""
    matrix, include, seeds = raw.get("matrix"), raw.get("include"), raw.get("seeds")
    n_include = len(include) if isinstance(include, list) else 0
    n_seeds = len(seeds) if isinstance(seeds, list) and seeds else 1
    if matrix is None:
        rows, how = n_include or 1, f"{n_include} include entries" if n_include else "the defaults"
    elif isinstance(matrix, dict) and matrix and all(isinstance(v, list) for v in matrix.values()):
        rows = math.prod(len(v) for v in matrix.values())
        how = "matrix " + " × ".join(f"{k} ({len(v)})" for k, v in matrix.items())
        if n_include:
            rows, how = rows + n_include, f"{how} + {n_include} include entries"
    else:
        return
    total = rows * n_seeds
    if total > compute.trial_limit:
        seeds_text = f", × {n_seeds} seeds" if n_seeds > 1 else ""
        raise ConfigError(
            f"{path}: this study would make {total:,} trials ({how}{seeds_text}), over compute.trial_limit = "
            f"{compute.trial_limit:,}; check the matrix for a typo, or raise compute.trial_limit if you mean it"
        )


def _expand_matrix(raw: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The cartesian product of the matrix axes, as (origin label, {dotted key: value}) rows.
    No matrix → one row: the defaults (dropped by the caller when `include` lists trials)."""
    if raw is None:
        return [("defaults", {})]
    if not isinstance(raw, dict) or not raw:
        raise expected(
            f"{path}: matrix", raw, "a mapping of dotted keys to lists, e.g. {pretrain.n: [2, 3, 4]}"
        )
    axes = []
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise expected(f"{path}: matrix.{key}", values, "a non-empty list of values")
        axes.append([(key, _check_value(key, v, f"{path}: matrix", path)) for v in values])
    combos = [dict(combo) for combo in itertools.product(*axes)]
    return [(f"matrix[{', '.join(f'{k}={v}' for k, v in c.items())}]", c) for c in combos]


def _load_include(raw: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise expected(f"{path}: include", raw, "a list of mappings {dotted key: value}")
    rows = []
    for i, entry in enumerate(raw):
        where = f"{path}: include[{i}]"
        if not isinstance(entry, dict) or not entry:
            what = "a non-empty mapping {dotted key: value}, e.g. {pretrain.method: scratch}"
            raise expected(where, entry, what)
        rows.append((f"include[{i}]", {k: _check_value(k, v, where, path) for k, v in entry.items()}))
    return rows


# ------------------------------------------------------------------------------------ dotted keys
def _check_value(key: Any, value: Any, where: str, path: Path) -> Any:
    """Type-check one dotted key's value (ConfigError names where.key and the value); paths expanded."""
    if not isinstance(key, str):
        raise ConfigError(f"{where}: key {key!r} must be a dotted string such as pretrain.n")
    parts = key.split(".")
    if parts[0] not in _SECTIONS:
        raise ConfigError(
            f"{where}.{key}: unknown key{suggest(parts[0], _SECTIONS)}; a dotted key starts with "
            f"{', '.join(_SECTIONS)} (model.* sets both stages' model)"
        )
    if len(parts) < 2:
        raise ConfigError(
            f"{where}.{key}: name a field, e.g. {key}.{dataclasses.fields(_SECTIONS[key])[0].name}"
        )
    cls = _SECTIONS[parts[0]]
    for i, name in enumerate(parts[1:-1], start=1):
        names = [f.name for f in dataclasses.fields(cls)]
        if name not in names:
            raise ConfigError(
                f"{where}.{'.'.join(parts[: i + 1])}: unknown key{suggest(name, names)}; valid keys: "
                f"{', '.join(sorted(names))}"
            )
        cls = typing.get_type_hints(cls)[name]
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{where}.{key}: {'.'.join(parts[: i + 1])} is a value, not a section")
    if parts[-1] == "checkpoint" and isinstance(value, str):
        value = resolve_path(value, f"{where}.{key}", path)
    with _float_hint(), types_only():  # the whole trial is value-checked when it is built
        from_dict(cls, {parts[-1]: value}, f"{where}.{'.'.join(parts[:-1])}")
    return value


def _assign(base: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in the plain trial data (a mapping is merged into the one there); `model.*` sets
    both stages' model."""
    section, *rest = key.split(".")
    for name in reversed(rest):
        value = {name: value}
    for target in ("pretrain", "finetune") if section == "model" else (section,):
        base[target] = _merge(base[target], {"model": value} if section == "model" else value)


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(old)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _make_trial(
    base: dict[str, Any], overrides: dict[str, Any], seed: int | None, origin: str, study: str, path: Path
) -> Trial:
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        _assign(data, key, value)
    if seed is not None:
        data["pretrain"]["seed"] = data["finetune"]["seed"] = seed
        origin = f"{origin}[seed={seed}]"
    where = f"{path}: {origin}"
    pre = from_dict(PretrainConfig, data["pretrain"], f"{where}: pretrain")
    ft = from_dict(FinetuneConfig, data["finetune"], f"{where}: finetune")
    check_shapes(pre, ft, where)
    if pre.model != ft.model:
        pm, fm = to_dict(pre.model), to_dict(ft.model)
        diff = ", ".join(
            f"pretrain.model.{k} = {pm[k]!r} but finetune.model.{k} = {fm[k]!r}" for k in pm if pm[k] != fm[k]
        )
        raise ConfigError(
            f"{where}: the two stages' models differ ({diff}); the finetune loads the pretrain's backbone, "
            "so set the model once (defaults.model, matrix/include model.*)"
        )
    params = {**overrides, "seed": ft.seed}
    return Trial(params=params, pretrain=pre, finetune=ft, study=study, origin=origin, file=str(path))


def check_shapes(pre: PretrainConfig, ft: FinetuneConfig, where: str) -> None:
    """Input sizes the backbones take: multiples of 32 (both downsample 32×), heatmaps at input / 4
    (224 → 56, paper §3.3; 256×192 → 64×48, §4.2). Caught here rather than at a stage's first step."""
    if pre.method == "hsjp":
        if pre.input_size % INPUT_MULTIPLE:
            raise ConfigError(
                f"{where}: pretrain.input_size = {pre.input_size}: must be a multiple of "
                f"{INPUT_MULTIPLE} (e.g. 64, 96, 224)"
            )
        side, _ = heatmap_hw_of_input(pre.input_size, pre.input_size)
        if pre.heatmap_size != side:
            raise ConfigError(
                f"{where}: pretrain.heatmap_size = {pre.heatmap_size}: must be input_size / {HEATMAP_STRIDE} = "
                f"{side}"
            )
    h, w = ft.input_hw
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise ConfigError(
            f"{where}: finetune.input_hw = {[h, w]}: both sides must be multiples of "
            f"{INPUT_MULTIPLE} (e.g. [256, 192], [128, 96])"
        )
    if tuple(ft.heatmap_hw) != heatmap_hw_of_input(h, w):
        raise ConfigError(
            f"{where}: finetune.heatmap_hw = {list(ft.heatmap_hw)}: must be input_hw / {HEATMAP_STRIDE} = "
            f"{list(heatmap_hw_of_input(h, w))}"
        )


# ------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _float_hint() -> Iterator[None]:
    """PyYAML (YAML 1.1) reads `1e-3` as text: say so where a number was expected."""
    try:
        yield
    except ConfigError as exc:
        if "expected a number, got str" not in str(exc):
            raise
        raise ConfigError(f"{exc} (YAML reads numbers like 1e-3 as text: write 1.0e-3)") from None


def _check_keys(raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            prefix = where if where.endswith(": ") else f"{where}."
            raise ConfigError(
                f"{prefix}{key}: unknown key{suggest(str(key), allowed)}; allowed: {', '.join(allowed)}"
            )
