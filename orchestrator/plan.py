"""The plan of a study (docs/design.md §2): trials → a DAG of content-addressed stages.

Every trial is a `pretrain` and a `finetune` stage, plus one `evaluate` stage per `finetune.test_splits`
entry (the finetune's best weights predict the split's detections; nothing is trained). A stage id is
`<kind>-<sha1[:16]>` of what changes its result only (docs/design.md, "Stage identity"), so identical
pretrains are one stage within and across studies, and trials with the same finetune stage are merged
(aliases kept). `scratch` / `imagenet` pretrains have no work; their identity is (method, model,
checkpoint). An evaluate stage hashes its finetune's id, the split, the detection file and
EVALUATION_SETTINGS; opting into test-dev retrains nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.spec.inputs import ComputeConfig, DataSpec, throughput_source
from orchestrator.spec.study import Study, Trial
from orchestrator.store.format import StageKind, StageState
from workloads import WORKLOAD_VERSIONS
from workloads.config import (
    DataConfig,
    EvaluationConfig,
    FinetuneConfig,
    PretrainConfig,
    identity_dict,
    lr_drop_epochs,
    to_dict,
)

log = logging.getLogger(__name__)

# Instance counts for the estimate (caps and label_fraction applied on top).
COCO_TRAIN_PERSONS = 262_465  # COCO 2017 train person annotations: the pretext uses all persons (paper §3)
COCO_TRAIN_KEYPOINT_PERSONS = 149_813  # official HRNet log: "=> load 149813 samples" (train2017)
COCO_VAL_PERSONS = 11_004  # COCO 2017 val person annotations (HSJP precision P, paper §3.5)
COCO_VAL_DETECTIONS = 104_125  # official HRNet log: "Total boxes: 104125" in the AP_H_56 detection file
COCO_VAL_KEYPOINT_PERSONS = 6_352  # official HRNet log: "=> load 6352 samples" (val2017, GT boxes)
# COCO test-dev2017: 20,288 images (cocodataset.org/#download, image_info_test-dev2017.json). Its person
# detections (HRNet's AP_H_609 file) are not counted in any official log we have: assumed at val2017's
# rate, 104,125 detections / 5,000 images (HRNet log) ≈ 20.8 per image.
COCO_TESTDEV_IMAGES = 20_288
COCO_TESTDEV_DETECTIONS = round(COCO_TESTDEV_IMAGES * COCO_VAL_DETECTIONS / 5_000)
SYNTHETIC_PERSONS_PER_IMAGE = 2  # workloads.data.synthetic draws 1-3 persons per image
EVAL_SPEEDUP = 3.0  # a forward pass costs about a third of a training step (forward + backward)
FINAL_EVALUATIONS = 1  # pose: the selected weights on the detection boxes, once (the official test.py run)
# start-up of a stage's Ray Train worker group (docs/ray.md §5: ~10 s per fit on 2 cores)
STAGE_START_S = 15.0
REFERENCE_PIXELS = 256 * 192  # the throughput table is given at the finetune input 256×192
_ASSUMPTIONS = (
    f"device-hours = (train images × epochs + evaluated images / {EVAL_SPEEDUP:g}) × input px / {REFERENCE_PIXELS} "
    f"/ throughput + {STAGE_START_S:g} s start-up per stage; flip test evaluates twice; pose: every "
    f"eval_every epochs on finetune.select_boxes (GT: {COCO_VAL_KEYPOINT_PERSONS} val persons with keypoints), "
    f"then the selected weights once on the detections ({COCO_VAL_DETECTIONS}); COCO: "
    f"{COCO_TRAIN_PERSONS} / {COCO_TRAIN_KEYPOINT_PERSONS} train persons (pretext / pose), {COCO_VAL_PERSONS} "
    f"val persons (HSJP precision), {COCO_TESTDEV_DETECTIONS} test-dev detections (assumed: val's rate per "
    f"image); an evaluate stage predicts its split once, on one worker; synthetic: "
    f"{SYNTHETIC_PERSONS_PER_IMAGE} persons per image"
)


@dataclass(frozen=True)
class StageSpec:
    stage_id: str  # `<kind>-<sha1[:16]>` (pretrain_stage, finetune_stage, evaluation_stage)
    kind: str  # `pretrain`, `finetune` or `evaluate`
    config: PretrainConfig | FinetuneConfig | EvaluationConfig
    parent: str | None  # a finetune's pretrain, an evaluate stage's finetune
    work: bool  # False for scratch / imagenet pretrains (nothing to compute)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "stage_id": self.stage_id,
            "kind": self.kind,
            "config": to_dict(self.config),
            "parent": self.parent,
            "work": self.work,
        }
        if self.work and not isinstance(self.config, EvaluationConfig):  # an evaluate stage trains nothing
            out["lr_schedule"] = lr_schedule(self.config)
        return out


def lr_schedule(cfg: PretrainConfig | FinetuneConfig) -> dict[str, Any]:
    """The lr drops a stage trains with: `lr_steps` scaled to its epochs (`config.scale_milestones`) and
    the 0-based epochs from which each drop applies (the official placement, `config.lr_drop_epochs`)."""
    steps = list(cfg.milestones)
    return {
        "epochs": cfg.total_epochs,
        "lr_steps_used": steps,
        "drop_from_epoch": lr_drop_epochs(steps),
        "lrs": [cfg.lr * cfg.lr_factor**i for i in range(len(steps) + 1)],
    }


@dataclass(frozen=True)
class TrialSpec:
    """A trial of the plan: `params`, `study` and `origin` as its `spec.study.Trial` has them, the ids of
    its stages, and `aliases`: the other definitions ({study, origin, params}) that came out as it."""

    trial_id: str  # `t<index>-[<study>-]<params>`, e.g. `t003-n4-concat_original`: stable and readable
    params: dict[str, Any]
    pretrain: str
    finetune: str
    study: str = ""
    origin: str = ""
    aliases: tuple[dict[str, Any], ...] = ()
    evaluations: tuple[str, ...] = ()  # one evaluate stage per `finetune.test_splits` entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "params": self.params,
            "pretrain": self.pretrain,
            "finetune": self.finetune,
            "evaluations": list(self.evaluations),
            "study": self.study,
            "origin": self.origin,
            "studies": sorted({self.study, *(a["study"] for a in self.aliases)} - {""}),
            "aliases": [f"{a['study']}:{a['origin']}" for a in self.aliases],
            "alias_params": [a["params"] for a in self.aliases],
        }


@dataclass(frozen=True)
class Plan:
    study: str
    data: DataConfig
    compute: ComputeConfig
    stages: dict[str, StageSpec]
    trials: list[TrialSpec]
    data_spec: DataSpec | None = None  # what the stage ids hash; the image counts of the estimate
    parts: tuple[str, ...] = ()  # a merged study: the names of its parts
    tracking: dict[str, Any] = dataclasses.field(default_factory=dict)  # the study's; in no stage id

    def sharing(self) -> dict[str, list[str]]:
        """Pretrain stage id → ids of the trials whose finetune starts from it."""
        out: dict[str, list[str]] = {}
        for t in self.trials:
            out.setdefault(t.pretrain, []).append(t.trial_id)
        return out

    def to_dict(self) -> dict[str, Any]:
        """What `<store>/studies/<name>/plan.json` holds."""
        spec = self.data_spec
        return {
            "study": self.study,
            "parts": list(self.parts),
            "workload_versions": dict(WORKLOAD_VERSIONS),
            "data": to_dict(self.data),
            "data_identity": {k: spec.identity(k) for k in ("pretrain", "finetune")} if spec else None,
            "compute": to_dict(self.compute),
            "stages": {sid: s.to_dict() for sid, s in self.stages.items()},
            "trials": [t.to_dict() for t in self.trials],
            "estimate": self.estimate(),
        }

    def estimate(self) -> dict[str, Any]:
        """Device-hours (GPU-hours when use_gpu): training images × epochs / throughput, plus evaluation,
        for the distinct work stages ('shared') and for every trial computing its own pretrain."""
        hours = {sid: stage_hours(s, self.data_spec, self.compute) for sid, s in self.stages.items()}
        pre, fin, evl = (
            sum(h for sid, h in hours.items() if self.stages[sid].kind == kind)
            for kind in (StageKind.PRETRAIN, StageKind.FINETUNE, StageKind.EVALUATE)
        )
        requested = sum(1 + len(t.aliases) for t in self.trials)
        unshared = sum(
            (1 + len(t.aliases))
            * (hours[t.pretrain] + hours[t.finetune] + sum(hours[e] for e in t.evaluations))
            for t in self.trials
        )
        saved = unshared - pre - fin - evl
        saved = saved if saved > 1e-9 * unshared else 0.0  # float noise when nothing is shared
        gpu = self.compute.use_gpu
        backbones = sorted({s.config.model.backbone for s in self.stages.values() if s.work})
        return {
            "device": "GPU" if gpu else "CPU worker",
            "unit": "GPU-hours" if gpu else "CPU-worker-hours",
            "throughput_img_per_s": dict(self.compute.throughput),
            "throughput_source": {b: throughput_source(self.compute, b) for b in backbones},
            "stage_hours": {sid: _sig(h) for sid, h in hours.items()},
            "pretrain_hours": _sig(pre),
            "finetune_hours": _sig(fin),
            "evaluate_hours": _sig(evl),
            "total_hours": _sig(pre + fin + evl),
            "unshared_hours": _sig(unshared),
            "saved_hours": _sig(saved),
            "trials": len(self.trials),
            "requested_trials": requested,
            "work_stages": sum(1 for s in self.stages.values() if s.work),
            "assumptions": _ASSUMPTIONS,
        }


# ----------------------------------------------------------------------------------------- making
def make_plan(study: Study, data: DataConfig) -> Plan:
    """The stage DAG of a study; `data` is what the stages get (from prepare_data / data_config)."""
    stages: dict[str, StageSpec] = {}
    trials: list[TrialSpec] = []
    by_finetune: dict[str, int] = {}
    vary_seed = len({t.params.get("seed") for t in study.trials}) > 1
    for trial in study.trials:
        pre = pretrain_stage(trial.pretrain, study.data)
        fin = finetune_stage(trial.finetune, study.data, pre.stage_id)
        evals = [
            evaluation_stage(fin, split, study.data, trial.pretrain.method)
            for split in trial.finetune.test_splits
        ]
        for spec in (pre, fin, *evals):
            stages.setdefault(spec.stage_id, spec)
        evaluations = tuple(dict.fromkeys(e.stage_id for e in evals))
        if fin.stage_id in by_finetune:
            i = by_finetune[fin.stage_id]
            alias = {"study": trial.study, "origin": trial.origin, "params": trial.params}
            evaluations = tuple(dict.fromkeys((*trials[i].evaluations, *evaluations)))
            trials[i] = dataclasses.replace(
                trials[i], aliases=(*trials[i].aliases, alias), evaluations=evaluations
            )
            log.info("%s %s is the same trial as %s", trial.study, trial.origin, trials[i].trial_id)
            continue
        by_finetune[fin.stage_id] = len(trials)
        trials.append(
            TrialSpec(
                trial_id=trial_id(len(trials), trial, study.parts != (), vary_seed),
                params=dict(trial.params),
                pretrain=pre.stage_id,
                finetune=fin.stage_id,
                study=trial.study,
                origin=trial.origin,
                evaluations=evaluations,
            )
        )
    return Plan(
        study=study.name,
        data=data,
        compute=study.compute,
        stages=stages,
        trials=trials,
        data_spec=study.data,
        parts=study.parts,
        tracking=study.tracking.to_dict(),
    )


def pretrain_stage(cfg: PretrainConfig, data: DataSpec) -> StageSpec:
    """A pretrain stage. No-work methods keep only (method, model, checkpoint): their config is
    normalised so every scratch / imagenet trial of a backbone shares one stage."""
    work = cfg.method == "hsjp"
    key: dict[str, Any] = {"kind": StageKind.PRETRAIN}
    if work:
        key |= {"config": identity_dict(cfg), "data": data.identity("pretrain"), "parent": None}
    else:
        cfg = PretrainConfig(method=cfg.method, checkpoint=cfg.checkpoint, model=cfg.model)
        key |= {"method": cfg.method, "model": identity_dict(cfg.model), "checkpoint": cfg.checkpoint}
    return StageSpec(f"pretrain-{_digest(key)}", StageKind.PRETRAIN, cfg, parent=None, work=work)


def finetune_stage(cfg: FinetuneConfig, data: DataSpec, parent: str) -> StageSpec:
    # test_splits are the evaluate stages' (evaluation_stage): not part of the finetune's id or config
    cfg = dataclasses.replace(cfg, test_splits=())
    key = {
        "kind": StageKind.FINETUNE,
        "config": identity_dict(cfg),
        "data": data.identity("finetune"),
        "parent": parent,
    }
    return StageSpec(f"finetune-{_digest(key)}", StageKind.FINETUNE, cfg, parent=parent, work=True)


EVALUATION_SETTINGS = ("flip_test", "shift_heatmap", "image_thre", "in_vis_thre", "oks_thre", "input_hw",
                       "heatmap_hw")  # fmt: skip
"""The FinetuneConfig fields that change an evaluation's numbers (inference.predict), in its id."""


