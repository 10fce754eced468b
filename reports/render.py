"""Write the report's files: tables as Markdown / CSV / LaTeX, figures as PNG + PDF (+ their series as
CSV), `results.csv` (every finetune with its classification and metrics) and `index.html`.

Only I/O and formatting: the numbers come from `tables` / `figures` unchanged. Measured AP is in %,
the paper's AP in %, Δ = measured − paper in AP points; precision is a fraction on both sides.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from orchestrator.store.format import StageKind, StageState
from reports.collect import STAGE_COLUMNS

log = logging.getLogger(__name__)

METRIC_TITLES = {"ap": "AP (%)", "precision": "HSJP precision"}
LABEL_TITLES = {
    "approach": "Approach",
    "backbone": "Backbone",
    "pretraining": "Pretraining",
    "split": "Dataset",
    "part": "Part",
    "setting": "Setting",
    "measured_as": "Measured as",
}
FIGURE_FORMATS = ("png", "pdf")


# The list of paper-silent choices (repository docs/), copied into every report and linked from it
CHOICES_DOC = Path(__file__).resolve().parent.parent / "docs" / "paper-silent-choices.md"


def copy_choices_doc(out: Path) -> Path | None:
    if not CHOICES_DOC.is_file():  # an install without the repository's docs/
        log.warning("%s not found; the report's link to it will be dead", CHOICES_DOC)
        return None
    target = out / CHOICES_DOC.name
    target.write_text(CHOICES_DOC.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def numerics_line(stages: pd.DataFrame | None) -> str:
    """How many finished stages trained in bf16 (cells holding one are marked [bf16])."""
    if stages is None or "train_precision" not in stages:
        return ""
    done = stages[stages["status"].isin([StageState.DONE, StageState.COLLAPSED])]
    bf16 = done[done["train_precision"] == "bf16"]
    counts = {k: int((bf16["kind"] == k).sum()) for k in ("finetune", "pretrain")}
    return (
        f"Numerics: evaluation always fp32; {counts['finetune']} finetune(s) and {counts['pretrain']} "
        "pretrain(s) trained in bf16 (cells built on them are marked [bf16]), the others in fp32 "
        "(TF32 convolutions on CUDA) as the official code."
    )


# ------------------------------------------------------------------------------------ display
def _num(value, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _paper_text(row: pd.Series, metric: str, digits: int) -> str:
    value, note = row.get(f"{metric}_paper"), str(row.get("paper_note") or "")
    if note == "not in paper":
        return "—"
    text = _num(value, digits)
    if not text:
        return "not available" + (f" ({note})" if note else "")
    return text + (f" ({note})" if note and metric == "precision" else "")


def display_frame(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Strings to show (labels, per metric measured / paper / Δ / seed spread, GPU-h, source marker)
    and the source footnotes '[k] settings'."""
    labels, metrics = table.attrs["labels"], table.attrs["metrics"]
    out = pd.DataFrame({LABEL_TITLES.get(c, c): table[c].astype(str) for c in labels}, index=table.index)
    for m in metrics:
        digits = 2 if m == "ap" else 3
        title = METRIC_TITLES[m]
        out[f"{title} measured"] = table[f"{m}_measured"]
        out[f"{title} paper"] = [_paper_text(r, m, 1 if m == "ap" else 3) for _, r in table.iterrows()]
        out[f"Δ {title}"] = [_num(v, digits, signed=True) for v in table[f"{m}_diff"]]
        if table[f"{m}_spread"].astype(bool).any():
            out[f"{title} vs seeds"] = table[f"{m}_spread"]
    out["GPU-h"] = [_num(v, 2) for v in table["gpu_hours"]]
    out["from"] = [f"[{i + 1}]" for i in range(len(table))]
    notes = [f"[{i + 1}] {s}" for i, s in enumerate(table["settings"])]
    return out, notes


def table_markdown(table: pd.DataFrame) -> str:
    shown, sources = display_frame(table)
    lines = [
        f"## {table.attrs['title']}",
        "",
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---" for _ in shown.columns) + "|",
    ]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in shown.itertuples(index=False)
    ]
    lines += [
        "",
        f"GPU-hours for this table: {table.attrs['gpu_hours']:.2f} (finetunes + their pretrains, "
        "each stage counted once).",
        "",
        "Notes:",
    ]
    lines += [f"- {n}" for n in table.attrs["notes"]]
    lines += ["", "Where each row's numbers come from:", ""]
    lines += [
        f"- {s}{_md_stage_links(ids)}" for s, ids in zip(sources, table.get("stages", [""] * len(sources)))
    ]
    return "\n".join(lines) + "\n"


