"""Pose finetune stage: HSJP / ImageNet initialisation, freezing, a learning step on real data,
exact resume, collapse handling."""

from __future__ import annotations

import collections
from dataclasses import replace

import pytest
import torch

from workloads.config import DataConfig, FinetuneConfig, ModelConfig, PoseAugConfig, PretrainConfig
from workloads.context import LocalContext
from workloads.engine import make_optimizer
from workloads.models import block_group_of, build_model
from workloads.pose.dataset import PoseTrainDataset, load_train_instances
from workloads.pose.per_image import PER_IMAGE_FILE
from workloads.pose.train import build_finetune_model, load_val_instances, pose_step, run_finetune

TINY = ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1))  # narrow HRNet, same names as W32
HW, HM = (64, 64), (16, 16)  # inputs divisible by 32; heatmaps at input/4
N = 3  # HSJP puzzle size of the fake pretrain: an N² = 9-channel head


def _cfg(**kw) -> FinetuneConfig:
    base = dict(model=TINY, input_hw=HW, heatmap_hw=HM, epochs=2, batch_size=2, eval_every=1000, seed=0)
    return FinetuneConfig(**(base | kw))


def _pretrain_state(seed: int = 5) -> dict[str, torch.Tensor]:
    model = build_model(TINY, N * N, generator=torch.Generator().manual_seed(seed))
    state = model.state_dict()
    for k, v in state.items():  # make the BN statistics distinguishable from a fresh model's too
        if k.endswith("running_mean") or k.endswith("weight") and v.ndim == 1:
            v.add_(torch.rand(v.shape, generator=torch.Generator().manual_seed(seed)))
    return state


def test_hsjp_checkpoint_initialises_the_backbone_with_a_fresh_17_channel_head(tmp_path):
    parent = _pretrain_state()
    cfg = _cfg()
    ctx = LocalContext(tmp_path, parent_weights=parent)
    model, report, frozen = build_finetune_model(cfg, PretrainConfig(method="hsjp", model=TINY, n=N), ctx)
    fresh = build_model(TINY, 17, generator=torch.Generator().manual_seed(cfg.seed)).state_dict()
    state = model.state_dict()
    backbone = [k for k in state if not k.startswith("final_layer.")]
    assert backbone and all(torch.equal(state[k], parent[k]) for k in backbone)
    assert any(not torch.equal(state[k], fresh[k]) for k in backbone if state[k].is_floating_point())
    assert state["final_layer.weight"].shape[0] == 17 and parent["final_layer.weight"].shape[0] == N * N
    assert torch.equal(state["final_layer.weight"], fresh["final_layer.weight"])
    assert sorted(report["skipped"]) == ["final_layer.bias", "final_layer.weight"]
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) == len(backbone)
    assert frozen == []


def test_hsjp_backbone_mismatch_is_a_clear_error(tmp_path):
    ctx = LocalContext(tmp_path, parent_weights=_pretrain_state())
    other = ModelConfig(width=16, num_blocks=1, num_modules=(1, 1, 1))
    with pytest.raises(ValueError, match="width: pretrain 16 vs finetune 8"):
        build_finetune_model(_cfg(), PretrainConfig(method="hsjp", model=other, n=N), ctx)
    with pytest.raises(ValueError, match="backbone"):
        build_finetune_model(
            _cfg(), PretrainConfig(method="hsjp", model=ModelConfig(backbone="simplebaseline_r50"), n=N), ctx
        )
    partial = {k: v for k, v in _pretrain_state().items() if not k.startswith("stage4.")}
    with pytest.raises(ValueError, match="missing, e.g. \\['stage4"):
        build_finetune_model(
            _cfg(),
            PretrainConfig(method="hsjp", model=TINY, n=N),
            LocalContext(tmp_path, parent_weights=partial),
        )
    with pytest.raises(ValueError, match="parent weights"):
        build_finetune_model(
            _cfg(), PretrainConfig(method="hsjp", model=TINY, n=N), LocalContext(tmp_path / "b")
        )


def test_imagenet_missing_file_says_where_the_official_weights_are(tmp_path):
    init = PretrainConfig(method="imagenet", checkpoint=str(tmp_path / "nope.pth"), model=TINY)
    with pytest.raises(FileNotFoundError, match="HRNet-Image-Classification"):
        build_finetune_model(_cfg(), init, LocalContext(tmp_path))


def test_freezing_keeps_frozen_weights_and_bn_statistics_bit_identical(tmp_path):
    cfg = _cfg(freeze=2)
    model, _, frozen = build_finetune_model(cfg, None, LocalContext(tmp_path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, lr=1e-2)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, 3, *HW, generator=g), torch.rand(2, 17, *HM, generator=g), torch.ones(2, 17))
    pose_step(model, batch, optimizer, cfg, torch.device("cpu"))
    after = model.state_dict()
    stages = {k: block_group_of(model, k) for k in after}
    frozen_keys = [k for k, s in stages.items() if s is not None and s <= 2]
    assert set(frozen) <= set(frozen_keys) and any("running_mean" in k for k in frozen_keys)
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert any(
        not torch.equal(before[k], after[k]) for k, s in stages.items() if s == 3 and "running_mean" in k
    )
    assert any(
        not torch.equal(before[k], after[k]) for k, s in stages.items() if s == 3 and k.endswith("weight")
    )
    assert not torch.equal(before["final_layer.weight"], after["final_layer.weight"])


