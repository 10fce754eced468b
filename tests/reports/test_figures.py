"""Figures 3–6: the plotted series (line data, bar heights) are the store's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.text import Text

from reports.collect import collect
from reports.figures import OKS_THRESHOLDS, figure3, figure4, figure5, figure6
from reports.tables import load_reported

REPORTED = load_reported()


@pytest.fixture(scope="module")
def stages(known_store):
    return collect(known_store.store.uri)


def _caption(fig) -> str:
    """The figure's caption (the one text that quotes the paper), whitespace normalised."""
    texts = [" ".join(t.get_text().split()) for t in fig.findobj(Text)]
    return next(t for t in texts if t.startswith("Paper"))


def test_figure3_lines_are_per_oks_ap(stages):
    fig, data = figure3(stages, REPORTED)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"scratch", "ImageNet", "HSJP"}
    # builder: AP at OKS index i = AP + 0.2 − 0.04 i; HSJP = mean of the two seeds (AP 0.72, 0.74)
    expected = {"scratch": 0.60, "ImageNet": 0.70, "HSJP": 0.73}
    for label, ap in expected.items():
        np.testing.assert_allclose(lines[label].get_xdata(), OKS_THRESHOLDS)
        np.testing.assert_allclose(lines[label].get_ydata(), [100 * (ap + 0.2 - 0.04 * i) for i in range(10)])
    hsjp = data[data["method"] == "hsjp"]
    assert list(hsjp["n"]) == [2] * 10 and hsjp["ap_std"].iloc[0] == pytest.approx(
        100 * np.std([0.92, 0.94], ddof=1)
    )
    assert "HSJP >= ImageNet" in _caption(fig)  # the paper's claim (no values published)


def test_figure4_stacked_bar_heights(stages):
    fig, data = figure4(stages, REPORTED)
    ax = fig.axes[0]
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
    assert list(bars) == ["good", "jitter", "inversion", "swap", "miss"]
    np.testing.assert_allclose(bars["good"], [70.0, 80.0, 83.0])  # builder: good = AP + 0.1
    np.testing.assert_allclose(bars["miss"], [7.5, 5.0, 4.25])
    np.testing.assert_allclose(np.sum(list(bars.values()), axis=0), 100.0)
    assert len(data) == 15


def test_figure5_freeze_bars_and_collapse(stages):
    fig, data = figure5(stages, REPORTED)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "0–2", "0–3", "0–4"]
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [73.0, 70.0, 60.0, 0.0])
    assert list(data["status"]) == ["done", "done", "done", "collapsed"]
    assert list(data["freeze"]) == [None, 2, 3, 4]
    assert "collapsed" in [t.get_text() for t in ax.texts]


def test_figure6_label_fraction_lines(stages):
    fig, data = figure6(stages, REPORTED)
    ax = fig.axes[0]
    series = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(series) == {"HSJP", "scratch", "ImageNet"}
    np.testing.assert_allclose(series["HSJP"].get_xdata(), [10, 50, 100])
    np.testing.assert_allclose(series["HSJP"].get_ydata(), [50.0, 65.0, 73.0])
    np.testing.assert_allclose(series["scratch"].get_ydata(), [30.0, 60.0])
    np.testing.assert_allclose(series["ImageNet"].get_xdata(), [100])
    assert len(data) == 6


@pytest.mark.parametrize("figure", [figure3, figure4, figure5, figure6])
def test_empty_store_draws_no_series_and_says_not_run(figure, tmp_path):
    fig, data = figure(collect(tmp_path / "none"), REPORTED)
    ax = fig.axes[0]
    assert data.empty or set(data["status"]) == {"not run"}
    assert not [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert any("not run" in t.get_text() for t in ax.texts)
    assert _caption(fig).startswith("Paper (no values published)")
