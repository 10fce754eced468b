"""Intervals in the report: finetunes with stored per-image outcomes (from COCOeval on one synthetic
evaluation set) give AP cells `74.50 [..]`, paired differences, seed-widened intervals, error bars
in the figures; cells without an outcome say so; bootstrap samples are cached."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest

from reports.bootstrap import STAT_NAMES, Accumulator, read_outcome
from reports.build import make_report
from reports.collect import collect
from reports.differences import differences
from reports.intervals import Bootstraps, t975
from tests.reports.conftest import OKS, StoreBuilder
from tests.reports.test_bootstrap import run_cocoeval, synthetic_eval_set
from workloads.pose.per_image import extract

GT, _ = synthetic_eval_set(seed=0, n_images=40)
B = 200  # resamples: enough for these checks, fast


def detections(noise: float, seed: int) -> list[dict]:
    """Results for GT: every scored person found with keypoint noise ∝ its size, plus a few FPs."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in GT["annotations"]:
        if a["num_keypoints"] == 0 or a["iscrowd"]:
            continue
        k = np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)
        k[:, :2] += rng.normal(0, noise * np.sqrt(a["area"]), size=(17, 2))
        k[:, 2] = 1
        dets.append({"image_id": a["image_id"], "category_id": 1, "keypoints": k.reshape(-1).tolist(),
                     "score": float(rng.uniform(0.3, 1))})  # fmt: skip
    for im in GT["images"][::4]:
        k = np.zeros((17, 3))
        k[:, :2], k[:, 2] = rng.uniform(0, 300, size=(17, 2)), 1
        dets.append(
            {"image_id": im["id"], "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": 0.5}
        )
    return dets


