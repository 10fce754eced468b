"""Tables 1–3 of the paper from the stage table, each measured cell beside the paper's value.

Table 1 (paper §4.2): pose AP of HRNet-W32 and SimpleBaseline-R50 × scratch / ImageNet / HSJP on
val2017 and test-dev2017. Table 2 (§5.1): (a) pretrain lr, (b) pretrain epochs → HSJP precision
and AP. Table 3 (§5.2, §5.3): N → precision and AP without / with the original image, and the
scratch baselines of 210 and 450 finetune epochs. Pure: a DataFrame of stages in, DataFrames out.

Every measured metric `m` (`ap` in %, `precision` as a fraction) gets the columns `m` (mean),
`m_std`, `m_n`, `m_status`, `m_measured` (text), `m_paper`, `m_diff` (measured − paper) and
`m_spread` ("within seed spread" when the paper's value lies inside mean ± std); each row also has
`settings` (the actual runs a cell came from), `stages` and `gpu_hours` (finetunes + their
pretrains, a shared pretrain counted once). `df.attrs` holds `title`, `notes`, `gpu_hours` (per
table, each stage once), `labels` (the row-label columns) and `metrics`.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import yaml

from orchestrator.store.format import StageKind, StageState
from reports.cells import (
    FINETUNE_KEY,
    PAPER_PT_EPOCHS,
    PRETRAIN_KEY,
    Cell,
    References,
    aggregate,
    fmt_lr,
    gpu_hours,
    method_group,
    pick_group,
    protocol_finetunes,
    references,
    where,
)

# reported.yaml (approach, backbone) → config backbone; other approaches are cited, not run by this study
BACKBONE_OF = {("HRNet", "HRNet-W32"): "hrnet_w32", ("SimpleBaseline", "ResNet50"): "simplebaseline_r50"}
METHOD_OF = {"scratch": "scratch", "imagenet": "imagenet", "hsjp_n6": "hsjp"}
LONG_SCRATCH_RATIO = 450 / 210
TEST_DEV = "test-dev2017"  # paper Table 3: "From Scratch (450)" balances 210 + 240 epochs


def load_reported() -> dict:
    """The paper's reported numbers (package data `reports/data/reported.yaml`)."""
    text = resources.files("reports").joinpath("data/reported.yaml").read_text()
    return yaml.safe_load(text)


# ------------------------------------------------------------------------------------- cell rows
def metric_columns(name: str, cell: Cell, paper: float | None, scale: float) -> dict[str, Any]:
    """The columns of one measured metric (see the module docstring); `scale` maps fractions → unit."""
    paper = None if paper is None or (isinstance(paper, float) and math.isnan(paper)) else float(paper)
    mean = cell.mean * scale
    return {
        name: mean,
        f"{name}_std": cell.std * scale,
        f"{name}_n": cell.n,
        f"{name}_status": cell.status,
        f"{name}_measured": cell.text(scale, 2 if scale == 100 else 3),
        f"{name}_paper": math.nan if paper is None else paper,
        f"{name}_diff": mean - paper if paper is not None and cell.values else math.nan,
        f"{name}_spread": cell.spread(paper, scale),
    }


def make_row(labels: dict, cells: dict[str, tuple[Cell, float | None, float]], stages: pd.DataFrame) -> dict:
    """One table row: its labels, each metric's columns, where the numbers came from, GPU-hours."""
    row = dict(labels)
    settings, ids = [], []
    for name, (cell, paper, scale) in cells.items():
        row.update(metric_columns(name, cell, paper, scale))
        ids += cell.stage_ids
        text = cell.settings or "no matching run"
        if cell.notes:
            text += " (" + "; ".join(cell.notes) + ")"
        settings.append(f"{name}: {text}")
    row["settings"] = " || ".join(settings)
    row["stages"] = " ".join(dict.fromkeys(ids))
    row["gpu_hours"] = gpu_hours(ids, stages)
    return row


