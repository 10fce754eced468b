"""Match the paper's table cells to what a study ran, and aggregate seeds (docs/design.md §6).

A smoke study runs tiny epochs, yet must still fill the tables, so a cell is matched by the
classification of each run relative to the store's *reference* settings, computed per backbone:
N (6 when run, else the most common), pretrain lr (1e-3 when run, else the most common), pretrain
epochs (240 when run, else the most common HSJP pretrain epochs) and finetune epochs (the official
schedule when run, else the most common among pretrained finetunes). Runs that agree on everything
but the seeds form a group; a cell takes one group (several qualify → the preferred one, the others
are named in the cell's notes) and reports mean ± std over its seeds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchestrator.store.format import FINISHED_STATES, StageKind, StageState
from reports.collect import OFFICIAL_FINETUNE_EPOCHS

PAPER_N, PAPER_LR, PAPER_PT_EPOCHS = 6, 1e-3, 240  # paper §3.4, §5.2
# Runs in one group differ only in their seeds: `variant` hashes every other setting (collect.py)
PRETRAIN_KEY = ("backbone", "method", "n", "lr", "pt_epochs", "concat_original", "variant")
FINETUNE_KEY = (*PRETRAIN_KEY, "freeze", "label_fraction", "ft_epochs", "split")


@dataclass(frozen=True)
class References:
    """The reference settings of one backbone in this store (what `reference` means in the tables)."""

    backbone: str
    n: int | None
    lr: float | None
    pt_epochs: int | None
    ft_epochs: int | None


def _most_common(values: Sequence, prefer, distance: Callable[[float], float]):
    """`prefer` when present, else the most common value (ties: the one nearest to `prefer`)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    if any(_same(v, prefer) for v in values):
        return prefer
    counts = Counter(values)
    top = max(counts.values())
    return min((v for v, c in counts.items() if c == top), key=distance)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        try:
            return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=0.0))
        except (TypeError, ValueError):
            return False
    return a == b


def references(stages: pd.DataFrame, backbone: str) -> References:
    """Reference settings of `backbone` (see the module docstring)."""
    mine = stages[stages["backbone"] == backbone]
    hsjp = mine[(mine["kind"] == StageKind.PRETRAIN) & (mine["method"] == "hsjp")]
    ft = mine[mine["kind"] == StageKind.FINETUNE]
    pretrained_ft = ft[ft["method"].isin(["hsjp", "imagenet"])]
    official = OFFICIAL_FINETUNE_EPOCHS.get(backbone)
    return References(
        backbone=backbone,
        n=_most_common(list(hsjp["n"]), PAPER_N, lambda v: abs(v - PAPER_N)),
        lr=_most_common(list(hsjp["lr"]), PAPER_LR, lambda v: abs(math.log(v / PAPER_LR))),
        pt_epochs=_most_common(
            list(hsjp["pt_epochs"]), PAPER_PT_EPOCHS, lambda v: abs(math.log(v / PAPER_PT_EPOCHS))
        ),
        ft_epochs=_most_common(
            list(pretrained_ft["ft_epochs"]) or list(ft["ft_epochs"]),
            official,
            lambda v: abs(math.log(v / (official or v))),
        ),
    )


ANY = object()
"""A `where` value that matches anything (drops a condition of a protocol)."""


