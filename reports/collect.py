"""Read a result store into one tidy table of stages (docs/design.md §4 store layout, §6 report).

Reads the store through its readers (`orchestrator.store.store.Store`, opened read-only, and
`orchestrator.store.format`: ids, state names, the result.json schema, the corrupt-JSON policy; no Ray,
no torch): `<root>/stages/<id>/{config.json, result.json, attempts.json, error.txt, metrics.jsonl}` and
`<root>/studies/<name>/plan.json`. A stage's config, data config and parent come from one source, its
`StageRecord` (config.json; a stage that never started: its plan's entry).
One row per stage (pretrain, finetune, evaluate); a finetune row also carries what classifies it
(backbone, init method, the pretrain's N / lr / epochs / concat_original, freeze, label fraction,
finetune epochs), its pretrain's precision, status and GPU-hours (so tables need no joins), and
`variant`: a hash of every other setting but the seeds, so only seed replicates are pooled. An
evaluate stage (test-dev2017 predictions of a finetune's best weights) hands its results file and the
server's stats (`test_dev_*`) to its finetune's row, where Table 1's test-dev cells read them.

Status of a stage: a `store_format.StageState`, as `hsjp-study status` tells it: `done` / `no-work` /
`collapsed` / `skipped` (result.json), `retrying` / `failed` (attempts.json, error.txt), `running`
(epochs in metrics.jsonl), else `waiting` (its pretrain is unfinished), `blocked` (its pretrain
failed) or `queued`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

from orchestrator.schedule.lineage import stale_of, stale_text
from orchestrator.schedule.view import stage_view
from orchestrator.store.format import (
    FINISHED_STATES,
    PLAN_FILE,
    StageKind,
    StageRecord,
    StageState,
    is_stage_id,
    state_before_start,
)
from orchestrator.store.store import Store
from workloads.config import BACKBONE_SCHEDULES

log = logging.getLogger(__name__)

OFFICIAL_FINETUNE_EPOCHS = {name: epochs for name, (epochs, _) in BACKBONE_SCHEDULES.items()}
"""What a finetune config's `epochs: null` stands for: the backbone's official schedule length."""
METRIC_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
STAGE_COLUMNS = (
    "stage_id",
    "kind",
    "status",
    "reason",
    "studies",
    "trials",
    "backbone",
    "method",
    "n",
    "lr",
    "pt_epochs",
    "concat_original",
    "pt_seed",
    "parent",
    "pt_status",
    "precision",
    "freeze",
    "label_fraction",
    "ft_epochs",
    "ft_seed",
    "split",
    "setup",
    "variant",
    "settings_flat",
    *METRIC_KEYS,
    "eval_boxes",
    "select_AP",
    "select_boxes",
    "ap_per_oks",
    "errors",
    "train_precision",
    "bf16",
    "world_size",
    "batch_size",
    "test_dev_AP",
    "test_dev_file",
    "test_dev_status",
    "test_dev_stage",
    "gpu_hours",
    "pt_gpu_hours",
    "device_hours",
    "wall_seconds",
    "finished_at",
    "stale",
)
INT_COLUMNS = ("n", "pt_epochs", "pt_seed", "freeze", "ft_epochs", "ft_seed")


def open_store(storage: str | os.PathLike) -> Store:
    """The store at `storage` (a local path or a URI, as `hsjp-study run --storage` takes it), opened to
    read: nothing is created, and a missing store reads as an empty one."""
    return Store(storage, create=False)


# ------------------------------------------------------------------------------------- raw records
def read_plans(store: Store) -> dict[str, dict]:
    """plan.json of every study: {study name: plan}."""
    plans = {}
    for name in store.list_studies():
        plan = store.read_json_or_warn(
            store.study_path(name, PLAN_FILE), "the study is left out of the report"
        )
        if isinstance(plan, dict):
            plans[name] = plan
    return plans


def read_raw_stages(store: Store, plans: dict[str, dict]) -> dict[str, dict]:
    """{stage id: {record, view, result, studies, trials}} for every stage in the
    stages folder or in a plan. `record` is the stage's `StageRecord` from its one source: the store
    (`Store.read_stage_record`) for a stage that has started, its plan's entry (and the plan's data
    config) for one that has not, which is all there is of it."""
    raw: dict[str, dict] = {}
    for stage_id in store.list_stages():
        record = store.read_stage_record(stage_id)
        if record is None:  # a folder with neither config.json nor result.json: not started
            continue
        e = raw[stage_id] = {"studies": set(), "trials": set(), "record": record}
        e["view"] = stage_view(store, stage_id, work=bool(record.get("work", True)))
        e["result"] = e["view"].result
        e["server_stats"] = _read_server_stats(store, stage_id, e["result"])
    for study, plan in plans.items():
        for stage_id, spec in (plan.get("stages") or {}).items():
            if not is_stage_id(stage_id) or not isinstance(spec, dict):
                log.warning("studies/%s/%s: entry %r is not a stage; ignored", study, PLAN_FILE, stage_id)
                continue
            if stage_id not in raw:  # never started: its plan is all there is of it
                raw[stage_id] = {
                    "studies": set(),
                    "trials": set(),
                    "record": _planned_record(stage_id, spec, plan),
                }
            raw[stage_id]["studies"].add(study)
        for trial in plan.get("trials") or []:
            for key in ("pretrain", "finetune"):
                if trial.get(key) in raw:
                    raw[trial[key]]["studies"].add(study)
            if trial.get("finetune") in raw:  # aliases: the study's other trial ids of the same finetune
                for trial_id in [trial.get("trial_id"), *(trial.get("aliases") or [])]:
                    raw[trial["finetune"]]["trials"].add(f"{study}/{trial_id}")
    return raw


def _planned_record(stage_id: str, spec: dict, plan: dict) -> StageRecord:
    """A planned stage's record from plan.json (`Plan.to_dict`): its entry, the plan's data config."""
    return {
        "stage_id": stage_id,
        "kind": stage_id.split("-", 1)[0],
        "config": spec.get("config") if isinstance(spec.get("config"), dict) else {},
        "data": plan.get("data") if isinstance(plan.get("data"), dict) else {},
        "parent": spec.get("parent"),
        "work": bool(spec.get("work", True)),
    }


# ------------------------------------------------------------------------------- test-dev stats
TEST_DEV = "test-dev2017"
SERVER_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")  # COCOeval order


def parse_server_stats(text: str, where: str) -> dict[str, float]:
    """The stats the COCO evaluation server returned for a results file, as the user places them
    beside it (`<results>.stats.json`, docs/paper-silent-choices.md "test-dev"): a JSON object with the
    keypoint stats by name as fractions, at least "AP" ({"AP": 0.736, "AP50": 0.904, ...}), or
    {"stats": [the 10 numbers in COCOeval order]}. ValueError naming `where` otherwise."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from err
    if isinstance(obj, dict) and isinstance(obj.get("stats"), list):
        obj = dict(zip(SERVER_STATS, obj["stats"]))
    if not isinstance(obj, dict) or "AP" not in obj:
        raise ValueError(f'{where}: expected an object with "AP" (a fraction) or "stats": [10 numbers]')
    out = {}
    for key in SERVER_STATS:
        if key in obj:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
                raise ValueError(
                    f"{where}: {key} = {value!r}: expected a fraction in [0, 1], as COCOeval gives"
                )
            out[key] = float(value)
    return out


