"""Read a result store into one tidy table of stages (docs/design.md §4 store layout, §6 report).

Reads the store FORMAT only — `<root>/stages/<id>/{result.json, config.json, metrics.jsonl,
error.txt}` and `<root>/studies/<name>/plan.json`, as `orchestrator.store_format` defines them (ids,
state names, the result.json schema, the corrupt-JSON policy) — no other orchestrator code, Ray or torch.
One row per stage (pretrain and finetune); a finetune row also carries what classifies it
(backbone, init method, the pretrain's N / lr / epochs / concat_original, freeze, label fraction,
finetune epochs), its pretrain's precision, status and GPU-hours (so tables need no joins), and
`variant`: a hash of every other setting but the seeds, so only seed replicates are pooled.

Status of a stage: `done` / `collapsed` / `skipped` (from result.json), `failed` (error.txt and no
result), `running` (metrics.jsonl or config.json but no result), `pending` (only in a plan).
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
import pyarrow.fs as pafs

from orchestrator.store_format import (
    RESULT_FILE,
    STAGES_DIR,
    ResultRecord,
    is_stage_id,
    parse_json_or_warn,
    read_result_record,
    stage_state,
)

log = logging.getLogger(__name__)

# Same values as workloads.config.BACKBONE_SCHEDULES (HRNet w32_256x192_adam_lr1e-3.yaml: 210 epochs;
# SimpleBaseline res50_256x192_d256x3_adam_lr1e-3.yaml: 140), repeated here because reports read the
# store format only: a finetune config with `epochs: null` means the backbone's official schedule.
OFFICIAL_FINETUNE_EPOCHS = {"hrnet_w32": 210, "simplebaseline_r50": 140}
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
    "ap_per_oks",
    "errors",
    "train_precision",
    "bf16",
    "world_size",
    "batch_size",
    "test_dev_AP",
    "test_dev_file",
    "test_dev_status",
    "gpu_hours",
    "pt_gpu_hours",
    "device_hours",
    "wall_seconds",
    "finished_at",
)
INT_COLUMNS = ("n", "pt_epochs", "pt_seed", "freeze", "ft_epochs", "ft_seed")


class StoreReader:
    """Read-only access to a store root: a local path, or a URI through pyarrow.fs (as the store)."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" in root:
            self.fs, base = pafs.FileSystem.from_uri(root)
        else:
            self.fs, base = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
        self.base = base.rstrip("/")

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self._path(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str | None:
        path = self._path(*parts)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode(errors="replace")

    def read_bytes(self, *parts: str) -> bytes | None:
        path = self._path(*parts)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_json(self, *parts: str, consequence: str = "treated as absent") -> Any | None:
        """Parsed JSON, or None when absent; a corrupt file reads as absent with a warning naming it
        and `consequence` (the store format's one policy: `orchestrator.store_format`)."""
        return parse_json_or_warn(self.read_text(*parts), self._path(*parts), consequence)

    def read_result(self, stage_id: str) -> ResultRecord | None:
        """A stage's result.json in the current schema (`store_format.read_result_record`), None when
        the stage is not finished or the file is corrupt (warned: it counts as not finished)."""
        parts = (STAGES_DIR, stage_id, RESULT_FILE)
        obj = self.read_json(*parts, consequence="the stage counts as not finished")
        return None if obj is None else read_result_record(obj, self._path(*parts))

    def list_dirs(self, *parts: str) -> list[str]:
        path = self._path(*parts)
        if self.fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


# ------------------------------------------------------------------------------------- raw records
def read_plans(reader: StoreReader) -> dict[str, dict]:
    """plan.json of every study: {study name: plan}."""
    plans = {}
    for name in reader.list_dirs("studies"):
        plan = reader.read_json(
            "studies", name, "plan.json", consequence="the study is left out of the report"
        )
        if isinstance(plan, dict):
            plans[name] = plan
    return plans


def read_raw_stages(reader: StoreReader, plans: dict[str, dict]) -> dict[str, dict]:
    """{stage id: {result, config, data, parent, kind, error, started, studies, trials}} for every stage
    in the stages folder or in a plan."""
    raw: dict[str, dict] = {}

    def entry(stage_id: str) -> dict:
        return raw.setdefault(stage_id, {"studies": set(), "trials": set(), "plan": None})

    for study, plan in plans.items():
        for stage_id, spec in (plan.get("stages") or {}).items():
            entry(stage_id)["plan"] = spec if isinstance(spec, dict) else None
            raw[stage_id]["studies"].add(study)
            if isinstance(plan.get("data"), dict):  # a plan-wide data config, if the plan has one
                raw[stage_id]["plan_data"] = plan["data"]
        for trial in plan.get("trials") or []:
            for key in ("pretrain", "finetune"):
                if trial.get(key):
                    entry(trial[key])["studies"].add(study)
            if trial.get("finetune"):  # aliases: other trial ids of the study that ran the same finetune
                for trial_id in [trial.get("trial_id"), *(trial.get("aliases") or [])]:
                    raw[trial["finetune"]]["trials"].add(f"{study}/{trial_id}")
    for stage_id in reader.list_dirs("stages"):
        if is_stage_id(stage_id):
            e = entry(stage_id)
            e["result"] = reader.read_result(stage_id)
            e["config_file"] = reader.read_json("stages", stage_id, "config.json")
            e["error"] = reader.read_text("stages", stage_id, "error.txt")
            e["started"] = True
            e["server_stats"] = _read_server_stats(reader, stage_id, e["result"])
    return raw


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


def _read_server_stats(reader: StoreReader, stage_id: str, result: Any) -> dict | None:
    """{results_file, stats (or None), error} of the stage's test-dev predictions; None without any."""
    splits = ((result or {}).get("metrics") or {}).get("test_splits") if isinstance(result, dict) else None
    info = splits.get(TEST_DEV) if isinstance(splits, dict) else None
    if not isinstance(info, dict) or not info.get("results_file"):
        return None
    stats_file = info.get("stats_file") or str(info["results_file"]).removesuffix(".json") + ".stats.json"
    out = {"results_file": f"stages/{stage_id}/{info.get('zip_file') or info['results_file']}", "stats": None,
           "error": None}  # fmt: skip
    text = reader.read_text("stages", stage_id, stats_file)
    if text is not None:
        try:
            out["stats"] = parse_server_stats(text, f"stages/{stage_id}/{stats_file}")
        except ValueError as exc:
            log.warning("%s; the test-dev cell stays empty", exc)
            out["error"] = str(exc)
    return out


def _stage_config(e: dict) -> tuple[dict, dict, str | None]:
    """(config, data config, parent) from result.json, else config.json, else the plan."""
    plan = e.get("plan") or {}
    for source in (e.get("result"), e.get("config_file"), plan):
        if not isinstance(source, dict):
            continue
        if isinstance(source.get("config"), dict):  # a wrapper {config, data, parent, ...}
            return (
                source["config"],
                source.get("data") or plan.get("data") or e.get("plan_data") or {},
                source.get("parent") or plan.get("parent"),
            )
        if "model" in source:  # a bare stage config
            return source, plan.get("data") or e.get("plan_data") or {}, plan.get("parent")
    return {}, {}, plan.get("parent")


def _status(e: dict) -> tuple[str, str]:
    """(status, reason) of one stage."""
    res = e.get("result")
    if isinstance(res, dict):
        status = stage_state(res)
        metrics = res.get("metrics") or {}
        reason = res.get("reason") or metrics.get("reason") or ""
        if status == "collapsed" and not reason and res.get("collapsed_epoch") is not None:
            reason = f"collapsed at epoch {res['collapsed_epoch']}"
        return status, str(reason)
    if e.get("error"):
        return "failed", e["error"].strip().splitlines()[-1][:200] if e["error"].strip() else "error.txt"
    if e.get("started"):
        return "running", ""
    return "pending", ""


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
    if kind == "pretrain" and cfg.get("input_size") not in (None, 224):
        parts.append(f"in{cfg['input_size']}")
    if kind == "finetune" and cfg.get("input_hw") not in (None, [256, 192]):
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
    cfg, data, parent = _stage_config(e)
    res = e.get("result") if isinstance(e.get("result"), dict) else {}
    kind = res.get("kind") or (e.get("plan") or {}).get("kind") or stage_id.split("-", 1)[0]
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
    )
    for key in ("gpu_hours", "device_hours", "wall_seconds"):
        row[key] = _num(res.get(key))
    row.update(_numerics_fields(cfg, res))
    if kind == "pretrain":
        row.update(_pretrain_fields(cfg))
        row["precision"] = _num(metrics.get("precision"))
        row["settings_flat"] = flat_settings(cfg, None, data)
        row["variant"] = _variant(row["settings_flat"], data)
        return row
    init = cfg.get("init") if isinstance(cfg.get("init"), dict) else None
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
    for key in METRIC_KEYS:
        row[key] = _num(metrics.get(key))
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
        if r["kind"] != "finetune":
            continue
        parent = by_id.get(r["parent"] or "")
        if parent is None:
            r["pt_status"], r["precision"], r["pt_gpu_hours"] = "absent", math.nan, math.nan
            continue
        r["pt_status"], r["precision"], r["pt_gpu_hours"] = (
            parent["status"],
            parent["precision"],
            parent["gpu_hours"],
        )
        r["bf16"] = bool(r["bf16"] or parent["bf16"])  # a bf16 pretrain marks its finetunes too
        if r["status"] == "pending" and parent["status"] in ("collapsed", "failed", "running"):
            r["reason"] = f"pretrain {parent['status']}"


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
    reader = StoreReader(storage)
    plans = read_plans(reader)
    raw = read_raw_stages(reader, plans)
    configs = {sid: _stage_config(e)[0] for sid, e in raw.items() if sid.startswith("pretrain-")}
    rows = [_row(sid, e, configs) for sid, e in sorted(raw.items())]
    _join_parents(rows)
    log.info(
        "collected %d stages (%d finished) from %s and %d studies",
        len(rows),
        sum(r["status"] in ("done", "collapsed", "skipped") for r in rows),
        storage,
        len(plans),
    )
    return stages_frame(rows)
