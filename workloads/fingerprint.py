"""Golden numerics fingerprints: what guards `workloads.WORKLOAD_VERSIONS`.

A fingerprint is a handful of numbers from a fixed-seed tiny run of a workload's real entry point
(`run_pretrain` / `run_finetune`) on a generated synthetic COCO set, on CPU in one thread: the loss and
learning rate of each epoch (data sampling, augmentation draws, targets, the loss, Adam, the LR drop),
the evaluation metrics (HSJP precision and patch accuracy from the peak decoding; pose AP from
flip-test inference, decoding, rescoring, OKS-NMS and COCO evaluation) and checksums of the output
weights (model init, the pose finetune's layer transfer from a pretrain's state dict). Anything that
changes what a workload computes moves at least one of them.

`workloads/fingerprints.json` holds the fingerprint recorded for each workload's current version. The
test (tests/workloads/test_fingerprint.py) recomputes them: a difference fails, naming the workload and
the version to bump, so a numerics change can no longer reuse a store's results as if they were current
(orchestrator.schedule.lineage names stages of an older version stale).

    python -m workloads.fingerprint                 # compute and compare both
    python -m workloads.fingerprint --record pose   # after a bump: record the new version's fingerprint
    python -m workloads.fingerprint --record pose --replace   # re-record the same version (a platform
                                                    # change moved the last digits, nothing else)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workloads import WORKLOAD_VERSIONS
from workloads.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig

GOLDEN_FILE = Path(__file__).with_name("fingerprints.json")
SIGNIFICANT = 6  # digits kept of each value (the digest is of these)
RTOL, ATOL = 1e-4, 1e-7  # a recorded value matches within these (CPU kernels of another torch build)

_TINY = ModelConfig(backbone="hrnet_w32", width=4, num_blocks=1, num_modules=(1, 1, 1))
_PRETRAIN = PretrainConfig(
    model=_TINY,
    n=2,
    input_size=32,
    heatmap_size=8,
    epochs=3,
    lr_steps=(160,),  # given for 240 epochs: scaled to a drop at epoch 2 of 3
    eval_every=1,
    batch_size=4,
    seed=3,
)
_FINETUNE = FinetuneConfig(
    model=_TINY,
    input_hw=(64, 64),
    heatmap_hw=(16, 16),
    sigma=1.0,
    epochs=3,
    lr_steps=(140,),  # given for HRNet's 210 epochs: scaled to a drop at epoch 2 of 3
    eval_every=1,
    batch_size=4,
    seed=3,
)


def _data(root: str) -> DataConfig:
    from workloads.data.synthetic import DETECTION_FILE

    return DataConfig(
        coco_root=root,
        detection_file=f"{root}/{DETECTION_FILE}",
        loader_workers=0,
        max_train_instances=8,
        max_val_instances=4,
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a reduction's order follows the thread count
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _round(x: float) -> float:
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{SIGNIFICANT}g}")


def _weights(state: dict[str, torch.Tensor] | None, prefix: str = "weights") -> dict[str, float]:
    if not state:
        return {f"{prefix}.tensors": 0.0}
    floats = [t.detach().double().flatten() for t in state.values() if t.is_floating_point()]
    flat = torch.cat(floats)
    ramp = torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64)  # order-sensitive
    return {
        f"{prefix}.tensors": float(len(state)),
        f"{prefix}.sum": float(flat.sum()),
        f"{prefix}.sum_sq": float(flat.pow(2).sum()),
        f"{prefix}.ramp": float((flat * ramp).sum()),
    }


def _epochs(folder: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in ("loss", "lr"):
            if isinstance(row.get(key), (int, float)):
                out[f"epoch{row['epoch']}.{key}"] = float(row[key])
    return out


def _metrics(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), (int, float))}


def _sums(prefix: str, **tensors: Any) -> dict[str, float]:
    out = {}
    for name, t in tensors.items():
        t = torch.as_tensor(t).double()
        out[f"{prefix}.{name}.sum"] = float(t.sum())
        out[f"{prefix}.{name}.sum_sq"] = float(t.pow(2).sum())
    return out


def _hsjp_samples(root: str) -> dict[str, float]:
    """Training and validation puzzles (the augmentation draws, shuffle, composite), their eq. (1)
    targets, and the peak decoding of those targets against the true centres (eq. 3 / 4)."""
    from workloads.hsjp.dataset import PuzzleDataset, load_instances
    from workloads.hsjp.precision import decode_peaks, located_patches
    from workloads.hsjp.targets import heatmap_stride, make_heatmaps

    cfg, out = _PRETRAIN, {}
    stride = heatmap_stride(cfg.input_size, cfg.heatmap_size)
    for train in (True, False):
        ds = PuzzleDataset(
            load_instances(_data(root), train=train, seed=cfg.seed), cfg, train=train, seed=cfg.seed
        )
        items = [ds[(1, i) if train else i] for i in range(min(4, len(ds)))]
        batch = torch.utils.data.default_collate(items)
        hw = (cfg.heatmap_size, cfg.heatmap_size)
        target = make_heatmaps(batch["centers_xy"], batch["mask"], hw, stride, cfg.sigma)
        peaks = decode_peaks(target, stride)
        name = "train" if train else "val"
        out.update(_sums(name, image=batch["image"], centers=batch["centers_xy"], target=target, peaks=peaks))
        out[f"{name}.located"] = float(located_patches(peaks, batch["centers_xy"], cfg.eps).float().mean())
    return out


def _pose_samples(root: str) -> dict[str, float]:
    """Training samples (the box, scale / rotation / flip / half-body draws, the affine crop), their
    Gaussian targets and weights, the flip-test merge and the official decoding of those targets."""
    from workloads.pose.dataset import PoseTrainDataset, load_train_instances
    from workloads.pose.decode import decode_heatmaps
    from workloads.pose.flip import flip_back, merge_flipped

    instances, _ = load_train_instances(_FINETUNE, _data(root))
    ds = PoseTrainDataset(instances, _FINETUNE, seed=_FINETUNE.seed)
    images, heatmaps, weights = torch.utils.data.default_collate([ds[(1, i)] for i in range(min(4, len(ds)))])
    merged = merge_flipped(heatmaps, flip_back(heatmaps.flip(-1)), shift=_FINETUNE.shift_heatmap)
    coords, maxvals = decode_heatmaps(merged)
    return _sums(
        "train", image=images, target=heatmaps, weight=weights, merged=merged, coords=coords, maxvals=maxvals
    )


def _pose_evaluation(root: str, weights: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """Flip-test inference of the finetuned model on the detections (crop, forward, flip merge,
    decoding, rescoring, OKS-NMS), and COCO evaluation with the error analysis of results made from
    the ground truth with a fixed jitter (AP of an untrained tiny model is 0: it would check nothing)."""
    import numpy as np

    from workloads.data.coco import annotation_path, load_detections
    from workloads.models import build_model
    from workloads.pose import inference
    from workloads.pose.evaluate import evaluate_keypoints

    cfg, data, out = _FINETUNE, _data(root), {}
    if weights:
        model = build_model(cfg.model, 17)
        model.load_state_dict(weights)
        dets = load_detections(
            data.detection_file, root, data.val_split, aspect_ratio=cfg.input_hw[1] / cfg.input_hw[0]
        )
        preds = inference.predict(model, dets[:6], cfg, "cpu", workers=1)
        out.update(
            _sums(
                "predict",
                keypoints=[r["keypoints"] for r in preds],
                score=[r["score"] for r in preds],
            )
        )
    gt_path = annotation_path(root, data.val_split)
    gt = json.loads(Path(gt_path).read_text())
    rng = np.random.default_rng(7)
    results = []
    for ann in gt["annotations"]:
        if not ann.get("num_keypoints"):
            continue
        kp = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
        kp[:, :2] += rng.normal(0.0, 2.0, size=(len(kp), 2))
        kp[:, 2] = 0.9
        results.append(
            {"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(), "score": 0.8}
        )
    metrics = evaluate_keypoints(gt_path, results, errors=True)
    out.update({f"eval.{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    return out


def _run_hsjp(root: str, work: Path) -> dict[str, float]:
    from workloads.context import LocalContext
    from workloads.hsjp.train import run_pretrain

    ctx = LocalContext(work / "hsjp")
    result = run_pretrain(_PRETRAIN, _data(root), ctx)
    return {
        **_hsjp_samples(root),
        **_epochs(ctx.folder),
        **_metrics(result.metrics, ("precision", "patch_accuracy", "best_epoch")),
        **_weights(result.weights),
    }


def _pretrained_state() -> dict[str, torch.Tensor]:
    """A fixed pretrain state dict (N² = 4 heatmap channels), made without training so the pose
    fingerprint does not move with the pretext's numerics."""
    from workloads.models import build_model

    return build_model(_TINY, _PRETRAIN.n**2, generator=torch.Generator().manual_seed(11)).state_dict()