def _read_server_stats(store: Store, stage_id: str, result: Any) -> dict | None:
    """{results_file, stats (or None), error} of the stage's test-dev predictions; None without any."""
    splits = ((result or {}).get("metrics") or {}).get("test_splits") if isinstance(result, dict) else None
    info = splits.get(TEST_DEV) if isinstance(splits, dict) else None
    if not isinstance(info, dict) or not info.get("results_file"):
        return None
    stats_file = info.get("stats_file") or str(info["results_file"]).removesuffix(".json") + ".stats.json"
    out = {"results_file": f"stages/{stage_id}/{info.get('zip_file') or info['results_file']}", "stats": None,
           "error": None}  # fmt: skip
    text = store.read_text(store.stage_path(stage_id, stats_file))
    if text is not None:
        try:
            out["stats"] = parse_server_stats(text, f"stages/{stage_id}/{stats_file}")
        except ValueError as exc:
            log.warning("%s; the test-dev cell stays empty", exc)
            out["error"] = str(exc)
    return out


def _status(e: dict) -> tuple[StageState, str]:
    """(state, reason) of one stage, as `hsjp-study status` tells it (`orchestrator.schedule.view`); a
    stage that never started is `queued`, which `_join_parents` turns into `waiting` / `blocked` by its
    pretrain."""
    view = e.get("view")
    return (view.state, view.reason) if view is not None else (StageState.QUEUED, "")


