"""Figures 3–6 of the paper from the stage table (HRNet-W32; paper §4.3–§4.5).

Figure 3: AP at each OKS threshold 0.50..0.95, scratch vs ImageNet vs HSJP. Figure 4: error breakdown
(good / jitter / inversion / swap / miss, Ronchi & Perona) per method, stacked bars. Figure 5: AP
when freezing backbone stages 0–2 / 0–3 / 0–4 (and "none" when run). Figure 6: AP against the share of
keypoint labels (10–90 %, plus 100 %), HSJP with scratch / ImageNet references when run.

Each `figureN(stages, reported)` returns `(Figure, DataFrame)`: the figure (built without pyplot, so
no global state) and the plotted series as data. The paper publishes no values for these figures
(reported.yaml `figures`), so nothing is drawn from the paper; each figure carries the paper's
qualitative claim as a caption instead.
"""

from __future__ import annotations

import logging
import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.store.format import StageState
from reports.cells import ANY, Cell, aggregate, method_group, protocol_finetunes, references
from reports.intervals import Bootstraps, cell_runs
from reports.tables import load_reported

log = logging.getLogger(__name__)

METHODS = ("scratch", "imagenet", "hsjp")
METHOD_LABELS = {"scratch": "scratch", "imagenet": "ImageNet", "hsjp": "HSJP"}
METHOD_COLORS = {"scratch": "tab:gray", "imagenet": "tab:blue", "hsjp": "tab:red"}
ERROR_TYPES = ("good", "jitter", "inversion", "swap", "miss")  # Ronchi & Perona, ICCV'17 (paper [37])
OKS_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # COCOeval iouThrs 0.50:0.05:0.95
PAPER_FREEZE = (2, 3, 4)  # paper Fig. 5: stages 0–2, 0–3, 0–4