def _run_pose(root: str, work: Path) -> dict[str, float]:
    from workloads.context import LocalContext
    from workloads.pose.train import run_finetune

    ctx = LocalContext(work / "pose", parent_weights=_pretrained_state())
    result = run_finetune(_FINETUNE, _data(root), ctx, init=_PRETRAIN)
    return {
        **_pose_samples(root),
        **_pose_evaluation(root, result.weights),
        **_epochs(ctx.folder),
        **_metrics(result.metrics, ("AP", "AP50", "AR", "best_epoch")),
        **_weights(result.weights),
    }


RUNS = {"hsjp": _run_hsjp, "pose": _run_pose}


def fingerprint(workload: str) -> dict[str, float]:
    """The fingerprint of `workload` ("hsjp" or "pose"), each value rounded to SIGNIFICANT digits."""
    if workload not in RUNS:
        raise KeyError(f"no fingerprint for workload {workload!r}; known: {', '.join(RUNS)}")
    from workloads.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="hsjp-fingerprint-") as tmp, _one_thread():
        root = f"{tmp}/data"
        generate(root, n_train=6, n_val=2, seed=5, image_size=(96, 96))
        torch.manual_seed(0)
        values = RUNS[workload](root, Path(tmp))
    return {k: _round(v) for k, v in sorted(values.items())}