def evaluation_stage(finetune: StageSpec, split: str, data: DataSpec, init: str) -> StageSpec:
    """The evaluate stage of `finetune` on test split `split` (its detections: data.test_detection_file);
    `init` (the pretrain method) names the server's results file."""
    cfg = finetune.config
    assert isinstance(cfg, FinetuneConfig), f"{finetune.stage_id} is not a finetune stage"
    det = data.config.test_detection_file
    key = {
        "kind": StageKind.EVALUATE,
        "parent": finetune.stage_id,
        "split": split,
        "detection_file": det,
        "settings": {k: to_dict(getattr(cfg, k)) for k in EVALUATION_SETTINGS},
    }
    backbone = cfg.model.backbone.replace("_", "")
    alg = f"{backbone}-{init}-{finetune.stage_id.split('-', 1)[1][:8]}"  # no underscores: the server's separator
    config = EvaluationConfig(finetune=cfg, split=split, detection_file=det, alg=alg)
    return StageSpec(
        f"evaluate-{_digest(key)}", StageKind.EVALUATE, config, parent=finetune.stage_id, work=True
    )


@dataclass(frozen=True)
class StageRequest:
    """What one running stage holds: `workers` Ray Train workers of `per_worker` resources each (its
    trial driver holds ~nothing: `orchestrator.ray.connect.trial_resources`)."""

    workers: int
    per_worker: dict[str, float]

    @property
    def total(self) -> dict[str, float]:
        return {k: v * self.workers for k, v in self.per_worker.items()} if self.workers else {}