def finish(
    rows: list[dict],
    stages: pd.DataFrame,
    title: str,
    labels: list[str],
    metrics: list[str],
    notes: list[str],
) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    ids = [i for s in frame.get("stages", pd.Series(dtype=str)) for i in str(s).split()]
    frame.attrs.update(
        title=title, labels=labels, metrics=metrics, notes=notes, gpu_hours=gpu_hours(ids, stages)
    )
    return frame


def _pretrain_and_finetune(stages: pd.DataFrame, refs: References, **equal) -> tuple[Cell, Cell]:
    """(precision cell, AP cell) of HRNet HSJP runs with the given pretrain settings."""
    pts = where(stages, kind=StageKind.PRETRAIN, backbone=refs.backbone, method="hsjp", **equal)
    group, others = pick_group(pts, PRETRAIN_KEY)
    precision = aggregate(group, "precision", others)
    fts = protocol_finetunes(stages, refs, method="hsjp", **equal)
    children = fts[fts["parent"].isin(set(group["stage_id"]))]
    group_ft, others_ft = pick_group(children if not children.empty else fts, FINETUNE_KEY)
    return precision, aggregate(group_ft, "AP", others_ft)


def _ref_note(refs: References) -> str:
    return (
        f"{refs.backbone} references in this store: N={_ep(refs.n)}, pretrain lr={fmt_lr(refs.lr)}, "
        f"pretrain epochs={_ep(refs.pt_epochs)}, finetune epochs={_ep(refs.ft_epochs)} (paper: 6, 1e-3, "
        "240, official schedule; '—' = nothing of the kind in the store)"
    )


def _ep(value: int | None) -> str:
    return "—" if value is None else str(value)


# -------------------------------------------------------------------------------------- Table 1
def table1(stages: pd.DataFrame, reported: dict | None = None) -> pd.DataFrame:
    """Table 1: AP per approach × pretraining × split; HSJP prefers N=6, then the reference lr/epochs."""
    reported = reported or load_reported()
    refs = {b: references(stages, b) for b in BACKBONE_OF.values()}
    rows = []
    for paper_row in reported["table1"]:
        backbone = BACKBONE_OF.get((paper_row["approach"], paper_row["backbone"]))
        method = METHOD_OF[paper_row["pretraining"]]
        labels = {k: paper_row[k] for k in ("approach", "backbone", "pretraining", "split")}
        if backbone is None:  # Stacked Hourglass / CPN: cited by the paper, not part of this study
            cell = Cell(settings="another method cited by the paper; not part of this study")
        elif paper_row["split"] == TEST_DEV:
            cell = test_dev_cell(stages, refs[backbone], method)
        else:
            group, others = method_group(stages, refs[backbone], method, split=paper_row["split"])
            cell = aggregate(group, "AP", others)
        rows.append(make_row(labels, {"ap": (cell, paper_row["ap"], 100.0)}, stages))
    notes = [_ref_note(r) for r in refs.values()] + [
        "Finetunes with freeze none, 100% labels, the reference finetune epochs; HSJP with the shuffled "
        "crop only (concat_original false), preferring N=6, then the reference pretrain lr and epochs.",
        "test-dev2017 cells: the same finetunes as the val2017 cells, with finetune.test_splits: "
        "[test-dev2017]; each finetune's evaluate stage (its best weights, nothing retrained) writes the "
        "evaluation server's results file + zip into its stage folder; a cell shows AP once the server's "
        "stats are placed beside that file as <results>.stats.json (docs/paper-silent-choices.md, "
        "test-dev), until then which file to submit. A test-dev cell has no interval: the intervals are a "
        "bootstrap over the per-image outcomes on val2017, and the server returns only the summary stats.",
        *batch_notes(stages),
    ]
    return finish(
        rows,
        stages,
        "Table 1: pretraining comparison (pose AP, %)",
        ["approach", "backbone", "pretraining", "split"],
        ["ap"],
        notes,
    )