def _md_stage_links(stage_ids) -> str:
    ids = str(stage_ids or "").split()
    return (" — stages: " + ", ".join(f"[{s}](stages/{s}.html)" for s in ids)) if ids else ""


def _html_stage_links(stage_ids) -> str:
    ids = str(stage_ids or "").split()
    links = ", ".join(f"<a href='stages/{html.escape(s)}.html'>{html.escape(s)}</a>" for s in ids)
    return f" — stages: {links}" if ids else ""


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "—": "---",
    "–": "--",
    "≤": r"$\leq$",
    "Δ": r"$\Delta$",
    "|": r"$|$",
    "−": "-",
    "≥": r"$\geq$",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def table_latex(table: pd.DataFrame, label: str) -> str:
    shown, sources = display_frame(table)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        r"\begin{tabular}{" + "l" * len(shown.columns) + "}",
        r"\toprule",
        " & ".join(tex_escape(c) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in shown.itertuples(index=False)]
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{tex_escape(table.attrs['title'])}. GPU-hours: {table.attrs['gpu_hours']:.2f}.}}",
        rf"\label{{tab:{label}}}",
        r"\par\raggedright\tiny",
    ]
    lines += [tex_escape(n) + r"\\" for n in table.attrs["notes"]]
    lines += [tex_escape(s) + r"\\" for s in sources]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- differences
def differences_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The differences table as shown: comparison, Δ with its interval, the paper's Δ, how, A and B."""
    return pd.DataFrame(
        {
            "Comparison": frame["comparison"],
            "Δ AP [95 %]": frame["text"],
            "paper Δ": [_num(v, 1, signed=True) or "—" for v in frame["paper_delta"]],
            "interval": frame["how"],
            "A": frame["a"],
            "B": frame["b"],
        }
    )


def write_differences(frame: pd.DataFrame, out: Path) -> list[Path]:
    """`differences.md`, `.csv` (every column, unrounded) and `.tex`."""
    shown = differences_display(frame)
    md = [f"## {frame.attrs['title']}", "", "| " + " | ".join(shown.columns) + " |"]
    md.append("|" + "|".join("---" for _ in shown.columns) + "|")
    md += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in shown.itertuples(index=False)
    ]
    md += ["", "Notes:"] + [f"- {n}" for n in frame.attrs["notes"]]
    tex = [
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        r"\begin{tabular}{" + "l" * 4 + "}",
        r"\toprule",
        " & ".join(tex_escape(c) for c in list(shown.columns)[:4]) + r" \\",
        r"\midrule",
    ]
    tex += [
        " & ".join(tex_escape(v) for v in list(row)[:4]) + r" \\" for row in shown.itertuples(index=False)
    ]
    tex += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{tex_escape(frame.attrs['title'])}}}",
        r"\label{tab:differences}",
        r"\par\raggedright\tiny",
    ]
    tex += [tex_escape(n) + r"\\" for n in frame.attrs["notes"]]
    tex.append(r"\end{table}")
    paths = [out / "differences.md", out / "differences.csv", out / "differences.tex"]
    paths[0].write_text("\n".join(md) + "\n")
    frame.to_csv(paths[1], index=False)
    paths[2].write_text("\n".join(tex) + "\n")
    return paths


