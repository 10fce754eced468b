"""Shared fixtures: the real COCO samples named by HSJP_SHARED_DATA (default: a `shared/data` folder beside
the checkout; skipped with a reason when absent), and an S3-protocol object store on loopback (moto)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HSJP_SHARED_DATA", REPO.parent / "shared" / "data"))

# One intra-op thread for every test (nothing in the code under test raises it): faster than 2 for tiny
# tensors, bit-identical reruns, and no oversubscription on a shared 2-core machine, where two spinning
# OpenMP threads made a training step ~10x and normalize_image's elementwise ops ~20x slower.
torch.set_num_threads(1)

# Ray Train's controller looks at its worker group every 2 s (ray.train.v2 constants:
# DEFAULT_HEALTH_CHECK_INTERVAL_S = 2.0), so a stage that has finished is noticed up to 2 s late; the
# end-to-end tests run ~80 short stages, and every local Ray and driver they start inherits this
# environment. 0.2 s takes ~2 s off each stage and changes nothing a test checks (docs/ray.md §5).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session", autouse=True)
def local_ray_records(tmp_path_factory) -> Path:
    """The local-Ray records (orchestrator.ray.host) of this test session only: a test on a shared machine
    neither takes its share from real runs (or other test sessions) nor ends their processes. Tests of
    the records themselves point HSJP_LOCAL_STATE at their own folder."""
    folder = tmp_path_factory.mktemp("local-ray")
    os.environ.setdefault("HSJP_LOCAL_STATE", str(folder))
    return Path(os.environ["HSJP_LOCAL_STATE"])


def _sample(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "annotations").is_dir():
        pytest.skip(
            f"real COCO samples not found at {root} (set HSJP_SHARED_DATA to the folder of coco-mini)"
        )
    return root


@pytest.fixture
def coco_mini() -> Path:
    """coco-mini: 30 train + 30 val images of COCO 2017 with original ids."""
    return _sample("coco-mini")


@pytest.fixture
def coco_dets() -> Path:
    """coco-dets: 4 val2017 images + HRNet's person detection slice (118 boxes)."""
    return _sample("coco-dets")


# ------------------------------------------------------------------------- an S3 server on loopback
@dataclass(frozen=True)
class S3Server:
    """A moto S3-protocol server on 127.0.0.1 (credentials in the environment, for every process
    started after the fixture, Ray workers included)."""

    port: int
    bucket: str

    def uri(self, prefix: str) -> str:
        """A store URI inside the bucket; the query carries pyarrow's options (kept on every path)."""
        return (
            f"s3://{self.bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http"
            "&region=us-east-1"
        )

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
            allow_bucket_creation=True,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """`moto_server` on a free loopback port for the whole session; stopped (by its pid) at the end."""
    pytest.importorskip("moto", reason="moto[server] is a test dependency (pip install -e '.[test]')")
    port = _free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never look for instance credentials off this machine
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"moto_server did not start on 127.0.0.1:{port}") from None
                    time.sleep(0.2)
            server = S3Server(port=port, bucket="hsjp-test")
            server.filesystem().create_dir(server.bucket)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ----------------------------------------------------------------------- the smoke study, run once
SMOKE_TEST_SCALE = {
    "data.synthetic.train": 48,  # 96 shipped
    "data.synthetic.val": 6,  # 12
    "defaults.pretrain.epochs": 8,  # 24 (evaluated every 8: at 8, 16, 24)
    "defaults.pretrain.eval_every": 4,  # two evaluations, the last one at the end, as shipped
    "defaults.finetune.epochs": 8,  # 16 (evaluated once, at the end)
    "defaults.finetune.eval_every": 8,
}
"""The shipped smoke study at test scale: the same matrix, includes, model, input sizes, compute and
trackers, so the same trials, stage kinds, shared pretrain and code paths; fewer synthetic images and
epochs (a 3-minute run becomes a ~1-minute one). What it does not keep is the shipped study's toy
learning signal (P ≈ 0.9 after 24 epochs), which no test asserts. The pretrain keeps 8 epochs so that
tests/reliability/test_object_store.py can kill it after its second one; the finetunes keep 8 so that
each W&B run lives a few seconds: the known W&B defect (orchestrator/spec/tracking.py: the last rows of a
run lost when Ray ends its logging actor) emptied a 4-epoch run's history once, which
tests/reports/test_smoke_report.py rightly fails."""


def smoke_study_for_tests(folder: Path, **data: str) -> Path:
    """studies/smoke.yaml with SMOKE_TEST_SCALE applied (`data`: more data keys, e.g. a coco_root
    instead of the synthetic set), written to `folder`/smoke.yaml; returns its path."""
    import yaml

    raw = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    for dotted, value in SMOKE_TEST_SCALE.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        assert leaf in node, dotted  # the shipped study still has the field
        node[leaf] = value
    if data:
        raw["data"].pop("synthetic")
        raw["data"].update(data)
    path = Path(folder) / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory):
    """The shipped smoke study (at test scale, `smoke_study_for_tests`) run once, uninterrupted, into a
    local store with the real workloads (plan, store, summary): what the end-to-end tests check and
    what interrupted runs must equal. When mlflow and wandb are installed (`make test` installs them)
    the run has every tracker on — an MLflow file store and W&B offline under `tracking_dirs` — which
    changes no result."""
    import dataclasses
    import importlib.util
    from types import SimpleNamespace

    from orchestrator.cli.run import run_study
    from orchestrator.plan import make_plan
    from orchestrator.spec.inputs import prepare_data
    from orchestrator.spec.study import load_study
    from orchestrator.store.store import Store

    base = tmp_path_factory.mktemp("smoke-reference")
    study = load_study(smoke_study_for_tests(base))
    store = Store(base / "store")
    plan = make_plan(study, prepare_data(study, store))
    tracking_dirs = None
    if all(importlib.util.find_spec(m) is not None for m in ("mlflow", "wandb")):
        tracking_dirs = SimpleNamespace(mlruns=base / "mlruns", wandb=base / "wandb")
        plan = dataclasses.replace(
            plan,
            tracking={
                "mlflow": {"tracking_uri": tracking_dirs.mlruns.as_uri(), "experiment_name": "smoke"},
                "wandb": {"project": "hsjp-smoke", "mode": "offline", "dir": str(tracking_dirs.wandb)},
            },
        )
    summary = run_study(plan, store, study_text=study.text)
    return SimpleNamespace(study=study, plan=plan, store=store, summary=summary, tracking_dirs=tracking_dirs)