def stage_request(compute: ComputeConfig, kind: str = StageKind.PRETRAIN, work: bool = True) -> StageRequest:
    """The one definition of a stage's resources: an evaluate stage predicts on one worker, the others
    train on `compute.workers_per_stage`; a stage without work holds nothing."""
    per_worker = {"CPU": float(compute.cpus_per_worker)}
    if compute.use_gpu:
        per_worker["GPU"] = float(compute.gpus_per_worker)
    workers = (1 if kind == StageKind.EVALUATE else compute.workers_per_stage) if work else 0
    return StageRequest(workers, per_worker)


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trial_id(index: int, trial: Trial, merged: bool, with_seed: bool) -> str:
    """`t<index>-[<study>-]<slug of params>`: readable, unique by index."""
    parts = [_slug_part(k, v) for k, v in trial.params.items() if k != "seed"]
    if with_seed:
        parts.append(f"seed{trial.params.get('seed')}")
    slug = "-".join(p for p in parts if p) or "defaults"
    slug = re.sub(r"[^A-Za-z0-9_.-]", "", slug)[:60].rstrip("-")
    return f"t{index:03d}-{trial.study}-{slug}" if merged else f"t{index:03d}-{slug}"


_PRETRAIN_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig)}


def _slug_part(key: str, value: Any) -> str:
    section, _, rest = key.partition(".")
    name = rest.rsplit(".", 1)[-1]
    if isinstance(value, str) and ("/" in value or os.sep in value):
        return ""  # a path (checkpoint): too long for an id; the method names the trial
    if section == "finetune" and name in _PRETRAIN_FIELDS and name != "model":
        name = f"ft_{name}"
    if isinstance(value, bool):
        return name if value else f"no_{name}"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return name + "x".join(str(v) for v in value)
    return f"{name}{value:g}" if isinstance(value, float) else f"{name}{value}"