# --------------------------------------------------------------------------------------- rows
def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _setup_label(cfg: dict, data: dict, kind: str) -> str:
    """What changes the scale of a run but does not classify it (data set, caps, model size, input)."""
    model = cfg.get("model") or {}
    if not data:  # a stage not finished yet whose data config is not on record: matches any data
        return ""
    parts = [os.path.basename(str(data.get("coco_root") or "").rstrip("/")) or "coco_root?"]
    for key, short in (("max_train_instances", "train≤"), ("max_val_instances", "val≤")):
        if data.get(key):
            parts.append(f"{short}{data[key]}")
    if model.get("backbone") == "hrnet_w32" and model.get("width") not in (None, 32):
        parts.append(f"W{model['width']}")
    if model.get("backbone") == "simplebaseline_r50" and model.get("resnet_layers") not in (
        None,
        [3, 4, 6, 3],
    ):
        parts.append("R" + "-".join(str(x) for x in model["resnet_layers"]))
    if kind == StageKind.PRETRAIN and cfg.get("input_size") not in (None, 224):
        parts.append(f"in{cfg['input_size']}")
    if kind == StageKind.FINETUNE and cfg.get("input_hw") not in (None, [256, 192]):
        parts.append("in" + "x".join(str(x) for x in cfg["input_hw"]))
    return " ".join(parts)


# Config keys that do not make two runs different experiments: seeds (replicates are grouped over
# them), runtime switches (bf16 / channels_last / compile) and loader processes.
_NOT_VARIANT = ("seed", "runtime", "loader_workers", "init", "test_splits", "test_detection_file")


