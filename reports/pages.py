"""A page per stage (`<out>/stages/<stage id>.html` + its curve `<stage id>.png`): what it is (settings,
config, provenance), how it went (status, curves, per-epoch timings, GPU-hours), where its outputs are
(weights, TensorBoard events, per-image outcome, AP interval) and what it fed (the finetunes a
pretrain initialised, a finetune's pretrain, the report's table rows that used it). Linked from the
table rows' sources and from index.html.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path

import pandas as pd

from orchestrator.store.format import StageKind, StageState
from orchestrator.store.store import Store
from reports.curves import read_epochs, setting_label, stage_curve
from reports.intervals import Bootstraps, cell_runs

log = logging.getLogger(__name__)

PAGES_DIR = "stages"
STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
    "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "pre{background:#f6f6f6;padding:.5em;font-size:11px;overflow:auto}img{max-width:100%}</style>"
)


def page_name(stage_id: str) -> str:
    return f"{PAGES_DIR}/{stage_id}.html"


def stage_link(stage_id: str, prefix: str = "") -> str:
    """An HTML link to a stage's page (`prefix`: path from the linking page to the report root)."""
    esc = html.escape(stage_id)
    return f"<a href='{prefix}{page_name(stage_id)}'>{esc}</a>"


def used_by(tables: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """{stage id: ['table1 row 3: HRNet HRNet-W32 hsjp_n6 val2017', ...]} from the tables' `stages`."""
    out: dict[str, list[str]] = {}
    for name, table in tables.items():
        labels = table.attrs.get("labels", [])
        for i, (_, row) in enumerate(table.iterrows()):
            text = " ".join(str(row[c]) for c in labels if c in row)
            for sid in str(row.get("stages") or "").split():
                out.setdefault(sid, []).append(
                    f"<a href='../index.html#{name}'>{name}</a> row {i + 1}: {html.escape(text)}"
                )
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _kv_table(items: list[tuple[str, str]]) -> str:
    return (
        "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in items) + "</table>"
    )


def write_stage_pages(
    stages: pd.DataFrame,
    store: Store,
    out: Path,
    *,
    storage: str,
    tables: dict[str, pd.DataFrame],
    boots: Bootstraps | None = None,
) -> list[Path]:
    """One page (+ curve PNG) per stage of the store or its plans; returns the files."""
    folder = out / PAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    users = used_by(tables)
    children: dict[str, list[str]] = {}
    for _, r in stages.iterrows():
        if r["kind"] == StageKind.FINETUNE and isinstance(r["parent"], str):
            children.setdefault(r["parent"], []).append(r["stage_id"])
    written = []
    for _, r in stages.iterrows():  # planned-only stages too: table rows link to them
        sid = r["stage_id"]
        epochs = read_epochs(store, sid)
        fig = stage_curve(epochs, r["kind"], f"{sid}: {setting_label(r)}")
        fig.savefig(folder / f"{sid}.png", dpi=110)
        written.append(folder / f"{sid}.png")
        path = folder / f"{sid}.html"
        path.write_text(
            _page(r, epochs, store, storage, users.get(sid, []), children.get(sid, []), boots, stages)
        )
        written.append(path)
    return written


def _page(
    r: pd.Series,
    epochs: pd.DataFrame,
    store: Store,
    storage: str,
    used: list[str],
    fed: list[str],
    boots: Bootstraps | None,
    stages: pd.DataFrame,
) -> str:
    sid, esc = r["stage_id"], html.escape
    result = store.read_result(sid, consequence="the stage counts as not finished") or {}
    record = store.read_stage_record(sid)  # None: only planned
    config = record["config"] if record is not None else {}
    root = storage.rstrip("/")
    weights = (
        f"<code>{esc(root)}/stages/{esc(sid)}/weights.pt</code>"
        if result.get("has_weights")
        else "none" + (" (collapsed)" if r["status"] == StageState.COLLAPSED else "")
    )
    outputs = [
        ("weights", weights),
        ("TensorBoard", f"<code>tensorboard --logdir {esc(root)}/stages/{esc(sid)}/tb</code>"),
        ("metrics.jsonl", f"<code>{esc(root)}/stages/{esc(sid)}/metrics.jsonl</code> ({len(epochs)} epochs)"),
    ]
    if r["kind"] == StageKind.FINETUNE:
        outcome = boots.outcome(sid) if boots is not None else None
        iv = boots.cell(cell_runs([sid], stages)) if outcome is not None else None
        ap = r["AP"]
        interval = f" {iv.text(100, 2)} (95 %, {esc(iv.how)})" if iv is not None and iv.ok else ""
        boxes = f" ({esc(r['eval_boxes'])} boxes)" if isinstance(r.get("eval_boxes"), str) else ""
        outputs.insert(1, ("AP", f"{100 * ap:.2f}{interval}{boxes}" if ap == ap else "—"))
        sel = r.get("select_AP")
        if isinstance(sel, float) and sel == sel:  # the per-epoch model selection's AP of the same weights
            how = f" ({esc(r['select_boxes'])} boxes)" if isinstance(r.get("select_boxes"), str) else ""
            outputs.insert(2, ("model selection AP", f"{100 * sel:.2f}{how}"))
        outputs.append(
            (
                "per-image outcome",
                f"<code>{esc(root)}/stages/{esc(sid)}/per_image.npz</code> ({len(outcome.image_ids)} images, "
                f"{len(outcome.scores)} detections)"
                if outcome is not None
                else "not stored",
            )
        )
    seconds = epochs["seconds"].dropna() if "seconds" in epochs else pd.Series(dtype=float)
    speed = epochs["img_per_s"].dropna() if "img_per_s" in epochs else pd.Series(dtype=float)
    timing = [
        ("wall time of the stage", f"{_fmt(r['wall_seconds'], 1)} s"),
        (
            "training time (sum of epochs)",
            f"{seconds.sum():.1f} s over {len(seconds)} epochs" if len(seconds) else "—",
        ),
        ("mean epoch", f"{seconds.mean():.2f} s" if len(seconds) else "—"),
        ("throughput", f"{speed.mean():.1f} img/s (mean over epochs)" if len(speed) else "—"),
        ("GPU-hours", _fmt(r["gpu_hours"], 3)),
        ("device-hours", _fmt(r["device_hours"], 3)),
        ("finished", _fmt(result.get("finished_at"))),
        ("resumed from epoch", _fmt(result.get("resumed_from"))),
    ]
    parent = r["parent"] if isinstance(r["parent"], str) else None
    links = []
    if parent:
        links.append(("initialised from", stage_link(parent, "../")))
    if fed:
        links.append(("initialised", "<br>".join(stage_link(c, "../") for c in fed)))
    links.append(("used in the report", "<br>".join(used) or "no table cell"))
    links.append(("studies / trials", esc(f"{r['studies'] or '—'} / {r['trials'] or '—'}")))
    what = [
        ("kind", esc(r["kind"])),
        ("status", esc(r["status"] + (f" ({r['reason']})" if r["reason"] else ""))),
        ("setting", esc(setting_label(r))),
        ("backbone", esc(str(r["backbone"]))),
        ("data", esc(str(r["setup"] or "—"))),
    ]
    if r["kind"] == StageKind.PRETRAIN:
        what.append(("HSJP precision P", _fmt(r["precision"], 4)))
    rows_html = (
        epochs.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}", na_rep="")
        if len(epochs)
        else "<p>no epochs recorded</p>"
    )
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if k not in ("loss_curve", "errors")}
    return "\n".join(
        [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(sid)}</title>{STYLE}</head><body>",
            f"<p><a href='../index.html'>report</a></p><h1>{esc(sid)}</h1>",
            _kv_table(what),
            "<h2>Curves</h2>",
            f"<p><img src='{esc(sid)}.png' alt='curves of {esc(sid)}'></p>",
            "<h2>Outputs</h2>",
            _kv_table(outputs),
            "<h2>Timings and cost</h2>",
            _kv_table(timing),
            "<h2>What it fed</h2>",
            _kv_table(links),
            "<h2>Per epoch</h2>",
            rows_html,
            "<h2>Final metrics</h2>",
            f"<pre>{esc(json.dumps(metrics, indent=2, sort_keys=True, default=str))}</pre>",
            "<h2>Config</h2>",
            f"<pre>{esc(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>",
            "<h2>Provenance</h2>",
            f"<pre>{esc(json.dumps(result.get('provenance') or {}, indent=2, sort_keys=True, default=str))}</pre>",
            "</body></html>",
        ]
    )