def where(frame: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows whose columns equal the given values (None matches a missing value; floats by isclose;
    `ANY` matches everything)."""
    mask = np.ones(len(frame), dtype=bool)
    for col, value in equal.items():
        if value is not ANY:
            mask &= np.array([_same(_clean(v), value) for v in frame[col].tolist()], dtype=bool)
    return frame[mask]


def _clean(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def pick_group(
    rows: pd.DataFrame, columns: Sequence[str], prefer: Sequence[dict] = ()
) -> tuple[pd.DataFrame, list[str]]:
    """The preferred group of `rows` (grouped by `columns`, i.e. all but seeds) and labels of the others.

    Order: first preference (a dict of column values) matched, then the number of the other
    preferences matched, then the most finished runs, then the most recent result. Rows whose
    `variant` is unknown (unfinished stages with no data config on record) join the chosen group when
    everything else agrees. Each other group's label says which settings differ from the chosen one.
    """
    if rows.empty:
        return rows, []
    keys = pd.Series(
        [tuple(_clean(v) for v in vals) for vals in zip(*(rows[c].tolist() for c in columns))],
        index=rows.index,
        dtype=object,
    )
    at = list(columns).index("variant") if "variant" in columns else None
    unknown = keys.map(lambda k: at is not None and k[at] == "")
    pool = keys[~unknown] if (~unknown).any() else keys
    groups = {k: rows.loc[pool.index[pool.map(lambda x, k=k: x == k)]] for k in dict.fromkeys(pool)}

    def score(item):
        _, g = item
        hits = [len(where(g, **p)) == len(g) for p in prefer]
        finished = int(g["status"].isin(FINISHED_STATES).sum())
        latest = max((str(x) for x in g["finished_at"] if isinstance(x, str)), default="")
        return (hits[0] if hits else False, sum(hits[1:]), finished, latest)

    ranked = sorted(groups.items(), key=score, reverse=True)
    best_key, best = ranked[0]
    others = [f"{describe(g)} [{differences(best, g)}]" for _, g in ranked[1:]]
    if at is not None and (~unknown).any():

        def strip(k: tuple) -> tuple:
            return k[:at] + k[at + 1 :]

        joins = keys.map(lambda k: k[at] == "" and strip(k) == strip(best_key))
        best = pd.concat([best, rows[joins]])
        rest = rows[unknown & ~joins]
        if not rest.empty:
            others.append(describe(rest))
    return best, others


def differences(shown: pd.DataFrame, other: pd.DataFrame, limit: int = 6) -> str:
    """The settings in which `other`'s first run differs from `shown`'s first run."""
    a, b = shown["settings_flat"].iloc[0] or {}, other["settings_flat"].iloc[0] or {}
    diff = [
        f"{k}={b.get(k)!r} (shown: {a.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    more = f", +{len(diff) - limit} more" if len(diff) > limit else ""
    return "differs in " + ", ".join(diff[:limit]) + more if diff else "same settings"


# ---------------------------------------------------------------------------------------- labels
def fmt_lr(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:.0e}".replace("e-0", "e-")


def describe(group: pd.DataFrame) -> str:
    """The actual settings a group of runs came from, in words."""
    r = group.iloc[0]
    parts = [str(r["backbone"])]
    if r["method"] == "hsjp":
        concat = "with original" if r["concat_original"] else "shuffled only"
        parts.append(f"HSJP N={r['n']} lr={fmt_lr(r['lr'])} {r['pt_epochs']} pretrain ep, {concat}")
    else:
        parts.append(str(r["method"]))
    if r["kind"] == StageKind.FINETUNE:
        freeze = "none" if _clean(r["freeze"]) is None else f"0–{int(r['freeze'])}"
        parts.append(
            f"finetune {r['ft_epochs']} ep, freeze {freeze}, labels {100 * r['label_fraction']:.0f}%, "
            f"{r['split']}"
        )
    for col, name in (("pt_seed", "pretrain seeds"), ("ft_seed", "finetune seeds")):
        seeds = sorted({int(s) for s in group[col] if _clean(s) is not None})
        if seeds:
            parts.append(f"{name} " + ",".join(map(str, seeds)))
    parts.append(f"data {r['setup'] or 'not on record yet'}")
    return "; ".join(parts)


def protocol_finetunes(stages: pd.DataFrame, refs: References, **equal) -> pd.DataFrame:
    """Finetunes of `refs.backbone` at the protocol of Tables 1–3 unless `equal` overrides it: all layers
    trained (freeze None), all labels, the reference finetune epochs, evaluated on val2017."""
    base = {
        "kind": StageKind.FINETUNE,
        "backbone": refs.backbone,
        "freeze": None,
        "label_fraction": 1.0,
        "ft_epochs": refs.ft_epochs,
        "split": "val2017",
    }
    return where(stages, **{**base, **equal})


def method_group(
    stages: pd.DataFrame, refs: References, method: str, **equal
) -> tuple[pd.DataFrame, list[str]]:
    """The runs standing for one pretraining method (Table 1, Figs. 3–6): HSJP with the shuffled crop
    only, preferring N = the reference N (6 when run), then the reference pretrain lr and epochs."""
    fts = protocol_finetunes(stages, refs, method=method, **equal)
    prefer: list[dict] = []
    if method == "hsjp":
        fts = where(fts, concat_original=False)
        prefer = [{"n": refs.n}, {"lr": refs.lr}, {"pt_epochs": refs.pt_epochs}]
    return pick_group(fts, FINETUNE_KEY, prefer)


# ------------------------------------------------------------------------------------------ cells
@dataclass
class Cell:
    """One measured table cell: the values of its runs and why any are missing."""

    status: str = "not run"
    """'done' (≥ 1 value), else 'collapsed' | 'not available' (a finetune of a collapsed pretrain, as
    the paper's Table 2 says) | 'running' | 'failed' | 'skipped' | 'not run' (no stage, or only planned
    ones) | a test-dev cell's 'submit <file>'."""
    values: list[float] = field(default_factory=list)
    bf16: bool = False
    """Some run of the cell (or its pretrain) trained in bf16 (`runtime.amp`); the text says so."""
    stage_ids: list[str] = field(default_factory=list)
    settings: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (ddof 1); NaN with fewer than two."""
        return float(np.std(self.values, ddof=1)) if len(self.values) >= 2 else math.nan

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if not self.values:
            return self.status
        out = f"{self.mean * scale:.{digits}f}"
        if self.n >= 2:
            out += f" ± {self.std * scale:.{digits}f} (n={self.n})"
        return out + (" [bf16]" if self.bf16 else "")

    def spread(self, paper: float | None, scale: float = 1.0) -> str:
        """Whether the paper's value lies inside mean ± std (seeds ≥ 2)."""
        if paper is None or self.n < 2 or math.isnan(self.std):
            return ""
        inside = abs(paper - self.mean * scale) <= self.std * scale + 1e-9  # float noise of % conversion
        return "within seed spread" if inside else "outside seed spread"


def _blocked(r: pd.Series) -> str | None:
    """Why a run has no value: 'collapsed' | 'running' | 'failed' | None (not run / has a value)."""
    status, pt = r["status"], r.get("pt_status")
    collapsed, skipped = StageState.COLLAPSED, StageState.SKIPPED
    if r["kind"] == StageKind.FINETUNE and status != collapsed and pt == collapsed:
        return "not available"  # paper Table 2: the collapsed pretrain's finetune is "Not Available"
    if status == collapsed or pt == collapsed or (status == skipped and "collaps" in str(r["reason"])):
        return "collapsed"
    if status == skipped:
        return "skipped"
    unstarted = status in (StageState.QUEUED, StageState.WAITING)
    if status in (StageState.RUNNING, StageState.RETRYING) or (unstarted and pt == StageState.RUNNING):
        return "running"
    if status in (StageState.FAILED, StageState.BLOCKED) or (unstarted and pt == StageState.FAILED):
        return "failed"
    return None


def aggregate(group: pd.DataFrame, metric: str, others: Sequence[str] = ()) -> Cell:
    """A cell from one group of runs: the mean/std of `metric` over the finished runs."""
    cell = Cell(settings=describe(group) if not group.empty else "")
    for _, r in group.iterrows():
        cell.stage_ids.append(r["stage_id"])
        if r["kind"] == StageKind.FINETUNE and isinstance(r.get("parent"), str):
            cell.stage_ids.append(r["parent"])
        value = r[metric]
        if r["status"] == StageState.DONE and value is not None and not math.isnan(value):
            cell.values.append(float(value))
            cell.bf16 = cell.bf16 or bool(r.get("bf16"))
    blocked = Counter(b for b in (_blocked(r) for _, r in group.iterrows()) if b)
    if cell.values:
        cell.status = "done"
        cell.notes += [f"+{c} {b}" for b, c in sorted(blocked.items())]
    else:
        for status in ("collapsed", "not available", "running", "failed", "skipped"):
            if blocked.get(status):
                cell.status = status
                break
        recorded = [float(v) for v in group.get(metric, []) if v is not None and not math.isnan(v)]
        if cell.status == "collapsed" and metric == "precision" and recorded:
            cell.status = f"collapsed (P = {max(recorded):.3f})"  # it failed to learn: P is the wording
    if cell.bf16:
        cell.notes.append("trained in bf16 (runtime.amp), not the official fp32 numerics")
    if others:
        cell.notes.append(f"{len(others)} other matching group(s) not shown: " + " | ".join(others))
    cell.stage_ids = list(dict.fromkeys(cell.stage_ids))
    return cell


def gpu_hours(stage_ids: Sequence[str], stages: pd.DataFrame) -> float:
    """Sum of `gpu_hours` over distinct stages (a shared pretrain counted once)."""
    ids = set(stage_ids)
    hours = stages.loc[stages["stage_id"].isin(ids), "gpu_hours"].astype(float)
    return float(np.nansum(hours.to_numpy())) if len(hours) else 0.0
