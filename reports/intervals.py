"""95 % intervals on AP cells and on the differences the paper draws, from the paired bootstrap over
evaluation images (`reports.bootstrap`; 1,000 resamples, seed 0; docs/per-image.md says how).

A cell's runs (its seeds) must all have a stored per-image outcome on the same images; each resample's
cell value is then the mean of its seeds' APs on that resample. With one run the interval is the
bootstrap's percentile interval. With k ≥ 2 seeds it is widened by the seed spread, the two sources
taken as independent: each half-width becomes sqrt(h_boot² + (t · s / √k)²), with s the standard
deviation of the seeds' full-set APs and t Student's 0.975 quantile with k − 1 degrees of freedom. A
difference A − B uses the same resamples on both sides (paired over images; both sides must be
evaluated on the same images) and the seed term t · sqrt(s_A²/k_A + s_B²/k_B) over the sides with
≥ 2 seeds (t with the smaller k − 1). Cells or differences that cannot be given an interval say why.

Bootstrap samples are cached in the report folder (`bootstrap-cache/<stage id>.npz`, keyed by a
hash of the outcome file, the resample count and the seed), so a report rebuilt over the same store
redoes only new stages.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.store.format import StageState
from reports.bootstrap import COLUMNS, N_RESAMPLES, SEED, Outcome, bootstrap, image_set_key, read_outcome
from reports.bootstrap import percentile_interval as boot_interval
from reports.collect import open_store

log = logging.getLogger(__name__)

PER_IMAGE_FILE = "per_image.npz"  # the finetune's stored outcome (workloads/pose/per_image.py)
LEVEL = 0.95
# Student's t, two-sided 95 % (0.975 quantile), by degrees of freedom (standard t tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
CACHE_VERSION = "1"
TEST_DEV = "test-dev2017"
NO_TEST_DEV_INTERVAL = "none: scored by the evaluation server (summary stats only, no per-image outcome)"


def t975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= len(T975):
        return T975[df - 1]
    return 2.000 if df <= 60 else 1.980 if df <= 120 else 1.960


@dataclass
class Interval:
    """A point estimate and its 95 % interval (fractions), or why there is none (`lo`/`hi` NaN)."""

    value: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    runs: int = 0
    how: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def text(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        if not self.ok:
            return ""
        f = (lambda v: f"{v * scale:+.{digits}f}") if signed else (lambda v: f"{v * scale:.{digits}f}")
        return f"[{f(self.lo)}, {f(self.hi)}]".replace("-", "−")


class Bootstraps:
    """Lazily loaded outcomes and bootstrap samples of a store's finetunes."""

    def __init__(
        self,
        storage: str,
        cache_dir: Path | None = None,
        n_resamples: int = N_RESAMPLES,
        seed: int = SEED,
        progress: bool = False,
    ):
        self.store = open_store(storage)
        self.cache_dir = cache_dir
        self.n_resamples, self.seed, self.progress = n_resamples, seed, progress
        self._outcomes: dict[str, tuple[Outcome, str] | None] = {}
        self._samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.seconds = 0.0

    def outcome(self, stage_id: str) -> Outcome | None:
        if stage_id not in self._outcomes:
            data = self.store.read_bytes(self.store.stage_path(stage_id, PER_IMAGE_FILE))
            entry = None
            if data is not None:
                try:
                    entry = (read_outcome(data), hashlib.sha1(data).hexdigest())
                except ValueError as exc:
                    log.warning("stages/%s/%s: %s; no interval for it", stage_id, PER_IMAGE_FILE, exc)
            self._outcomes[stage_id] = entry
        entry = self._outcomes[stage_id]
        return entry[0] if entry else None

    def prepare(self, stage_ids: Iterable[str]) -> None:
        """Bootstrap every given finetune that has an outcome (cached ones are read back)."""
        todo: dict[str, Outcome] = {}
        for sid in dict.fromkeys(stage_ids):
            if sid in self._samples or self.outcome(sid) is None:
                continue
            cached = self._read_cache(sid)
            if cached is not None:
                self._samples[sid] = cached
            else:
                todo[sid] = self.outcome(sid)
        if not todo:
            return
        t0 = time.perf_counter()
        if self.progress:
            print(
                f"report: bootstrapping {len(todo)} finetune evaluation(s), {self.n_resamples} resamples each ...",
                file=sys.stderr,
                flush=True,
            )
        for sid, res in bootstrap(todo, self.n_resamples, self.seed).items():
            self._samples[sid] = res
            self._write_cache(sid, res)
        self.seconds += time.perf_counter() - t0
        log.info("bootstrapped %d finetunes in %.1f s", len(todo), time.perf_counter() - t0)

    def samples(self, stage_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        self.prepare([stage_id])
        return self._samples.get(stage_id)

    # ------------------------------------------------------------------------------------ cache
    def _cache_key(self, sid: str) -> str:
        digest = self._outcomes[sid][1] if self._outcomes.get(sid) else ""
        return f"{CACHE_VERSION}:{digest}:{self.n_resamples}:{self.seed}"

    def _read_cache(self, sid: str) -> tuple[np.ndarray, np.ndarray] | None:
        if self.cache_dir is None or not (self.cache_dir / f"{sid}.npz").is_file():
            return None
        try:
            z = np.load(self.cache_dir / f"{sid}.npz", allow_pickle=False)
            if str(z["key"]) != self._cache_key(sid) or z["samples"].shape != (
                self.n_resamples,
                len(COLUMNS),
            ):
                return None
            return z["full"], z["samples"]
        except (OSError, ValueError, KeyError):
            return None

    def _write_cache(self, sid: str, res: tuple[np.ndarray, np.ndarray]) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, key=np.array(self._cache_key(sid)), full=res[0], samples=res[1])
        (self.cache_dir / f"{sid}.npz").write_bytes(buf.getvalue())

    # -------------------------------------------------------------------------------- intervals
    def _runs(self, stage_ids: Sequence[str], column: str) -> tuple[list[tuple[float, np.ndarray]], str]:
        """[(full-set value, resampled values)] per run, or ([], why not)."""
        if not stage_ids:
            return [], "no finished run"
        missing = [s for s in stage_ids if self.outcome(s) is None]
        if missing:
            return [], f"no per-image outcome stored for {len(missing)} of {len(stage_ids)} run(s)"
        if len({image_set_key(self.outcome(s)) for s in stage_ids}) > 1:
            return [], "its runs were evaluated on different images"
        self.prepare(stage_ids)
        col = COLUMNS.index(column)
        return [(float(self._samples[s][0][col]), self._samples[s][1][:, col]) for s in stage_ids], ""

    def cell(self, stage_ids: Sequence[str], column: str = "AP") -> Interval:
        """The interval of a cell whose runs (seeds) are `stage_ids` (see the module docstring)."""
        runs, why = self._runs(stage_ids, column)
        if not runs:
            return Interval(how=why)
        values = np.array([v for v, _ in runs])
        point = float(values.mean())
        lo, hi = boot_interval(np.mean([s for _, s in runs], axis=0), LEVEL)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return Interval(point, runs=len(runs), how="undefined on most resamples")
        how = f"bootstrap over images ({self.n_resamples} resamples)"
        if len(runs) >= 2:
            seed_term = t975(len(runs) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(runs))
            lo = point - math.hypot(point - lo, seed_term)
            hi = point + math.hypot(hi - point, seed_term)
            how += f" widened by the spread of {len(runs)} seeds"
        return Interval(point, lo, hi, len(runs), how)

    def difference(self, a: Sequence[str], b: Sequence[str], column: str = "AP") -> Interval:
        """The interval of (cell a) − (cell b), paired over images (see the module docstring)."""
        runs_a, why_a = self._runs(a, column)
        runs_b, why_b = self._runs(b, column)
        if not runs_a or not runs_b:
            return Interval(how=f"A: {why_a}" if not runs_a else f"B: {why_b}")
        if image_set_key(self.outcome(a[0])) != image_set_key(self.outcome(b[0])):
            return Interval(how="not paired: the two sides were evaluated on different images")
        va, vb = np.array([v for v, _ in runs_a]), np.array([v for v, _ in runs_b])
        point = float(va.mean() - vb.mean())
        diffs = np.mean([s for _, s in runs_a], axis=0) - np.mean([s for _, s in runs_b], axis=0)
        lo, hi = boot_interval(diffs, LEVEL)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return Interval(point, how="undefined on most resamples")
        how = f"paired bootstrap over images ({self.n_resamples} resamples)"
        sides = [v for v in (va, vb) if len(v) >= 2]
        if sides:
            seed_term = t975(min(len(v) for v in sides) - 1) * math.sqrt(
                sum(float(np.var(v, ddof=1)) / len(v) for v in sides)
            )
            lo, hi = point - math.hypot(point - lo, seed_term), point + math.hypot(hi - point, seed_term)
            how += " widened by the seed spread"
        return Interval(point, lo, hi, len(runs_a) + len(runs_b), how)


