"""Shared fixtures: the real COCO samples in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HSJP_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)  # faster than 2 for tiny tensors, and stable when Ray workers share the cores


@pytest.fixture(scope="session", autouse=True)
def local_ray_records(tmp_path_factory) -> Path:
    """The local-Ray records (orchestrator.host) of this test session only: a test on a shared machine
    neither takes its share from real runs (or other test sessions) nor ends their processes. Tests of
    the records themselves point HSJP_LOCAL_STATE at their own folder."""
    folder = tmp_path_factory.mktemp("local-ray")
    os.environ.setdefault("HSJP_LOCAL_STATE", str(folder))
    return Path(os.environ["HSJP_LOCAL_STATE"])


def _sample(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "annotations").is_dir():
        pytest.skip(f"real COCO samples not found at {root} (set HSJP_SHARED_DATA or place ../shared/data)")
    return root


@pytest.fixture
def coco_mini() -> Path:
    """../shared/data/coco-mini: 30 train + 30 val images of COCO 2017 with original ids."""
    return _sample("coco-mini")


@pytest.fixture
def coco_dets() -> Path:
    """../shared/data/coco-dets: 4 val2017 images + HRNet's person detection slice (118 boxes)."""
    return _sample("coco-dets")