def _figure(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    return fig, ax


def _caption(fig: Figure, reported: dict, key: str, extra: str = "") -> None:
    """The paper's claim for this figure (the paper gives no values to draw)."""
    claim = (reported.get("figures") or {}).get(key, "")
    if isinstance(claim, dict):
        claim = claim.get("claim", "")
    text = f"Paper (no values published): {claim}" + (f"\n{extra}" if extra else "")
    fig.get_layout_engine().set(h_pad=0.1)
    fig.supxlabel("\n".join(textwrap.wrap(text, 110)), fontsize=6.5, ha="left", x=0.01)


def _empty_note(ax, missing: list[str]) -> None:
    if missing:
        ax.text(
            0.99,
            0.02,
            "not run: " + ", ".join(missing),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="dimgray",
        )


def _done_rows(group: pd.DataFrame) -> pd.DataFrame:
    return group[group["status"] == StageState.DONE]


# -------------------------------------------------------------------------------------- Figure 3
def _interval_err(boots: Bootstraps | None, group: pd.DataFrame, column: str, point: float) -> tuple:
    """(lo, hi, [[below], [above]] in %) of a cell's 95 % interval, or NaNs / None without one."""
    if boots is None:
        return math.nan, math.nan, None
    iv = boots.cell(cell_runs(group["stage_id"], group), column)
    if not iv.ok:
        return math.nan, math.nan, None
    lo, hi = 100 * iv.lo, 100 * iv.hi
    return lo, hi, [[max(0.0, point - lo)], [max(0.0, hi - point)]]


def figure3(
    stages: pd.DataFrame, reported: dict | None = None, boots: Bootstraps | None = None
) -> tuple[Figure, pd.DataFrame]:
    """AP (%) at each OKS threshold per method; mean over seeds, band = ± std, error bars = 95 %
    bootstrap interval (when the runs stored their per-image outcome)."""
    reported = reported or load_reported()
    refs = references(stages, "hrnet_w32")
    fig, ax = _figure("Fig. 3: AP at each OKS threshold (HRNet-W32)")
    rows, missing = [], []
    for method in METHODS:
        group, _ = method_group(stages, refs, method)
        per_oks = [r for r in _done_rows(group)["ap_per_oks"] if isinstance(r, dict)]
        if not per_oks:
            missing.append(METHOD_LABELS[method])
            continue
        values = np.array(
            [[100 * float(d.get(f"{t:.2f}", math.nan)) for t in OKS_THRESHOLDS] for d in per_oks]
        )
        mean, std = (
            np.nanmean(values, axis=0),
            (
                np.nanstd(values, axis=0, ddof=1)
                if len(values) > 1
                else np.full(len(OKS_THRESHOLDS), math.nan)
            ),
        )
        bounds = [_interval_err(boots, group, f"AP@{t:.2f}", m)[:2] for t, m in zip(OKS_THRESHOLDS, mean)]
        lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
        has_ci = bool(np.isfinite(lo).all())
        ax.plot(OKS_THRESHOLDS, mean, marker="o", label=METHOD_LABELS[method], color=METHOD_COLORS[method])
        if has_ci:
            ax.errorbar(
                OKS_THRESHOLDS, mean, yerr=np.clip([mean - lo, hi - mean], 0, None), fmt="none", capsize=2,
                color=METHOD_COLORS[method],
            )  # fmt: skip
        if len(values) > 1:
            ax.fill_between(OKS_THRESHOLDS, mean - std, mean + std, alpha=0.2, color=METHOD_COLORS[method])
        rows += [
            {"method": method, "oks": t, "ap": m, "ap_std": s, "n": len(values), "ap_lo": a, "ap_hi": b}
            for t, m, s, a, b in zip(OKS_THRESHOLDS, mean, std, lo, hi)
        ]
    ax.set_xlabel("OKS threshold")
    ax.set_ylabel("AP (%)")
    ax.set_xticks(OKS_THRESHOLDS)
    if rows:
        ax.legend(fontsize=8)
    _empty_note(ax, missing)
    _caption(
        fig, reported, "fig3", "Error bars: 95 % interval, paired bootstrap over images." if boots else ""
    )
    return fig, pd.DataFrame(rows, columns=["method", "oks", "ap", "ap_std", "n", "ap_lo", "ap_hi"])


# -------------------------------------------------------------------------------------- Figure 4
def figure4(
    stages: pd.DataFrame, reported: dict | None = None, boots: Bootstraps | None = None
) -> tuple[Figure, pd.DataFrame]:
    """Stacked bars of the overall error shares (%) per method; mean over seeds."""
    reported = reported or load_reported()
    refs = references(stages, "hrnet_w32")
    fig, ax = _figure("Fig. 4: error breakdown (HRNet-W32)")
    shares = {}
    for method in METHODS:
        group, _ = method_group(stages, refs, method)
        overall = [e.get("overall") for e in _done_rows(group)["errors"] if isinstance(e, dict)]
        overall = [o for o in overall if isinstance(o, dict)]
        means = {
            k: 100 * float(np.mean([o.get(k, math.nan) for o in overall])) if overall else math.nan
            for k in ERROR_TYPES
        }
        shares[method] = (means, len(overall))
    x = np.arange(len(METHODS))
    bottom = np.zeros(len(METHODS))
    rows = []
    for kind in ERROR_TYPES:
        heights = np.array([shares[m][0][kind] if shares[m][1] else 0.0 for m in METHODS])
        ax.bar(x, heights, bottom=bottom, label=kind, width=0.6)
        bottom += heights
        rows += [
            {"method": m, "error": kind, "share": shares[m][0][kind], "n": shares[m][1]}
            for m in METHODS
            if shares[m][1]
        ]
    for i, m in enumerate(METHODS):
        if not shares[m][1]:
            ax.text(i, 2, "not run", ha="center", va="bottom", fontsize=8, color="dimgray")
    ax.set_xticks(x, [METHOD_LABELS[m] for m in METHODS])
    ax.set_ylabel("share of predictions (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _caption(fig, reported, "fig4")
    return fig, pd.DataFrame(rows, columns=["method", "error", "share", "n"])


# -------------------------------------------------------------------------------------- Figure 5
def _freeze_label(freeze: int | None) -> str:
    return "none" if freeze is None else f"0–{freeze}"


def figure5(
    stages: pd.DataFrame, reported: dict | None = None, boots: Bootstraps | None = None
) -> tuple[Figure, pd.DataFrame]:
    """AP (%) of HSJP-pretrained HRNet-W32 when freezing stages 0..k during finetuning; error bars: the
    95 % bootstrap interval when available, else ± std over seeds."""
    reported = reported or load_reported()
    refs = references(stages, "hrnet_w32")
    hsjp = protocol_finetunes(stages, refs, method="hsjp", freeze=ANY)
    measured = {int(f) for f in hsjp["freeze"] if f is not None}
    freezes = ([None] if (hsjp["freeze"].map(lambda f: f is None)).any() else []) + sorted(
        set(PAPER_FREEZE) | measured
    )
    fig, ax = _figure("Fig. 5: frozen backbone stages during finetuning (HRNet-W32, HSJP)")
    rows = []
    for i, freeze in enumerate(freezes):
        group, others = method_group(stages, refs, "hsjp", freeze=freeze)
        cell: Cell = aggregate(group, "AP", others)
        height = 100 * cell.mean if cell.values else 0.0
        lo, hi, ci_err = (
            _interval_err(boots, group, "AP", height) if cell.values else (math.nan, math.nan, None)
        )
        ax.bar(
            i,
            height,
            yerr=ci_err if ci_err is not None else (100 * cell.std if cell.n > 1 else None),
            capsize=3,
            width=0.6,
            color="tab:gray" if freeze is None else "tab:red",
        )
        if not cell.values:  # x in data, y in axes coordinates: stays inside whatever the y range
            ax.text(
                i,
                0.02,
                cell.status,
                ha="center",
                va="bottom",
                fontsize=8,
                color="dimgray",
                transform=ax.get_xaxis_transform(),
            )
        rows.append(
            {
                "freeze": freeze,
                "label": _freeze_label(freeze),
                "ap": 100 * cell.mean,
                "ap_std": 100 * cell.std,
                "n": cell.n,
                "status": cell.status,
                "settings": cell.settings,
                "ap_lo": lo,
                "ap_hi": hi,
            }
        )
    ax.set_xticks(range(len(freezes)), [_freeze_label(f) for f in freezes])
    ax.set_ylim(
        0,
        max(
            1.0,
            1.15
            * max(
                (
                    max(
                        r["ap"] + (r["ap_std"] if r["n"] > 1 else 0),
                        r["ap_hi"] if r["ap_hi"] == r["ap_hi"] else 0,
                    )
                    for r in rows
                    if r["n"]
                ),
                default=0.0,
            ),
        ),
    )
    ax.set_xlabel("frozen backbone stages")
    ax.set_ylabel("AP (%)")
    _caption(
        fig,
        reported,
        "fig5",
        "Error bars: 95 % interval (paired bootstrap over images) where stored, else ± std over seeds.",
    )
    data = pd.DataFrame(
        rows, columns=["freeze", "label", "ap", "ap_std", "n", "status", "settings", "ap_lo", "ap_hi"]
    )
    data["freeze"] = pd.Series([r["freeze"] for r in rows], index=data.index, dtype=object)  # ints, None
    return fig, data


# -------------------------------------------------------------------------------------- Figure 6
def figure6(
    stages: pd.DataFrame, reported: dict | None = None, boots: Bootstraps | None = None
) -> tuple[Figure, pd.DataFrame]:
    """AP (%) against the share of training labels (%), one line per method that has runs; error bars:
    the 95 % bootstrap interval when available, else ± std over seeds."""
    reported = reported or load_reported()
    refs = references(stages, "hrnet_w32")
    fig, ax = _figure("Fig. 6: finetuning on a share of the keypoint labels (HRNet-W32)")
    rows, missing = [], []
    for method in ("hsjp", "scratch", "imagenet"):
        fts = protocol_finetunes(stages, refs, method=method, label_fraction=ANY)
        fractions = sorted({float(f) for f in fts["label_fraction"] if f == f})
        points = []
        for frac in fractions:
            group, others = method_group(stages, refs, method, label_fraction=frac)
            cell = aggregate(group, "AP", others)
            if cell.values:
                lo, hi, _ = _interval_err(boots, group, "AP", 100 * cell.mean)
                points.append((100 * frac, 100 * cell.mean, 100 * cell.std, cell.n, lo, hi))
        if not points:
            missing.append(METHOD_LABELS[method])
            continue
        x, y, s, n, lo, hi = map(np.array, zip(*points))
        seed_err = np.where(n > 1, s, 0.0)
        has_ci = np.isfinite(lo)
        ax.errorbar(
            x,
            y,
            yerr=[
                np.where(has_ci, np.clip(y - lo, 0, None), seed_err),
                np.where(has_ci, np.clip(hi - y, 0, None), seed_err),
            ],
            marker="o",
            capsize=3,
            label=METHOD_LABELS[method],
            color=METHOD_COLORS[method],
            linestyle="-" if method == "hsjp" else "--",
        )
        rows += [
            {
                "method": method,
                "label_fraction": xi,
                "ap": yi,
                "ap_std": si,
                "n": int(ni),
                "ap_lo": a,
                "ap_hi": b,
            }
            for xi, yi, si, ni, a, b in zip(x, y, s, n, lo, hi)
        ]
    ax.set_xlabel("keypoint labels used (%)")
    ax.set_ylabel("AP (%)")
    ax.set_xticks([10 * i for i in range(1, 11)])
    ax.set_xlim(0, 105)
    if rows:
        ax.legend(fontsize=8)
    _empty_note(ax, missing)
    _caption(
        fig,
        reported,
        "fig6",
        "Error bars: 95 % interval (paired bootstrap over images) where stored, else ± std over seeds.",
    )
    return fig, pd.DataFrame(
        rows, columns=["method", "label_fraction", "ap", "ap_std", "n", "ap_lo", "ap_hi"]
    )