def cell_runs(stage_ids: Iterable[str], stages: pd.DataFrame, metric: str = "AP") -> list[str]:
    """The finetunes among `stage_ids` that give a cell a value (status done, metric present), as
    `cells.aggregate` counts them."""
    by_id = stages.set_index("stage_id")
    out = []
    for sid in dict.fromkeys(stage_ids):
        if not str(sid).startswith("finetune-") or sid not in by_id.index:
            continue
        r = by_id.loc[sid]
        value = r[metric]
        if (
            r["status"] == StageState.DONE
            and value is not None
            and not (isinstance(value, float) and math.isnan(value))
        ):
            out.append(sid)
    return out


def add_intervals(table: pd.DataFrame, stages: pd.DataFrame, boots: Bootstraps) -> pd.DataFrame:
    """The table with `ap_lo`, `ap_hi` (AP %, 95 %), `ap_ci` (how) and the interval appended to
    `ap_measured` ("74.50 [74.21, 74.80]"). Tables without an AP metric are returned unchanged."""
    if "ap" not in table.attrs.get("metrics", []) or table.empty:
        return table
    table = table.copy()
    lo, hi, how, text = [], [], [], []
    for _, row in table.iterrows():
        runs = cell_runs(str(row.get("stages") or "").split(), stages)
        if row.get("split") == TEST_DEV:  # its finetunes' per-image outcomes are on val2017, not test-dev
            iv = Interval(how=NO_TEST_DEV_INTERVAL)
        else:
            iv = boots.cell(runs) if runs else Interval(how="")
        lo.append(100 * iv.lo)
        hi.append(100 * iv.hi)
        how.append(iv.how)
        measured = str(row["ap_measured"])
        text.append(f"{measured} {iv.text(100, 2)}" if iv.ok else measured)
    table["ap_lo"], table["ap_hi"], table["ap_ci"], table["ap_measured"] = lo, hi, how, text
    table.attrs["notes"] = [*table.attrs.get("notes", []), interval_note(boots)]
    return table


def interval_note(boots: Bootstraps) -> str:
    return (
        f"[lo, hi]: 95 % interval of the AP from a paired bootstrap over the evaluation images "
        f"({boots.n_resamples} resamples, seed {boots.seed}); with ≥ 2 seeds widened by the seed spread "
        "(docs/per-image.md). No interval: the cell's runs have no stored per-image outcome."
    )
