"""The differences the paper's conclusions rest on, each with a 95 % interval (`reports.intervals`):

- per backbone (Table 1, val2017): HSJP − ImageNet and HSJP − scratch;
- Table 3 (HRNet-W32): each N − the reference N (6 when run), shuffled crop only and with the
  original; with − without the original at each N;
- Fig. 5: each frozen-stages setting − full finetuning (HSJP);
- Fig. 6: each label fraction − 100 % labels, per method that has such runs.

One row per difference: the two cells (settings in words and stage ids), Δ = A − B in AP points, its
interval, and the paper's Δ where the paper reports both numbers. Pure: stages + Bootstraps in,
a DataFrame out, with `attrs` like the other tables (`title`, `notes`).
"""

from __future__ import annotations

import math

import pandas as pd

from orchestrator.store.format import StageKind
from reports.cells import ANY, References, aggregate, method_group, protocol_finetunes, references
from reports.intervals import Bootstraps, Interval, cell_runs
from reports.tables import BACKBONE_OF, _pretrain_and_finetune, load_reported

COLUMNS = (
    "comparison",
    "a",
    "b",
    "delta",
    "lo",
    "hi",
    "text",
    "paper_delta",
    "how",
    "stages_a",
    "stages_b",
)


def _ap(group_and_others: tuple) -> tuple[list[str], str]:
    group, others = group_and_others
    cell = aggregate(group, "AP", others)
    return cell.stage_ids, cell.settings


def _row(comparison: str, a: tuple, b: tuple, stages: pd.DataFrame, boots: Bootstraps, paper: float | None):
    (ids_a, label_a), (ids_b, label_b) = a, b
    runs_a, runs_b = cell_runs(ids_a, stages), cell_runs(ids_b, stages)
    if not runs_a or not runs_b:
        iv = Interval(how="not run" if not (runs_a or runs_b) else f"{'A' if not runs_a else 'B'} not run")
    else:
        iv = boots.difference(runs_a, runs_b)
        if not math.isfinite(iv.value):  # no outcomes: still give the measured difference
            mean = lambda ids: float(stages.set_index("stage_id").loc[ids, "AP"].astype(float).mean())  # noqa: E731
            iv = Interval(mean(runs_a) - mean(runs_b), how=iv.how)
    delta = 100 * iv.value
    text = "" if not math.isfinite(delta) else f"Δ {delta:+.2f}".replace("-", "−")
    if iv.ok:
        text += " " + iv.text(100, 2, signed=True)
    return {
        "comparison": comparison,
        "a": label_a or "no matching run",
        "b": label_b or "no matching run",
        "delta": delta,
        "lo": 100 * iv.lo,
        "hi": 100 * iv.hi,
        "text": text or "—",
        "paper_delta": paper if paper is not None else math.nan,
        "how": iv.how,
        "stages_a": " ".join(runs_a),
        "stages_b": " ".join(runs_b),
    }


def _paper_table1(reported: dict, approach: str, backbone: str, a: str, b: str) -> float | None:
    vals = {
        r["pretraining"]: r.get("ap")
        for r in reported.get("table1", [])
        if r["approach"] == approach and r["backbone"] == backbone and r["split"] == "val2017"
    }
    va, vb = vals.get(a), vals.get(b)
    return None if va is None or vb is None else round(float(va) - float(vb), 3)


def differences(stages: pd.DataFrame, boots: Bootstraps, reported: dict | None = None) -> pd.DataFrame:
    reported = reported or load_reported()
    rows = []
    names = {"hsjp": "HSJP", "imagenet": "ImageNet", "scratch": "scratch"}
    for (approach, backbone_name), backbone in BACKBONE_OF.items():
        refs = references(stages, backbone)
        cells = {m: _ap(method_group(stages, refs, m, split="val2017")) for m in names}
        for other, key in (("imagenet", "imagenet"), ("scratch", "scratch")):
            paper = _paper_table1(reported, approach, backbone_name, "hsjp_n6", key)
            label = f"{backbone}: HSJP − {names[other]} (Table 1, val2017)"
            rows.append(_row(label, cells["hsjp"], cells[other], stages, boots, paper))
    r = references(stages, "hrnet_w32")
    rows += _table3_rows(stages, r, boots, reported)
    rows += _freeze_rows(stages, r, boots)
    rows += _fraction_rows(stages, r, boots)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame.attrs.update(
        title="Differences the paper draws, with 95 % intervals (AP points)",
        notes=[
            "Δ = A − B in AP points; [lo, hi]: 95 % interval from a paired bootstrap over the evaluation "
            f"images ({boots.n_resamples} resamples, seed {boots.seed}), widened by the seed spread "
            "when a side has ≥ 2 seeds (docs/per-image.md). An interval that contains 0 means the "
            "evaluation set alone could make a gap this size.",
            f"Reference N here: {r.n} (paper: 6); cells as in Tables 1 and 3 and Figs. 5–6.",
        ],
    )
    return frame