def describe_stage(spec: StageSpec) -> str:
    """A one-line human summary of a stage (what `plan` / `status` print)."""
    c = spec.config
    if isinstance(c, EvaluationConfig):
        det = os.path.basename(c.detection_file or "") or "no detections"
        return f"evaluate {c.model.backbone} on {c.split} ({det}) -> person_keypoints_{c.split}_{c.alg}_results.zip"
    if isinstance(c, PretrainConfig):
        if c.method == "scratch":
            return f"scratch {c.model.backbone} (random init)"
        if c.method == "imagenet":
            return f"imagenet {c.model.backbone} ({os.path.basename(c.checkpoint or '')})"
        concat = " +original" if c.concat_original else ""
        return (
            f"hsjp {c.model.backbone} N={c.n}{concat} {c.input_size}px lr={c.lr:g} {c.epochs}ep seed={c.seed}"
        )
    extra = f" freeze0..{c.freeze}" if c.freeze is not None else ""
    extra += f" labels={c.label_fraction:g}" if c.label_fraction < 1 else ""
    return (
        f"finetune {c.model.backbone} {c.input_hw[0]}x{c.input_hw[1]} lr={c.lr:g} {c.total_epochs}ep"
        f"{extra} seed={c.seed}"
    )


# --------------------------------------------------------------------------------------- estimate
def stage_hours(spec: StageSpec, data: DataSpec | None, compute: ComputeConfig) -> float:
    """Device-hours of one stage (0 for no-work pretrains)."""
    if not spec.work:
        return 0.0
    counts = instance_counts(data)
    c = spec.config
    train, flip = 0.0, False
    if isinstance(c, EvaluationConfig):  # one prediction of the split's detections, no training
        pixels, flip = c.finetune.input_hw[0] * c.finetune.input_hw[1], c.finetune.flip_test
        boxes: float = COCO_TESTDEV_DETECTIONS
    elif isinstance(c, PretrainConfig):
        pixels = c.input_size * c.input_size * (2 if c.concat_original else 1)  # side by side (Fig. 7)
        train = counts["pretrain_train"] * c.epochs
        boxes = counts["pretrain_val"] * _evaluations(c.epochs, c.eval_every)
    else:
        pixels, flip = c.input_hw[0] * c.input_hw[1], c.flip_test
        train = counts["finetune_train"] * c.label_fraction * c.total_epochs
        count = {"gt": counts["val_persons"], "detections": counts["val_boxes"]}
        # as pose.train.selection_boxes / final_boxes choose
        detections = data is None or data.synthetic is not None or data.config.detection_file is not None
        select = "detections" if detections and c.select_boxes == "detections" else "gt"
        final = "detections" if detections and not c.use_gt_boxes else "gt"
        boxes = count[select] * _evaluations(c.total_epochs, c.eval_every)
        if final != select:  # the selected weights once more, on the reported boxes
            boxes += count[final] * FINAL_EVALUATIONS
    images = train + boxes * (2 if flip else 1) / EVAL_SPEEDUP
    seconds = images * (pixels / REFERENCE_PIXELS) / compute.throughput[c.model.backbone] + STAGE_START_S
    return seconds / 3600.0