@pytest.mark.realdata
def test_a_few_steps_on_coco_mini_lower_the_loss(coco_mini):
    cfg = _cfg(aug=PoseAugConfig(flip=False, half_body_prob=0.0))
    persons, total = load_train_instances(cfg, DataConfig(coco_root=str(coco_mini), max_train_instances=4))
    assert len(persons) == 4 and total > 4
    ds = PoseTrainDataset(persons, cfg, seed=0, augment=False)
    batch = tuple(torch.stack(t) for t in zip(*(ds[(0, i)] for i in range(4))))
    assert batch[2].sum() > 10  # labelled joints inside the crops
    model = build_model(TINY, 17, generator=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, lr=1e-3)
    model.train()
    losses = [pose_step(model, batch, optimizer, cfg, torch.device("cpu")).item() for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


class _Preempted(Exception):
    pass


class _StopAfter(LocalContext):
    """A LocalContext whose run dies right after saving epoch `stop` (a preemption)."""

    def __init__(self, folder, stop: int, **kw):
        super().__init__(folder, **kw)
        self.stop = stop

    def save_epoch(self, state, metrics):
        super().save_epoch(state, metrics)
        if state["epoch"] == self.stop:
            raise _Preempted


@pytest.mark.realdata
def test_resume_after_epoch_1_equals_an_uninterrupted_run(tmp_path, coco_mini):
    cfg = _cfg(label_fraction=0.5)
    data = DataConfig(coco_root=str(coco_mini), max_train_instances=8, max_val_instances=4, loader_workers=0)
    init = PretrainConfig(method="hsjp", model=TINY, n=N)
    parent = _pretrain_state()
    full = run_finetune(cfg, data, LocalContext(tmp_path / "a", parent_weights=parent), init)
    with pytest.raises(_Preempted):
        run_finetune(cfg, data, _StopAfter(tmp_path / "b", stop=0, parent_weights=parent), init)
    resumed = run_finetune(cfg, data, LocalContext(tmp_path / "b", parent_weights=parent), init)
    assert full.epochs_trained == [0, 1] and resumed.epochs_trained == [1]
    assert full.metrics["loss_curve"] == resumed.metrics["loss_curve"]
    assert full.weights.keys() == resumed.weights.keys()
    assert all(torch.equal(full.weights[k], resumed.weights[k]) for k in full.weights)
    assert full.metrics["AP"] == resumed.metrics["AP"] and full.metrics["best_epoch"] == 1
    assert set(full.metrics["ap_per_oks"]) == {f"{t / 100:.2f}" for t in range(50, 100, 5)}
    assert "overall" in full.metrics["errors"]
    assert full.metrics["train_instances"] == 4 and full.metrics["label_fraction"] == 0.5
    assert full.metrics["load_report"]["skipped"] == ["final_layer.weight", "final_layer.bias"]
    assert full.weights["final_layer.weight"].shape[0] == 17 and not full.collapsed


@pytest.mark.realdata
def test_collapse_is_a_result_not_a_crash(tmp_path, coco_mini):
    cfg = _cfg(epochs=3, collapse_loss=1e-12, freeze=4)
    data = DataConfig(coco_root=str(coco_mini), max_train_instances=2, max_val_instances=2, loader_workers=0)
    result = run_finetune(cfg, data, LocalContext(tmp_path))
    assert result.collapsed and result.collapsed_epoch == 0 and result.epochs_trained == [0]
    assert result.weights is None and "AP" not in result.metrics
    assert result.metrics["frozen_stages"] == [0, 1, 2, 3, 4] and result.metrics["frozen_parameters"] > 0


@pytest.mark.realdata
def test_val_boxes_come_from_the_detection_file_unless_gt_boxes_are_asked(coco_dets):
    det_file = str(coco_dets / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json")
    data = DataConfig(coco_root=str(coco_dets), detection_file=det_file)
    dets = load_val_instances(_cfg(), data)
    assert dets.boxes == "detections" and len(dets.instances) == 118 and dets.image_ids is None
    assert all(d.ann_id is None for d in dets.instances)
    gts = load_val_instances(_cfg(use_gt_boxes=True), data)
    assert (
        gts.boxes == "gt"
        and gts.instances
        and all(g.ann_id is not None and g.score == 1.0 for g in gts.instances)
    )
    assert load_val_instances(_cfg(), DataConfig(coco_root=str(coco_dets))).boxes == "gt"
    # a cap keeps whole images in id order, and only those images are scored
    capped = load_val_instances(
        _cfg(), DataConfig(coco_root=str(coco_dets), detection_file=det_file, max_val_instances=60)
    )
    ids = sorted({d.image_id for d in dets.instances})
    kept = {d.image_id for d in capped.instances}
    assert 0 < len(capped.instances) <= 60 and kept == set(ids[: len(kept)]) and capped.image_ids == kept
    count = collections.Counter(d.image_id for d in dets.instances)
    assert collections.Counter(d.image_id for d in capped.instances) == {i: count[i] for i in kept}


@pytest.mark.realdata
def test_decoding_on_the_device_trains_as_the_loader_path_does(tmp_path, coco_mini):
    """data.decode_on: device (torchvision decode + one batched crop, targets on the device) vs OpenCV in
    the loader: the same inputs up to 8-bit rounding, so the same loss curve: within 3 % after the first
    epoch and 8 % after the second (rounding-level input differences grow over Adam steps of a tiny
    net, as for the pretext's device rendering in tests/workloads/hsjp/test_train.py). The gap follows
    the decoders' versions: 0.7 % and 2.8 % with OpenCV 5.0.0, 1.4 % after the first epoch with OpenCV
    5.1.0 (torch 2.14.1, torchvision 0.29.1); the pixel-level agreement is tested in
    tests/workloads/data/test_device_decode.py."""
    data = DataConfig(coco_root=str(coco_mini), max_train_instances=8, max_val_instances=2, loader_workers=0)
    cfg = _cfg()
    loader = run_finetune(cfg, data, LocalContext(tmp_path / "a"))
    device = run_finetune(cfg, replace(data, decode_on="device"), LocalContext(tmp_path / "b"))
    a, b = loader.metrics["loss_curve"], device.metrics["loss_curve"]
    assert len(a) == len(b) == 2, (a, b)
    assert abs(a[0] - b[0]) <= 3e-2 * a[0] and abs(a[1] - b[1]) <= 8e-2 * a[1], (a, b)
    assert device.metrics["train_instances"] == loader.metrics["train_instances"] == 8


def _detection_file(coco_root, out_path) -> str:
    """Detections of coco-mini's val persons: each GT box with score 0.9, plus one false box per image."""
    import json

    gt = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    dets = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not a.get("iscrowd") and a["num_keypoints"] > 0
    ]
    dets += [
        {"image_id": i["id"], "category_id": 1, "bbox": [0, 0, 40, 80], "score": 0.3} for i in gt["images"]
    ]
    out_path.write_text(json.dumps(dets))
    return str(out_path)


@pytest.mark.realdata
def test_selection_on_gt_boxes_then_the_best_weights_once_on_detections(tmp_path, coco_mini):
    """Per-epoch evaluations on GT boxes pick the epoch; the reported AP is the selected weights' on the
    detections (the per-image outcome too), and a stage resumed after its last epoch repeats it exactly."""
    import json

    cfg = _cfg(eval_every=1)
    det_file = _detection_file(coco_mini, tmp_path / "dets.json")
    data = DataConfig(
        coco_root=str(coco_mini),
        detection_file=det_file,
        max_train_instances=8,
        max_val_instances=6,
        loader_workers=0,
    )
    full = run_finetune(cfg, data, LocalContext(tmp_path / "a"))
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_boxes"] for r in rows] == ["gt", "gt"]  # every per-epoch evaluation on GT boxes
    m = full.metrics
    assert m["eval_boxes"] == "detections" and m["select_boxes"] == "gt"
    assert m["eval_instances"] > m["select_instances"]  # the false boxes are in the final evaluation only
    best = rows[m["best_epoch"]]
    assert m["select_AP"] == best["AP"] and m["ap_history"] == {str(r["epoch"]): r["AP"] for r in rows}
    assert PER_IMAGE_FILE in full.artifacts  # only the final evaluation makes one (per_image=False before)
    # resumed after the last epoch: nothing left to train, the same final evaluation
    with pytest.raises(_Preempted):
        run_finetune(cfg, data, _StopAfter(tmp_path / "b", stop=1))
    resumed = run_finetune(cfg, data, LocalContext(tmp_path / "b"))
    assert resumed.epochs_trained == []
    assert {k: resumed.metrics[k] for k in ("AP", "select_AP", "best_epoch", "eval_instances")} == {
        k: m[k] for k in ("AP", "select_AP", "best_epoch", "eval_instances")
    }
    assert resumed.artifacts.keys() == full.artifacts.keys()
    # select_boxes: detections → one kind of evaluation, no separate final one
    same = run_finetune(_cfg(eval_every=1, select_boxes="detections"), data, LocalContext(tmp_path / "c"))
    assert same.metrics["eval_boxes"] == same.metrics["select_boxes"] == "detections"
    assert same.metrics["AP"] == same.metrics["select_AP"]


def test_select_boxes_is_checked():
    with pytest.raises(ValueError, match="finetune.select_boxes = 'detection'.*did you mean 'detections'"):
        _cfg(select_boxes="detection")