def test_dev_cell(stages: pd.DataFrame, refs: References, method: str) -> Cell:
    """A Table 1 test-dev2017 cell: the val2017 protocol's finetunes, their server-returned test-dev AP;
    without stats, the results file to submit (or why there is none)."""
    group, others = method_group(stages, refs, method, split="val2017")
    cell = aggregate(group, "test_dev_AP", others)
    evaluations = [s for s in group.get("test_dev_stage", []) if isinstance(s, str)]
    cell.stage_ids = list(dict.fromkeys([*cell.stage_ids, *evaluations]))
    if cell.values or group.empty:
        return cell
    pending = [str(s) for s in group["test_dev_status"] if isinstance(s, str) and s != "server stats"]
    if pending:
        cell.status = pending[0]
    elif cell.status == "not run" and (group["status"] == StageState.DONE).any():
        cell.status = "no test-dev results (finetune.test_splits)"
    return cell


# paper §3.4: pretrain batch 256 on 4 GPUs; official HRNet finetune 32 per GPU on 4 GPUs
PAPER_BATCH = {"pretrain": (64, 4), "finetune": (32, 4)}


def batch_notes(stages: pd.DataFrame) -> list[str]:
    """One note per stage kind whose finished runs used another per-GPU (= BatchNorm) batch or GPU
    count than the paper (its BN statistics and its global batch differ)."""
    notes = []
    done = stages[
        stages["status"].isin([StageState.DONE, StageState.COLLAPSED]) & stages["world_size"].notna()
    ]
    for kind, (batch, gpus) in PAPER_BATCH.items():
        mine = done[
            (done["kind"] == kind) & ~((done["kind"] == StageKind.PRETRAIN) & (done["method"] != "hsjp"))
        ]
        seen = sorted(
            {(int(b), int(w)) for b, w in zip(mine["batch_size"], mine["world_size"]) if b == b and w == w}
        )
        other = [(b, w) for b, w in seen if (b, w) != (batch, gpus)]
        if other:
            ran = ", ".join(f"{b} per GPU × {w} GPU(s) = {b * w}" for b, w in other)
            notes.append(
                f"{kind} batch: {ran} (BatchNorm over {', '.join(str(b) for b, _ in other)} samples); the paper: "
                f"{batch} per GPU × {gpus} GPUs = {batch * gpus} (BatchNorm over {batch} per GPU)."
            )
    return notes


# -------------------------------------------------------------------------------------- Table 2
def epoch_row(measured: int, reference: int, paper_rows: list[int]) -> int | None:
    """The paper's epoch row a measured pretrain epoch count stands for, by its ratio to the reference
    (e.g. 1 / 2 / 4 with reference 2 → 120 / 240 / 480); None when no row is within a factor √2."""
    x = math.log2(measured / reference)
    best = min(paper_rows, key=lambda p: abs(x - math.log2(p / PAPER_PT_EPOCHS)))
    return best if abs(x - math.log2(best / PAPER_PT_EPOCHS)) < 0.5 else None


def _values(frame: pd.DataFrame, col: str) -> list:
    return sorted({v for v in frame[col] if v is not None and not (isinstance(v, float) and math.isnan(v))})


def map_epochs(measured: list[int], reference: int | None, paper_rows: list[int]) -> dict[int, int]:
    """{paper row: measured epochs} — per row, the measured count whose ratio to the reference is
    nearest to the row's ratio to 240 (within a factor √2)."""
    chosen: dict[int, int] = {}
    for e in measured if reference else []:
        row = epoch_row(e, reference, paper_rows)
        if row is None:
            continue
        target = row * reference / PAPER_PT_EPOCHS
        if row not in chosen or abs(math.log(e / target)) < abs(math.log(chosen[row] / target)):
            chosen[row] = e
    return chosen


