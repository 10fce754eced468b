"""The throughput benchmark runs end to end on CPU (small sizes) and prints its table, ratios and the
data-work line, for both data placements."""

from __future__ import annotations

import re

import pytest

from benchmarks import throughput


@pytest.mark.parametrize("placement", ["loader", "device"])
def test_benchmark_prints_rows_ratios_and_the_data_work_line(placement, capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    argv = ["--backbone", "hrnet_w32", "--task", "pretext", "--steps", "1", "--warmup", "0", "--images", "4",
            "--no-eval", "--decode-on", placement, "--augment-on", placement, "--json", str(out_json)]  # fmt: skip
    assert throughput.main(argv) == 0
    text = capsys.readouterr().out
    assert f"ours decodes on the {placement} and augments pretext puzzles on the {placement}" in text
    assert "NOTE: CPU / --small run" in text
    rows = [line for line in text.splitlines() if line.startswith("hrnet_w32")]
    assert [line.split()[5] for line in rows] == ["ours", "reference"]
    assert all(float(line.split()[6]) > 0 for line in rows)  # full img/s measured
    assert all(float(line.split()[8]) > 0 for line in rows)  # data img/s (loader capacity) measured
    assert "numerics (both pipelines): cuDNN TF32" in text and "compile off" in text
    assert re.search(r"ours/ref\s+\d+\.\d\dx\s+\d+\.\d\dx", text)
    assert re.search(r"decode \+ crop: OpenCV per sample on one core \d+\.\d\d, batched on the cpu \d", text)
    assert out_json.exists() and '"decode_on": "' + placement + '"' in out_json.read_text()


def test_the_benchmark_loader_workers_default_is_the_studies_value():
    from pathlib import Path

    import yaml  # the studies' own format

    studies = Path(__file__).resolve().parents[2] / "studies"
    values = {
        yaml.safe_load(p.read_text()).get("data", {}).get("loader_workers") for p in studies.glob("*.yaml")
    }
    assert throughput.STUDY_WORKERS in values and throughput.FULL.workers == throughput.STUDY_WORKERS