def _table3_rows(stages: pd.DataFrame, r: References, boots: Bootstraps, reported: dict) -> list[dict]:
    rows = []
    if r.n is None:
        return rows
    paper = {
        (concat, p["n"]): p.get("ap")
        for concat, key in ((False, "shuffled_only"), (True, "with_original"))
        for p in reported.get("table3", {}).get(key, [])
    }
    base = {"lr": r.lr, "pt_epochs": r.pt_epochs}
    found: dict[tuple[bool, int], tuple[list[str], str]] = {}
    for concat in (False, True):
        pts = stages[
            (stages["kind"] == StageKind.PRETRAIN)
            & (stages["backbone"] == "hrnet_w32")
            & (stages["method"] == "hsjp")
            & (stages["concat_original"] == concat)
        ]
        for n in sorted({int(v) for v in pts["n"] if v is not None}):
            _, ap = _pretrain_and_finetune(stages, r, **base, concat_original=concat, n=n)
            if ap.stage_ids:
                found[(concat, n)] = (ap.stage_ids, ap.settings)
    for concat in (False, True):
        ref = found.get((concat, r.n))
        for (c, n), cell in sorted(found.items()):
            if c != concat or n == r.n or ref is None:
                continue
            pa, pb = paper.get((concat, n)), paper.get((concat, r.n))
            label = f"Table 3{'b' if concat else 'a'}: N={n} − N={r.n}" + (
                " (with original)" if concat else ""
            )
            delta = None if pa is None or pb is None else round(pa - pb, 3)
            rows.append(_row(label, cell, ref, stages, boots, delta))
    for (c, n), cell in sorted(found.items()):
        if c and (False, n) in found:
            pa, pb = paper.get((True, n)), paper.get((False, n))
            delta = None if pa is None or pb is None else round(pa - pb, 3)
            rows.append(
                _row(
                    f"Table 3: N={n} with − without the original",
                    cell,
                    found[(False, n)],
                    stages,
                    boots,
                    delta,
                )
            )
    return rows


def _freeze_rows(stages: pd.DataFrame, r: References, boots: Bootstraps) -> list[dict]:
    hsjp = protocol_finetunes(stages, r, method="hsjp", freeze=ANY)
    frozen = sorted({int(f) for f in hsjp["freeze"] if f is not None})
    full = _ap(method_group(stages, r, "hsjp", freeze=None))
    return [
        _row(
            f"Fig. 5: freeze stages 0–{f} − full finetuning (HSJP)",
            _ap(method_group(stages, r, "hsjp", freeze=f)),
            full,
            stages,
            boots,
            None,
        )
        for f in frozen
    ]


def _fraction_rows(stages: pd.DataFrame, r: References, boots: Bootstraps) -> list[dict]:
    rows = []
    for method, name in (("hsjp", "HSJP"), ("scratch", "scratch"), ("imagenet", "ImageNet")):
        fts = protocol_finetunes(stages, r, method=method, label_fraction=ANY)
        fractions = sorted({float(f) for f in fts["label_fraction"] if f == f and float(f) < 1.0})
        if not fractions:
            continue
        full = _ap(method_group(stages, r, method, label_fraction=1.0))
        for frac in fractions:
            cell = _ap(method_group(stages, r, method, label_fraction=frac))
            rows.append(
                _row(f"Fig. 6: {100 * frac:.0f} % − 100 % labels ({name})", cell, full, stages, boots, None)
            )
    return rows