def _pt_row(stages: pd.DataFrame, r: References, labels: dict, paper: dict, **equal) -> dict:
    """A Table 2 / 3 row: precision of the matching HSJP pretrains and AP of their finetunes."""
    prec, ap = _pretrain_and_finetune(stages, r, **equal) if equal else (Cell(), Cell())
    cells = {"precision": (prec, paper.get("precision"), 1.0), "ap": (ap, paper.get("ap"), 100.0)}
    return make_row({**labels, "paper_note": _paper_note(paper)}, cells, stages)


def table2(stages: pd.DataFrame, reported: dict | None = None) -> pd.DataFrame:
    """Table 2 (HRNet-W32, N ref): (a) pretrain lr at the reference epochs; (b) pretrain epochs at the
    reference lr, measured epochs mapped to 120/240/480 by their ratio to the reference epochs."""
    reported = reported or load_reported()
    r = references(stages, "hrnet_w32")
    hsjp = where(
        stages, kind=StageKind.PRETRAIN, backbone="hrnet_w32", method="hsjp", n=r.n, concat_original=False
    )
    base = {"n": r.n, "concat_original": False}
    rows = []
    paper_lrs = [p["lr"] for p in reported["table2"]["learning_rate"]]
    extra_lrs = [
        v for v in _values(where(hsjp, pt_epochs=r.pt_epochs), "lr") if not np.isclose(paper_lrs, v).any()
    ]
    for p in reported["table2"]["learning_rate"] + [{"lr": v} for v in extra_lrs]:
        labels = {
            "part": "a",
            "setting": f"lr {fmt_lr(p['lr'])}",
            "lr": p["lr"],
            "epochs": PAPER_PT_EPOCHS,
            "measured_as": f"lr {fmt_lr(p['lr'])}, {_ep(r.pt_epochs)} ep",
        }
        rows.append(_pt_row(stages, r, labels, p, **base, pt_epochs=r.pt_epochs, lr=p["lr"]))
    measured = _values(where(hsjp, lr=r.lr), "pt_epochs")
    chosen = map_epochs(measured, r.pt_epochs, [p["epochs"] for p in reported["table2"]["epochs"]])
    extra = [{"epochs": None, "measured": e} for e in measured if e not in chosen.values()]
    for p in reported["table2"]["epochs"] + extra:
        e = p.get("measured", chosen.get(p["epochs"]))
        name = (
            f"{p['epochs']} epochs" if p["epochs"] else f"{e} epochs (×{e / r.pt_epochs:g} ref; not in paper)"
        )
        labels = {
            "part": "b",
            "setting": name,
            "lr": r.lr,
            "epochs": p["epochs"],
            "measured_as": f"{e} ep, lr {fmt_lr(r.lr)}" if e else "—",
        }
        rows.append(_pt_row(stages, r, labels, p, **({**base, "lr": r.lr, "pt_epochs": e} if e else {})))
    notes = [
        _ref_note(r),
        f"(a) at {_ep(r.pt_epochs)} pretrain epochs (paper: 240); (b) at lr {fmt_lr(r.lr)}; measured epochs "
        f"map to the paper's 120/240/480 rows by their ratio to {_ep(r.pt_epochs)} (the nearest within a "
        "factor √2; others are listed as extra rows).",
        "A pretrain is collapsed when its loss diverges or it failed to learn the puzzle at every "
        "evaluation after the warm-up (pretrain.collapse_warmup_epochs: patch accuracy near chance 1/N² "
        "with flat heatmaps or a loss not falling; P = 0 alone is not a collapse); its finetune is then "
        "not available, as in the paper.",
        *batch_notes(stages),
    ]
    title = "Table 2: pretrain learning rate and epochs (HRNet-W32)"
    return finish(rows, stages, title, ["part", "setting", "measured_as"], ["precision", "ap"], notes)


def _paper_note(p: dict) -> str:
    if "precision" not in p and "ap" not in p:
        return "not in paper"
    return str(p.get("note") or "")