def instance_counts(data: DataSpec | None) -> dict[str, float]:
    """Person instances each stage reads per epoch (COCO 2017 or synthetic), caps applied."""
    keys = ("pretrain_train", "finetune_train", "pretrain_val", "val_persons", "val_boxes")
    if data is not None and data.synthetic is not None:
        train, val = (n * SYNTHETIC_PERSONS_PER_IMAGE for n in (data.synthetic.train, data.synthetic.val))
        values: tuple[float, ...] = (train, train, val, val, val)
    else:
        values = (COCO_TRAIN_PERSONS, COCO_TRAIN_KEYPOINT_PERSONS, COCO_VAL_PERSONS)
        values += (COCO_VAL_KEYPOINT_PERSONS, COCO_VAL_DETECTIONS)
    cfg = data.config if data is not None else DataConfig()
    caps = (cfg.max_train_instances,) * 2 + (cfg.max_val_instances,) * 3
    return {k: v if cap is None else min(v, cap) for k, v, cap in zip(keys, values, caps)}


def _sig(hours: float) -> float:
    return float(f"{hours:.4g}")


def _evaluations(epochs: int, every: int) -> int:
    """Evaluations in a run: every k epochs and after the last (engine.run_epochs)."""
    return epochs // every + (1 if epochs % every else 0)


