"""Learning curves from each stage's `metrics.jsonl` (one row per trained epoch; a re-trained epoch after
a resume keeps its last row), per study and per stage.

`study_curves` draws, for one study, pretrain loss and HSJP precision P against the epoch (every
pretrain of the study, labelled by its setting) and finetune loss and AP against the epoch (every
finetune; AP where it was evaluated). `stage_curve` draws one stage's loss and its metric. Both build
figures without pyplot and return the plotted series as data (as `figures` does).

A finetune's per-epoch AP is its model-selection evaluation (GT boxes by default,
`finetune.select_boxes`); the tables' AP is the one final evaluation of the selected weights (the
detection boxes). The AP panels' titles name the boxes the rows record (`eval_boxes`).
"""

from __future__ import annotations

import logging
import math

import pandas as pd
from matplotlib.figure import Figure

from orchestrator.store.format import StageKind
from orchestrator.store.store import Store
from reports.cells import fmt_lr

log = logging.getLogger(__name__)

SERIES = ("epoch", "loss", "lr", "seconds", "img_per_s", "precision", "AP")
LABELS = ("eval_boxes",)  # per-epoch text columns: the boxes an AP row was evaluated on ("gt" / "detections")
BOX_NAMES = {"gt": "GT boxes", "detections": "detection boxes"}


def read_epochs(store: Store, stage_id: str) -> pd.DataFrame:
    """The per-epoch rows of a stage (columns SERIES that exist), sorted by epoch; the last row of an
    epoch wins (a resumed stage re-trains the epochs after its last checkpoint)."""
    rows: dict[int, dict] = {}
    for row in store.read_metrics(stage_id):
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows[row["epoch"]] = {k: row.get(k) for k in (*SERIES, *LABELS)}
    frame = pd.DataFrame([rows[e] for e in sorted(rows)], columns=[*SERIES, *LABELS])
    for col in SERIES[1:]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def ap_title(frames: list[pd.DataFrame], base: str = "AP (%)") -> str:
    """`base` with the boxes the frames' AP rows were evaluated on, e.g. "AP (%), GT boxes"."""
    boxes = sorted({str(b) for f in frames if "eval_boxes" in f for b in f["eval_boxes"].dropna()})
    names = [BOX_NAMES.get(b, b) for b in boxes]
    return f"{base}, {' / '.join(names)}" if names else base


def setting_label(r: pd.Series) -> str:
    """A short label of a stage's setting (legend entries)."""
    if r["method"] == "hsjp":
        label = f"HSJP N={r['n']}"
        if r.get("concat_original"):
            label += " +orig"
        label += f" lr {fmt_lr(r['lr'])} {r['pt_epochs']}ep"
    else:
        label = {"scratch": "scratch", "imagenet": "ImageNet"}.get(r["method"], str(r["method"]))
    if r["kind"] == StageKind.FINETUNE:
        if r.get("freeze") is not None and not (isinstance(r["freeze"], float) and math.isnan(r["freeze"])):
            label += f", freeze 0–{int(r['freeze'])}"
        if r.get("label_fraction") not in (None, 1.0) and r["label_fraction"] == r["label_fraction"]:
            label += f", {100 * r['label_fraction']:.0f}% labels"
        seed = r.get("ft_seed")
    else:
        seed = r.get("pt_seed")
    if seed is not None and seed == seed:
        label += f", seed {seed}"
    return label


def _studies_of(r: pd.Series) -> list[str]:
    return [s for s in str(r.get("studies") or "").split(";") if s]


def study_curves(stages: pd.DataFrame, store: Store, study: str) -> tuple[Figure, pd.DataFrame]:
    """2 × 2 figure: pretrain loss, pretrain P, finetune loss, finetune AP (%) against the epoch."""
    mine = stages[[study in _studies_of(r) for _, r in stages.iterrows()]]
    fig = Figure(figsize=(10, 7), dpi=100, layout="constrained")
    axes = fig.subplots(2, 2)
    fig.suptitle(f"Learning curves of study {study}", fontsize=11)
    panels = (
        (axes[0][0], "pretrain", "loss", "pretrain loss (eq. 2)", 1.0),
        (axes[0][1], "pretrain", "precision", "HSJP precision P", 1.0),
        (axes[1][0], "finetune", "loss", "finetune loss (joints MSE)", 1.0),
        (axes[1][1], "finetune", "AP", "AP (%)", 100.0),
    )
    series = []
    epochs = {sid: read_epochs(store, sid) for sid in mine["stage_id"]}
    for ax, kind, col, title, scale in panels:
        drawn = 0
        for _, r in mine[mine["kind"] == kind].iterrows():
            rows = epochs[r["stage_id"]].dropna(subset=[col]) if col in epochs[r["stage_id"]] else None
            if rows is None or rows.empty:
                continue
            label = setting_label(r)
            ax.plot(
                rows["epoch"], scale * rows[col], marker="o" if len(rows) < 4 else None, ms=3, label=label
            )
            drawn += 1
            series += [
                {"study": study, "stage_id": r["stage_id"], "kind": kind, "setting": label, "series": col,
                 "epoch": int(e), "value": float(v) * scale}
                for e, v in zip(rows["epoch"], rows[col])
            ]  # fmt: skip
        if col == "AP":
            title = ap_title([epochs[sid] for sid in mine[mine["kind"] == kind]["stage_id"]], title)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if col == "loss" and drawn:
            ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=6)
        else:
            ax.text(
                0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes, color="gray"
            )
    columns = ["study", "stage_id", "kind", "setting", "series", "epoch", "value"]
    return fig, pd.DataFrame(series, columns=columns)


def stage_curve(rows: pd.DataFrame, kind: str, title: str) -> Figure:
    """One stage: loss (log scale) and its metric (P, or AP in %) against the epoch."""
    fig = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    fig.suptitle(title, fontsize=9)
    metric, scale, name = (
        ("precision", 1.0, "HSJP precision P") if kind == StageKind.PRETRAIN else ("AP", 100.0, "AP (%)")
    )
    if not rows.empty and rows["loss"].notna().any():
        left.plot(rows["epoch"], rows["loss"], marker=".")
        left.set_yscale("log")
    left.set_title("loss", fontsize=8)
    left.set_xlabel("epoch")
    got = rows.dropna(subset=[metric]) if metric in rows else rows.iloc[:0]
    if not got.empty:
        right.plot(got["epoch"], scale * got[metric], marker="o", color="tab:red")
    else:
        right.text(
            0.5, 0.5, "not evaluated yet", ha="center", va="center", transform=right.transAxes, color="gray"
        )
    right.set_title(ap_title([rows], name) if metric == "AP" else name, fontsize=8)
    right.set_xlabel("epoch")
    return fig