def flat_settings(cfg: dict, pt_cfg: dict | None, data: dict) -> dict[str, Any]:
    """{'finetune.lr': .., 'pretrain.n': .., 'data.coco_root': ..}: every setting but seeds / runtime."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in _NOT_VARIANT:
                    walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    if pt_cfg is None:  # a pretrain stage
        walk("pretrain", cfg)
    else:
        walk("finetune", cfg)
        walk("pretrain", pt_cfg)
    walk("data", data)
    return out


def _variant(flat: dict[str, Any], data: dict) -> str:
    """Short hash of the settings; '' when the data config is not on record (matches any)."""
    return (
        hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:8] if data else ""
    )


def _pretrain_fields(pt: dict) -> dict:
    """Classification of a pretrain config: method and, for HSJP, N / lr / epochs / concat / seed."""
    method = pt.get("method") or "unknown"
    hsjp = method == "hsjp"
    return {
        "method": method,
        "n": int(pt["n"]) if hsjp and pt.get("n") is not None else None,
        "lr": float(pt["lr"]) if hsjp and pt.get("lr") is not None else None,
        "pt_epochs": int(pt["epochs"]) if hsjp and pt.get("epochs") is not None else None,
        "concat_original": bool(pt.get("concat_original", False)) if hsjp else None,
        "pt_seed": pt.get("seed") if hsjp else None,
    }


def _row(stage_id: str, e: dict, configs: dict[str, dict]) -> dict:
    record = e["record"]
    cfg, data, parent = record["config"] or {}, record.get("data") or {}, record.get("parent")
    res = e.get("result") or {}
    kind = stage_id.split("-", 1)[0]  # `<kind>-<hash>` (store_format.STAGE_ID)
    status, reason = _status(e)
    metrics = res.get("metrics") or {}
    row: dict[str, Any] = {c: None for c in STAGE_COLUMNS}
    row.update(
        stage_id=stage_id,
        kind=kind,
        status=status,
        reason=reason,
        parent=parent,
        studies=";".join(sorted(e["studies"])),
        trials=";".join(sorted(e["trials"])),
        backbone=(cfg.get("model") or {}).get("backbone"),
        split="test-dev2017" if str(data.get("val_split", "")).startswith("test") else "val2017",
        setup=_setup_label(cfg, data, kind),
        finished_at=res.get("finished_at"),
        stale=stale_text(stale_of(res)) or None,  # made by an older workload version (lineage)
    )
    for key in ("gpu_hours", "device_hours", "wall_seconds"):
        row[key] = _num(res.get(key))
    row.update(_numerics_fields(cfg, res))
    if kind == StageKind.PRETRAIN:
        row.update(_pretrain_fields(cfg))
        row["precision"] = _num(metrics.get("precision"))
        row["settings_flat"] = flat_settings(cfg, None, data)
        row["variant"] = _variant(row["settings_flat"], data)
        return row
    init = cfg.get("init") if isinstance(cfg.get("init"), dict) else None
    if kind == StageKind.EVALUATE:  # a finetune's test split: its results file and the server's stats
        ft = cfg.get("finetune") if isinstance(cfg.get("finetune"), dict) else {}
        row.update(_pretrain_fields((init or {}).get("pretrain") or {}))
        row.update(
            backbone=(ft.get("model") or {}).get("backbone"),
            method=(init or {}).get("method") or row["method"],
            split=str(cfg.get("split") or TEST_DEV),
            setup=_setup_label(ft, data, "finetune"),
            **_test_dev_fields(e.get("server_stats")),
        )
        return row
    pt_cfg = (init or {}).get("pretrain") or configs.get(parent or "", {})
    row.update(_pretrain_fields(pt_cfg))
    if init and init.get("method"):
        row["method"] = init["method"]
    epochs = cfg.get("epochs")
    row.update(
        freeze=cfg.get("freeze"),
        label_fraction=float(cfg.get("label_fraction", 1.0)),
        ft_epochs=int(epochs) if epochs is not None else OFFICIAL_FINETUNE_EPOCHS.get(row["backbone"]),
        ft_seed=cfg.get("seed"),
    )
    for key in METRIC_KEYS:  # the reported evaluation of the selected weights (detection boxes)
        row[key] = _num(metrics.get(key))
    row["select_AP"] = _num(metrics.get("select_AP"))  # the model selection's (GT boxes by default)
    for key in ("eval_boxes", "select_boxes"):
        row[key] = metrics.get(key) if isinstance(metrics.get(key), str) else None
    row.update(_test_dev_fields(e.get("server_stats")))
    row["ap_per_oks"] = metrics.get("ap_per_oks") if isinstance(metrics.get("ap_per_oks"), dict) else None
    row["errors"] = metrics.get("errors") if isinstance(metrics.get("errors"), dict) else None
    row["settings_flat"] = flat_settings(cfg, pt_cfg, data)
    row["variant"] = _variant(row["settings_flat"], data)
    return row


def _numerics_fields(cfg: dict, res: dict) -> dict:
    """Training precision ("bf16" / "fp32", None before a result), GPUs and per-GPU batch of a stage:
    `provenance.numerics` when recorded, else inferred from `runtime.amp` and the device."""
    prov = res.get("provenance") if isinstance(res.get("provenance"), dict) else {}
    device = prov.get("device") if isinstance(prov.get("device"), dict) else {}
    numerics = prov.get("numerics") if isinstance(prov.get("numerics"), dict) else {}
    precision = numerics.get("train")
    if precision is None and res:
        amp = (cfg.get("runtime") or {}).get("amp", "auto")
        precision = "bf16" if amp == "bf16" or (amp == "auto" and device.get("type") == "cuda") else "fp32"
    return {
        "train_precision": precision,
        "bf16": precision == "bf16",
        "world_size": device.get("world_size"),
        "batch_size": cfg.get("batch_size"),
    }


def _test_dev_fields(server: dict | None) -> dict:
    if server is None:
        return {"test_dev_AP": math.nan, "test_dev_file": None, "test_dev_status": None}
    stats = server.get("stats") or {}
    if stats:
        status = "server stats"
    elif server.get("error"):
        status = f"stats file unreadable: {server['error']}"
    else:
        status = f"submit {server['results_file']}"
    return {
        "test_dev_AP": _num(stats.get("AP")),
        "test_dev_file": server["results_file"],
        "test_dev_status": status,
    }


def _join_parents(rows: list[dict]) -> None:
    """Copy each finetune's pretrain status / precision / GPU-hours onto the finetune row."""
    by_id = {r["stage_id"]: r for r in rows}
    for r in rows:
        if r["kind"] != StageKind.FINETUNE:
            continue
        parent = by_id.get(r["parent"] or "")
        if parent is None:
            r["pt_status"], r["precision"], r["pt_gpu_hours"] = "absent", math.nan, math.nan
            if r["status"] == StageState.QUEUED:
                r["status"], r["reason"] = StageState.WAITING, "pretrain absent"
            continue
        r["pt_status"], r["precision"], r["pt_gpu_hours"] = (
            parent["status"],
            parent["precision"],
            parent["gpu_hours"],
        )
        r["bf16"] = bool(r["bf16"] or parent["bf16"])  # a bf16 pretrain marks its finetunes too
        if r["status"] == StageState.QUEUED:  # not started: by its pretrain, as `status` tells it
            r["status"] = state_before_start(StageState(parent["status"]))
            if r["status"] != StageState.QUEUED:
                r["reason"] = f"pretrain {parent['status']}"


