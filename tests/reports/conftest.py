"""A result store with known results, built through `orchestrator.store.store.Store`'s own API."""

from __future__ import annotations

import hashlib
import json

import matplotlib
import pytest

matplotlib.use("Agg")

from orchestrator.store.store import Store  # noqa: E402
from workloads.config import FinetuneConfig, ModelConfig, PretrainConfig, to_dict  # noqa: E402

OKS = [f"{t:.2f}" for t in [0.5 + 0.05 * i for i in range(10)]]
DATA = {"coco_root": "/data/synthetic", "val_split": "val2017", "max_train_instances": 8}


def _sid(kind: str, payload: dict) -> str:
    return f"{kind}-" + hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def finetune_metrics(ap: float) -> dict:
    """Metrics as the pose workload reports them: fractions, per-OKS AP, error shares."""
    metrics = {k: ap for k in ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")}
    metrics["ap_per_oks"] = {t: max(0.0, ap + 0.2 - 0.04 * i) for i, t in enumerate(OKS)}
    good = min(1.0, ap + 0.1)
    rest = (1.0 - good) / 4
    metrics["errors"] = {
        "overall": {"good": good, "jitter": rest, "inversion": rest, "swap": rest, "miss": rest},
        "per_keypoint": {},
    }
    # the reported AP is on the detections; the model selection's (GT boxes) is kept beside it
    metrics.update(eval_boxes="detections", select_AP=ap + 0.03, select_boxes="gt")
    return metrics


class StoreBuilder:
    """Writes pretrain / finetune stages and study plans with the values a test chooses."""

    def __init__(self, root):
        self.store = Store(root)
        self.trials: dict[str, list[dict]] = {}
        self.stages: dict[str, dict] = {}

    def pretrain(
        self,
        method="hsjp",
        *,
        backbone="hrnet_w32",
        width=8,
        n=6,
        lr=1e-3,
        epochs=2,
        concat=False,
        seed=0,
        precision=0.5,
        status="done",
        gpu_hours=1.0,
    ) -> tuple[str, dict]:
        cfg = PretrainConfig(
            method=method,
            model=ModelConfig(backbone=backbone, width=width),
            n=n,
            lr=lr,
            epochs=epochs,
            concat_original=concat,
            seed=seed,
            input_size=64,
            heatmap_size=16,
            checkpoint="/w/imagenet.pth" if method == "imagenet" else None,
        )
        cfg_dict = to_dict(cfg)
        sid = _sid("pretrain", cfg_dict)
        self.stages[sid] = {
            "stage_id": sid,
            "kind": "pretrain",
            "config": cfg_dict,
            "parent": None,
            "work": method == "hsjp",
        }
        self._write(
            sid,
            "pretrain",
            cfg_dict,
            None,
            status,
            {"precision": precision} if method == "hsjp" else {},
            gpu_hours if method == "hsjp" else 0.0,
            work=method == "hsjp",
        )
        return sid, cfg_dict

    def finetune(
        self,
        pretrain: tuple[str, dict],
        *,
        ap=0.5,
        freeze=None,
        label_fraction=1.0,
        epochs=2,
        seed=0,
        status="done",
        gpu_hours=0.5,
        study="s",
        val_split="val2017",
        ft_lr=1e-3,
    ) -> str:
        pt_id, pt_cfg = pretrain
        backbone = pt_cfg["model"]["backbone"]
        cfg = to_dict(
            FinetuneConfig(
                model=ModelConfig(backbone=backbone, width=pt_cfg["model"]["width"]),
                freeze=freeze,
                label_fraction=label_fraction,
                epochs=epochs,
                seed=seed,
                lr=ft_lr,
            )
        )
        cfg["init"] = {"method": pt_cfg["method"], "pretrain": pt_cfg}
        sid = _sid("finetune", {"cfg": cfg, "parent": pt_id, "split": val_split})
        self.stages[sid] = {"stage_id": sid, "kind": "finetune", "config": cfg, "parent": pt_id, "work": True}
        self.trials.setdefault(study, []).append(
            {
                "trial_id": f"t{len(self.trials.get(study, []))}",
                "params": {},
                "pretrain": pt_id,
                "finetune": sid,
            }
        )
        self._write(
            sid,
            "finetune",
            cfg,
            pt_id,
            status,
            finetune_metrics(ap),
            gpu_hours,
            data={**DATA, "val_split": val_split},
        )
        return sid

    def _write(self, sid, kind, cfg, parent, status, metrics, gpu_hours, data=DATA, work=True):
        if status == "pending":
            return
        # config.json as the orchestrator writes it (orchestrator.schedule.stage.stage_record)
        record = {"stage_id": sid, "kind": kind, "config": cfg, "data": data, "parent": parent, "work": work}
        self.store.write_stage_config(sid, record)
        if status == "running":
            self.store.append_metrics(sid, {"epoch": 0, "loss": 0.1})
            return
        if status == "failed":
            self.store.append_metrics(sid, {"epoch": 0, "loss": 0.1})
            self.store.record_error(sid, "Traceback ...\nRuntimeError: CUDA out of memory")
            return
        result = {
            "kind": kind,
            "status": status,
            "config": cfg,
            "data": data,
            "parent": parent,
            "work": work,
            "metrics": metrics if status == "done" else {},
            "collapsed": status == "collapsed",
            "collapsed_epoch": 1 if status == "collapsed" else None,
            "epochs_trained": [0, 1],
            "wall_seconds": 10.0,
            "device_hours": gpu_hours,
            "gpu_hours": gpu_hours,
            "provenance": {},
        }
        if status == "skipped":
            result["reason"] = "pretrain collapsed"
        self.store.write_result(sid, result)

    def write_plans(self) -> None:
        for study, trials in self.trials.items():
            used = {t[k] for t in trials for k in ("pretrain", "finetune")}
            plan = {
                "study": study,
                "trials": trials,
                "stages": {sid: spec for sid, spec in self.stages.items() if sid in used},
            }
            self.store.write_study(study, f"name: {study}\n", plan)


@pytest.fixture
def builder(tmp_path) -> StoreBuilder:
    return StoreBuilder(tmp_path / "store")


def build_known_store(root) -> StoreBuilder:
    """A smoke-scale store (pretrain 2 ep, finetune 2 ep) with every kind of cell the report knows.

    HRNet: scratch 60.0 (2 ep) / 65.0 (5 ep, the 'long' run); ImageNet 70.0; HSJP N=6 lr 1e-3 2 ep, two
    pretrain seeds (P 0.30 / 0.40, AP 72.0 / 74.0, GPU-h 1.0 + 0.5 each); N=3 (P 0.90, AP 71.0); lr 2e-3
    collapsed (finetune skipped); lr 3e-4 running (finetune pending); 1 ep failed; 4 ep (P 0.50, AP 75.0);
    N=2 with the original (P 0.99, AP 73.0); freeze 0–2 / 0–3 / 0–4 → 70.0 / 60.0 / collapsed; labels
    10 % / 50 % → 50.0 / 65.0 and scratch 10 % → 30.0. SimpleBaseline: ImageNet 69.0.
    """
    b = StoreBuilder(root)
    b.ids = {}
    scratch, imagenet = b.pretrain("scratch"), b.pretrain("imagenet")
    b.ids["scratch"] = b.finetune(scratch, ap=0.60, gpu_hours=0.25)
    b.ids["scratch_long"] = b.finetune(scratch, ap=0.65, epochs=5, gpu_hours=0.75)
    b.ids["imagenet"] = b.finetune(imagenet, ap=0.70, gpu_hours=0.5)
    p6a = b.pretrain(precision=0.30, seed=0)
    p6b = b.pretrain(precision=0.40, seed=1)
    b.ids["p6a"], b.ids["p6b"] = p6a[0], p6b[0]
    b.ids["hsjp_a"] = b.finetune(p6a, ap=0.72)
    b.ids["hsjp_b"] = b.finetune(p6b, ap=0.74)
    b.finetune(b.pretrain(n=3, precision=0.90), ap=0.71)
    b.finetune(b.pretrain(lr=2e-3, status="collapsed"), status="skipped")
    b.finetune(b.pretrain(lr=3e-4, status="running"), status="pending")
    b.finetune(b.pretrain(epochs=1, status="failed"), status="pending")
    b.finetune(b.pretrain(epochs=4, precision=0.50), ap=0.75)
    b.finetune(b.pretrain(n=2, concat=True, precision=0.99), ap=0.73)
    b.finetune(p6a, ap=0.70, freeze=2, study="fig5")
    b.finetune(p6a, ap=0.60, freeze=3, study="fig5")
    b.finetune(p6a, freeze=4, status="collapsed", study="fig5")
    b.finetune(p6a, ap=0.50, label_fraction=0.1, study="fig6")
    b.finetune(p6a, ap=0.65, label_fraction=0.5, study="fig6")
    b.finetune(scratch, ap=0.30, label_fraction=0.1, study="fig6")
    b.finetune(b.pretrain("imagenet", backbone="simplebaseline_r50"), ap=0.69)
    b.write_plans()
    return b


@pytest.fixture(scope="module")
def known_store(tmp_path_factory) -> StoreBuilder:
    """`build_known_store` in a fresh folder, once per test module."""
    return build_known_store(tmp_path_factory.mktemp("store"))