def evaluated(builder: StoreBuilder, sid: str, noise: float, seed: int) -> float:
    """Replace a finetune's metrics by COCOeval's on `detections(noise, seed)` and store its outcome."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = run_cocoeval(GT, detections(noise, seed))
    store = builder.store
    result = store.read_json(store.stage_path(sid, "result.json"))
    metrics = dict(zip(STAT_NAMES, map(float, ev.stats)))
    precision = ev.eval["precision"][:, :, 0, 0, 0]
    metrics["ap_per_oks"] = {t: float(p[p > -1].mean()) for t, p in zip(OKS, precision)}
    metrics["errors"] = result["metrics"]["errors"]
    result["metrics"] = metrics
    store.write_json(store.stage_path(sid, "result.json"), result)
    store.write_bytes(store.stage_path(sid, "per_image.npz"), extract(ev).to_bytes())
    return metrics["AP"]


@pytest.fixture(scope="module")
def outcome_store(tmp_path_factory):
    b = StoreBuilder(tmp_path_factory.mktemp("store"))
    b.ids, b.ap = {}, {}
    scratch = b.pretrain("scratch")
    p6a, p6b = b.pretrain(seed=0), b.pretrain(seed=1)
    for name, pt, noise, seed, kw in (
        ("scratch", scratch, 0.10, 1, {}),
        ("hsjp_a", p6a, 0.06, 2, {}),
        ("hsjp_b", p6b, 0.07, 3, {}),
        ("freeze2", p6a, 0.09, 4, {"freeze": 2, "study": "fig5"}),
    ):
        b.ids[name] = b.finetune(pt, **kw)
        b.ap[name] = evaluated(b, b.ids[name], noise, seed)
    b.ids["no_outcome"] = b.finetune(b.pretrain("imagenet"), ap=0.7)  # ran before outcomes were stored
    b.write_plans()
    return b


@pytest.fixture(scope="module")
def report(outcome_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    make_report(outcome_store.store.uri, out, n_resamples=B)
    return out


def test_ap_cells_carry_an_interval_around_the_measured_value(report, outcome_store):
    t1 = pd.read_csv(report / "table1.csv")
    hrnet = t1[(t1["backbone"] == "HRNet-W32") & (t1["split"] == "val2017")].set_index("pretraining")
    scratch = hrnet.loc["scratch"]
    assert scratch["ap"] == pytest.approx(100 * outcome_store.ap["scratch"])
    assert scratch["ap_lo"] < scratch["ap"] < scratch["ap_hi"]
    assert scratch["ap_measured"] == f"{scratch['ap']:.2f} [{scratch['ap_lo']:.2f}, {scratch['ap_hi']:.2f}]"
    imagenet = hrnet.loc["imagenet"]
    assert np.isnan(imagenet["ap_lo"]) and "no per-image outcome" in imagenet["ap_ci"]
    assert "[" not in imagenet["ap_measured"]
    md = (report / "table1.md").read_text()
    assert scratch["ap_measured"] in md and "paired bootstrap over the evaluation images" in md


def test_two_seeds_widen_the_interval_by_their_spread(report, outcome_store):
    stages = collect(outcome_store.store.uri)
    boots = Bootstraps(outcome_store.store.uri, n_resamples=B)
    a, b = outcome_store.ids["hsjp_a"], outcome_store.ids["hsjp_b"]
    both, only_boot = boots.cell([a, b]), boots.cell([a])
    values = np.array([outcome_store.ap["hsjp_a"], outcome_store.ap["hsjp_b"]])
    assert both.value == pytest.approx(values.mean(), abs=1e-12)
    seed_term = t975(1) * values.std(ddof=1) / np.sqrt(2)
    assert both.hi - both.lo > 2 * seed_term > 0 and "2 seeds" in both.how
    assert only_boot.hi - only_boot.lo < both.hi - both.lo
    t1 = pd.read_csv(report / "table1.csv")
    hsjp = t1[
        (t1["backbone"] == "HRNet-W32") & (t1["pretraining"] == "hsjp_n6") & (t1["split"] == "val2017")
    ].iloc[0]
    assert hsjp["ap_lo"] == pytest.approx(100 * both.lo) and "± " in hsjp["ap_measured"]
    assert stages is not None


def test_hsjp_minus_scratch_is_paired_and_has_an_interval(report, outcome_store):
    diffs = pd.read_csv(report / "differences.csv").set_index("comparison")
    row = diffs.loc["hrnet_w32: HSJP − scratch (Table 1, val2017)"]
    hsjp = np.mean([outcome_store.ap["hsjp_a"], outcome_store.ap["hsjp_b"]])
    assert row["delta"] == pytest.approx(100 * (hsjp - outcome_store.ap["scratch"]), abs=1e-9)
    assert row["lo"] < row["delta"] < row["hi"] and row["text"].startswith("Δ +")
    assert row["paper_delta"] == pytest.approx(1.6)  # 74.5 − 72.9
    assert "no per-image outcome" in diffs.loc["hrnet_w32: HSJP − ImageNet (Table 1, val2017)"]["how"]
    freeze = diffs.loc["Fig. 5: freeze stages 0–2 − full finetuning (HSJP)"]
    assert np.isfinite(freeze["lo"]) and freeze["delta"] < 0
    assert "HSJP − scratch" in (report / "differences.md").read_text()
    assert "Delta" in (report / "differences.tex").read_text()


def test_pairing_narrows_the_difference_of_correlated_runs(outcome_store):
    """Same images on both sides: the paired interval is narrower than combining independent ones."""
    boots = Bootstraps(outcome_store.store.uri, n_resamples=B)
    a, s = outcome_store.ids["hsjp_a"], outcome_store.ids["scratch"]
    paired, ia, is_ = boots.difference([a], [s]), boots.cell([a]), boots.cell([s])
    assert paired.hi - paired.lo < np.hypot(ia.hi - ia.lo, is_.hi - is_.lo)


def test_figures_draw_the_intervals(report, outcome_store):
    fig5 = pd.read_csv(report / "figure5.csv")
    frozen = fig5[fig5["label"] == "0–2"].iloc[0]
    assert frozen["ap_lo"] < frozen["ap"] < frozen["ap_hi"]
    fig3 = pd.read_csv(report / "figure3.csv")
    scratch = fig3[fig3["method"] == "scratch"]
    assert (scratch["ap_lo"] <= scratch["ap"] + 1e-9).all() and (
        scratch["ap_hi"] >= scratch["ap"] - 1e-9
    ).all()
    assert scratch["ap_hi"].gt(scratch["ap_lo"]).any()


def test_stage_page_shows_the_interval_and_the_outcome(report, outcome_store):
    page = (report / "stages" / f"{outcome_store.ids['scratch']}.html").read_text()
    assert "per_image.npz</code> (40 images" in page and "95 %" in page
    assert "index.html#table1" in page  # what it fed: the table row that uses it


def test_the_bootstrap_is_cached_and_reproducible(report, outcome_store, tmp_path):
    before = (report / "differences.csv").read_text()
    cache = sorted(p.name for p in (report / "bootstrap-cache").iterdir())
    assert cache == sorted(f"{outcome_store.ids[k]}.npz" for k in ("scratch", "hsjp_a", "hsjp_b", "freeze2"))
    boots = Bootstraps(outcome_store.store.uri, report / "bootstrap-cache", n_resamples=B)
    boots.prepare(outcome_store.ids.values())
    assert boots.seconds == 0.0  # every sample read back from the cache
    make_report(outcome_store.store.uri, report, n_resamples=B)
    assert (report / "differences.csv").read_text() == before
    fresh = tmp_path / "fresh"
    make_report(outcome_store.store.uri, fresh, n_resamples=B)
    assert (fresh / "differences.csv").read_text() == before  # seeded: same resamples, same intervals


def test_a_corrupt_outcome_file_loses_only_its_interval(outcome_store, caplog):
    store = outcome_store.store
    sid = outcome_store.ids["freeze2"]
    path = store.stage_path(sid, "per_image.npz")
    good = store.read_bytes(path)
    try:
        store.write_bytes(path, b"garbage")
        boots = Bootstraps(store.uri, n_resamples=20)
        assert boots.outcome(sid) is None and "per_image.npz" in caplog.text
        assert not boots.cell([sid]).ok
        assert boots.cell([outcome_store.ids["scratch"]]).ok
    finally:
        store.write_bytes(path, good)
    assert np.isclose(Accumulator(read_outcome(good)).stats()[0], outcome_store.ap["freeze2"], atol=1e-12)
    assert differences is not None