def digest(values: dict[str, float]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def read_golden(path: Path = GOLDEN_FILE) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def differences(recorded: dict[str, float], now: dict[str, float]) -> list[str]:
    """`key: recorded → now` for each value that differs beyond RTOL / ATOL (or is only on one side)."""
    out = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if a is None or b is None or not math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL):
            out.append(f"{key}: {a} → {b}")
    return out


def check(workload: str, now: dict[str, float] | None = None, golden: dict | None = None) -> str | None:
    """None when `workload`'s fingerprint matches the one recorded for its current version, else a
    message that says what moved and which version to bump."""
    version = WORKLOAD_VERSIONS[workload]
    golden = read_golden() if golden is None else golden
    entry = (golden.get(workload) or {}).get(version)
    if entry is None:
        return (
            f"workload {workload!r} version {version}: no golden fingerprint recorded in {GOLDEN_FILE.name}; "
            f"record it with `python -m workloads.fingerprint --record {workload}`"
        )
    now = fingerprint(workload) if now is None else now
    diff = differences(entry["values"], now)
    if not diff:
        return None
    nxt = str(int(version) + 1) if version.isdigit() else f"{version}+1"
    shown = "; ".join(diff[:6]) + (f"; … {len(diff) - 6} more" if len(diff) > 6 else "")
    return (
        f"workload {workload!r}: its numerics changed against the golden fingerprint of version {version} "
        f"({shown}). If the change is meant, bump WORKLOAD_VERSIONS[{workload!r}] to {nxt!r} in "
        f"workloads/__init__.py and record the new fingerprint with `python -m workloads.fingerprint "
        f"--record {workload}` (stores made by version {version} are then named stale); if it is not "
        "meant, the change alters results by accident"
    )


def record(workload: str, replace: bool = False, path: Path = GOLDEN_FILE) -> dict[str, float]:
    """Write `workload`'s fingerprint for its current version; refuses to overwrite a recorded version
    whose values differ unless `replace` (bump the version instead)."""
    version = WORKLOAD_VERSIONS[workload]
    golden = read_golden(path)
    now = fingerprint(workload)
    old = (golden.get(workload) or {}).get(version)
    if old is not None and differences(old["values"], now) and not replace:
        raise SystemExit(
            f"workload {workload!r} version {version} already has a different fingerprint: bump "
            "WORKLOAD_VERSIONS (or pass --replace when only the platform's last digits moved)"
        )
    golden.setdefault(workload, {})[version] = {"digest": digest(now), "values": now}
    path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    return now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workloads.fingerprint", description=__doc__.split("\n")[0]
    )
    parser.add_argument("workloads", nargs="*", default=list(RUNS), help="hsjp and/or pose (default both)")
    parser.add_argument("--record", action="store_true", help="record the fingerprint of the current version")
    parser.add_argument("--replace", action="store_true", help="with --record: overwrite that version's")
    args = parser.parse_args(argv)
    bad = 0
    for workload in args.workloads or list(RUNS):
        if args.record:
            now = record(workload, replace=args.replace)
            print(f"{workload} version {WORKLOAD_VERSIONS[workload]}: recorded {digest(now)}")
            continue
        now = fingerprint(workload)
        problem = check(workload, now)
        print(
            f"{workload} version {WORKLOAD_VERSIONS[workload]}: {digest(now)} {'differs' if problem else 'matches'}"
        )
        if problem:
            print(problem, file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