# ---------------------------------------------------------------------------------------- rendering
def render_plan(plan: Plan) -> str:
    """`hsjp-study plan`: the trials, the distinct stages, which finetunes share which pretrain, the cost."""
    est = plan.estimate()
    hours = est["stage_hours"]
    pretrains = [s for s in plan.stages.values() if s.kind == StageKind.PRETRAIN]
    evaluations = [s for s in plan.stages.values() if s.kind == StageKind.EVALUATE]
    c = plan.compute
    device = f"{c.gpus_per_worker:g} GPU" if c.use_gpu else f"{c.cpus_per_worker:g} CPU"
    data = (
        f"synthetic {plan.data_spec.synthetic}"
        if plan.data_spec and plan.data_spec.synthetic
        else f"COCO {plan.data.coco_root} (detections: {plan.data.detection_file or 'GT boxes'})"
    )
    lines = [
        f"study {plan.study}: {len(plan.trials)} trials ({est['requested_trials']} requested), "
        f"{len(pretrains)} distinct pretrains ({sum(s.work for s in pretrains)} to compute), "
        f"{len(plan.stages) - len(pretrains) - len(evaluations)} finetunes"
        + (f", {len(evaluations)} evaluate stages (test splits, no training)" if evaluations else ""),
        f"data: {data}",
        f"compute: {c.workers_per_stage} worker(s) × {device} per stage",
        "",
        f"{'TRIAL':<44} {'PRETRAIN':<25} {'FINETUNE':<25} PARAMS",
    ]
    for t in plan.trials:
        params = " ".join(f"{k}={v}" for k, v in t.params.items())
        same = f"  (also {', '.join(a['study'] + ' ' + a['origin'] for a in t.aliases)})" if t.aliases else ""
        lines.append(f"{t.trial_id:<44} {t.pretrain:<25} {t.finetune:<25} {params}{same}")
    lines += ["", f"pretrains (finetunes using each; {est['unit']}):"]
    for sid, trial_ids in plan.sharing().items():
        s = plan.stages[sid]
        cost = f"{hours[sid]:.4g} h" if s.work else StageState.NO_WORK.value
        lines.append(
            f"  {sid}  {describe_stage(s):<52} {cost:>10}  ← {len(trial_ids)}: {', '.join(trial_ids)}"
        )
    if evaluations:
        lines += ["", f"evaluate stages (each reads its finetune's best weights; {est['unit']}):"]
        lines += [
            f"  {s.stage_id}  ← {s.parent}  {describe_stage(s)}  {hours[s.stage_id]:.4g} h"
            for s in evaluations
        ]
    lines += [
        "",
        f"estimate: {est['total_hours']:.4g} {est['unit']} for {est['work_stages']} distinct work stages "
        f"(pretrain {est['pretrain_hours']:.4g}, finetune {est['finetune_hours']:.4g}"
        + (f", evaluate {est['evaluate_hours']:.4g}" if evaluations else "")
        + "); without sharing "
        f"{est['unshared_hours']:.4g} (saved {est['saved_hours']:.4g})",
        f"throughput (img/s per {est['device']} at 256×192):",
        *(f"  {b} {est['throughput_img_per_s'][b]:g} — {src}" for b, src in est["throughput_source"].items()),
    ]
    return "\n".join(lines)