# -------------------------------------------------------------------------------------- Table 3
def table3(stages: pd.DataFrame, reported: dict | None = None) -> pd.DataFrame:
    """Table 3 (HRNet-W32, reference lr and epochs): N × concat_original → precision and AP, and the
    scratch baselines at the reference finetune epochs (210) and the longer run nearest ×450/210 (450)."""
    reported = reported or load_reported()
    r = references(stages, "hrnet_w32")
    rows = []
    for part, concat, key in (("a", False, "shuffled_only"), ("b", True, "with_original")):
        if part == "b":  # the paper lists the scratch baselines under (a)
            rows += _scratch_rows(stages, r, reported["table3"]["scratch"])
        paper = reported["table3"][key]
        pts = where(
            stages,
            kind=StageKind.PRETRAIN,
            backbone="hrnet_w32",
            method="hsjp",
            lr=r.lr,
            pt_epochs=r.pt_epochs,
            concat_original=concat,
        )
        extra = [n for n in _values(pts, "n") if n not in {p["n"] for p in paper}]
        for p in paper + [{"n": n} for n in extra]:
            labels = {
                "part": part,
                "setting": f"N={p['n']}",
                "n": p["n"],
                "concat_original": concat,
                "finetune_epochs": r.ft_epochs,
                "measured_as": f"N={p['n']}, lr {fmt_lr(r.lr)}, {_ep(r.pt_epochs)} ep",
            }
            rows.append(
                _pt_row(
                    stages, r, labels, p, lr=r.lr, pt_epochs=r.pt_epochs, concat_original=concat, n=p["n"]
                )
            )
    notes = [
        _ref_note(r),
        "(a) shuffled crop only; (b) with the original crop beside it (paper Fig. 7). "
        f"Scratch rows: the reference finetune schedule ({r.ft_epochs} ep) stands for 210; the "
        "longer run nearest to ×450/210 of it stands for 450.",
        *batch_notes(stages),
    ]
    return finish(
        rows,
        stages,
        "Table 3: number of patches N and the original image (HRNet-W32)",
        ["part", "setting", "measured_as"],
        ["precision", "ap"],
        notes,
    )


def long_epochs(measured: list[int], default: int | None) -> int | None:
    """The finetune epoch count that stands for the paper's 450: longer than the default, nearest
    to ×450/210 of it."""
    longer = [e for e in measured if default and e > default]
    return min(longer, key=lambda e: abs(math.log(e / default / LONG_SCRATCH_RATIO))) if longer else None


def _scratch_rows(stages: pd.DataFrame, r: References, paper: list[dict]) -> list[dict]:
    fts = where(
        stages,
        kind=StageKind.FINETUNE,
        backbone="hrnet_w32",
        method="scratch",
        freeze=None,
        label_fraction=1.0,
        split="val2017",
    )
    measured = _values(fts, "ft_epochs")
    chosen = {210: r.ft_epochs, 450: long_epochs(measured, r.ft_epochs)}
    extra = [{"finetune_epochs": None, "measured": e} for e in measured if e not in chosen.values()]
    rows = []
    for p in paper + extra:
        e = p.get("measured", chosen.get(p["finetune_epochs"]))
        group, others = pick_group(where(fts, ft_epochs=e), FINETUNE_KEY) if e else (fts.iloc[:0], [])
        cell = aggregate(group, "AP", others)
        name = (
            f"From Scratch ({p['finetune_epochs']})"
            if p["finetune_epochs"]
            else f"From Scratch ({e}; not in paper)"
        )
        labels = {
            "part": "a",
            "setting": name,
            "n": None,
            "concat_original": None,
            "finetune_epochs": e,
            "measured_as": f"scratch, {e} finetune ep" if e else "—",
            "paper_note": _paper_note(p),
        }
        rows.append(
            make_row(
                labels,
                {"precision": (Cell(status="not applicable"), None, 1.0), "ap": (cell, p.get("ap"), 100.0)},
                stages,
            )
        )
    return rows