def _join_evaluations(rows: list[dict]) -> None:
    """Each evaluate stage's state by its finetune's (not started yet), and each test-dev evaluate stage's
    results file / server stats (or why there are none yet) onto its finetune's row."""
    by_id = {r["stage_id"]: r for r in rows}
    for r in rows:
        finetune = by_id.get(r["parent"] or "") if r["kind"] == StageKind.EVALUATE else None
        if finetune is None:
            continue
        if r["status"] == StageState.QUEUED:  # not started: by its finetune, as `status` tells it
            r["status"] = state_before_start(StageState(finetune["status"]))
            if r["status"] != StageState.QUEUED:
                r["reason"] = f"finetune {finetune['status']}"
        if r["split"] != TEST_DEV or finetune["test_dev_status"] == "server stats":
            continue
        finetune["test_dev_stage"] = r["stage_id"]
        if r["test_dev_file"] is not None:
            finetune.update({k: r[k] for k in ("test_dev_AP", "test_dev_file", "test_dev_status")})
        elif finetune["test_dev_file"] is None:  # planned, running, failed ...: the cell says so
            why = f" ({r['reason']})" if r["reason"] else ""
            finetune["test_dev_status"] = f"test-dev evaluate stage {r['stage_id']} {r['status']}{why}"


def _int_or_none(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def stages_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """The tidy stage table (columns STAGE_COLUMNS) from row dicts; integer settings stay integers
    (None where they do not apply) rather than becoming floats."""
    rows = list(rows)
    frame = pd.DataFrame(rows, columns=list(STAGE_COLUMNS))
    for col in INT_COLUMNS:
        frame[col] = pd.Series([_int_or_none(r.get(col)) for r in rows], index=frame.index, dtype=object)
    for col in ("concat_original", "parent", "ap_per_oks", "errors", "settings_flat"):
        frame[col] = pd.Series([r.get(col) for r in rows], index=frame.index, dtype=object)
    return frame


def collect(storage: str | os.PathLike) -> pd.DataFrame:
    """Every stage of the store (finished, running, failed, or only planned) as one tidy table."""
    store = open_store(storage)
    plans = read_plans(store)
    raw = read_raw_stages(store, plans)
    configs = {sid: e["record"]["config"] for sid, e in raw.items() if sid.startswith("pretrain-")}
    rows = [_row(sid, e, configs) for sid, e in sorted(raw.items())]
    _join_parents(rows)
    _join_evaluations(rows)
    log.info(
        "collected %d stages (%d finished) from %s and %d studies",
        len(rows),
        sum(r["status"] in FINISHED_STATES for r in rows),
        storage,
        len(plans),
    )
    return stages_frame(rows)