# -------------------------------------------------------------------------------------- writers
def write_table(table: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """`<name>.md`, `<name>.csv` (every column, numbers unrounded) and `<name>.tex`."""
    paths = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex"]
    paths[0].write_text(table_markdown(table))
    table.to_csv(paths[1], index=False)
    paths[2].write_text(table_latex(table, name))
    return paths


def write_figure(fig: Figure, data: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """`<name>.png`, `<name>.pdf` and the plotted series `<name>.csv`."""
    paths = [out / f"{name}.{fmt}" for fmt in FIGURE_FORMATS]
    for path in paths:
        fig.savefig(path, dpi=150)
    data.to_csv(out / f"{name}.csv", index=False)
    return [*paths, out / f"{name}.csv"]


def results_frame(stages: pd.DataFrame) -> pd.DataFrame:
    """Every finetune: classification columns, status, its pretrain's precision, metrics (fractions as
    stored), AP at each OKS threshold, overall error shares, GPU-hours."""
    ft = stages[stages["kind"] == StageKind.FINETUNE].copy()
    per_oks = [d if isinstance(d, dict) else {} for d in ft["ap_per_oks"]]
    for t in sorted({k for d in per_oks for k in d}):
        ft[f"AP@{t}"] = [d.get(t, math.nan) for d in per_oks]
    overall = [(e.get("overall") if isinstance(e, dict) else None) or {} for e in ft["errors"]]
    for k in ("good", "jitter", "inversion", "swap", "miss"):
        ft[f"err_{k}"] = [o.get(k, math.nan) for o in overall]
    drop = ["kind", "ap_per_oks", "errors", "settings_flat"]
    lead = ["stage_id", "studies", "trials", "status", "reason"]
    first = lead + [c for c in STAGE_COLUMNS if c not in lead and c not in drop]  # the store's order
    rest = [c for c in ft.columns if c not in first and c not in drop]
    return ft[first + rest].reset_index(drop=True)


def write_results(stages: pd.DataFrame, out: Path) -> Path:
    path = out / "results.csv"
    results_frame(stages).to_csv(path, index=False)
    return path


def write_index(
    out: Path,
    tables: dict[str, pd.DataFrame],
    figures: dict[str, pd.DataFrame],
    *,
    storage: str,
    seconds: float,
    n_stages: int,
    stages: pd.DataFrame | None = None,
    differences: pd.DataFrame | None = None,
    curves: dict[str, str] | None = None,
    stage_pages: list[tuple[str, str]] | None = None,
) -> Path:
    """One page with every table (HTML), every figure (relative links to the PNGs) and the downloads;
    docs/paper-silent-choices.md is copied beside it and linked."""
    esc = html.escape
    copy_choices_doc(out)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>hsjp-study report</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        ".src{font-size:11px;color:#555}img{max-width:900px}</style></head><body>",
        "<h1>hsjp-study report</h1>",
        f"<p>Store: <code>{esc(storage)}</code> — {n_stages} stages read; built in {seconds:.1f} s. "
        "Measured AP in %, paper AP in %, Δ in AP points; precision as fractions. "
        "<a href='results.csv'>results.csv</a> lists every finetune (metrics as stored, fractions).</p>",
        f"<p>{esc(numerics_line(stages))} Choices the paper leaves open, and what this project decided: "
        f"<a href='{CHOICES_DOC.name}'>{CHOICES_DOC.name}</a>.</p>",
    ]
    for name, table in tables.items():
        shown, sources = display_frame(table)
        parts += [
            f"<h2 id='{name}'>{esc(table.attrs['title'])}</h2>",
            f"<p><a href='{name}.md'>Markdown</a> · <a href='{name}.csv'>CSV</a> · "
            f"<a href='{name}.tex'>LaTeX</a> · GPU-hours: {table.attrs['gpu_hours']:.2f}</p>",
            shown.to_html(index=False, escape=True, border=0),
            "<ul class='src'>" + "".join(f"<li>{esc(n)}</li>" for n in table.attrs["notes"]) + "</ul>",
            "<details class='src' open><summary>where each row comes from</summary><ul>"
            + "".join(
                f"<li>{esc(s)}{_html_stage_links(ids)}</li>"
                for s, ids in zip(sources, table.get("stages", [""] * len(sources)))
            )
            + "</ul></details>",
        ]
    if differences is not None:
        parts += [
            f"<h2 id='differences'>{esc(differences.attrs['title'])}</h2>",
            "<p><a href='differences.md'>Markdown</a> · <a href='differences.csv'>CSV</a> · "
            "<a href='differences.tex'>LaTeX</a></p>",
            differences_display(differences).to_html(index=False, escape=True, border=0),
            "<ul class='src'>" + "".join(f"<li>{esc(n)}</li>" for n in differences.attrs["notes"]) + "</ul>",
        ]
    for name, data in figures.items():
        parts += [
            f"<h2 id='{name}'>{esc(name.replace('figure', 'Figure '))}</h2>",
            f"<p><img src='{name}.png' alt='{name}'></p>",
            f"<p><a href='{name}.pdf'>PDF</a> · <a href='{name}.csv'>plotted series (CSV, {len(data)} "
            "points)</a></p>",
        ]
    for study, name in (curves or {}).items():
        parts += [
            f"<h2 id='{name}'>Learning curves: {esc(study)}</h2>",
            f"<p><img src='{name}.png' alt='{name}'></p>",
            f"<p><a href='{name}.pdf'>PDF</a> · <a href='{name}.csv'>plotted series (CSV)</a></p>",
        ]
    if stage_pages:
        parts += ["<h2 id='stages'>Stages</h2>", "<ul class='src'>"]
        parts += [
            f"<li><a href='stages/{esc(sid)}.html'>{esc(sid)}</a> — {esc(label)}</li>"
            for sid, label in stage_pages
        ]
        parts.append("</ul>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
