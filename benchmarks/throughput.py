"""Training and evaluation throughput of this project's pipelines against the reference (official-style)
pipeline, measured in the same run (docs/design.md "Performance").

For each backbone (HRNet-W32, SimpleBaseline-R50) and task (HSJP pretext 224×224 with N = 6, pose
finetune 256×192) and for both pipelines it prints:

- full img/s: whole training steps fed by the real loader, run as training runs them — "ours" through
  the workloads' own code: `prepare_batch` two batches ahead (`engine.prefetch`, a side stream on
  CUDA), the step's forward + loss compiled as `runtime.compile` says (auto: on CUDA), fused Adam,
  bf16 autocast and channels_last on CUDA, no host sync inside the timed window (the device is
  synchronised once before and once after it); "reference" (`benchmarks.reference`) as the official
  code runs: inline, with its own per-step host reads;
- model img/s: the step alone on one batch already prepared on the device (no loader at all);
- data img/s: the loader capacity — the loader and the device-side preparation with no model step, so a
  loader bottleneck cannot hide behind the prefetch queue;
- data wait: the share of full-step time the training loop spent blocked waiting for its next batch;
- peak mem: torch.cuda.max_memory_allocated over the measurements ("n/a" on CPU);
- ours/reference ratios, and for the pose finetune the evaluation time of `inference.predict` with the
  flip test (BN-folded model, uint8 crops) for the box count measured, and scaled to val2017's 104,125.

Both pipelines use `--workers` loader processes (default: the studies' `data.loader_workers`, 8) and
the same numerics switches (printed: cuDNN / matmul TF32, cudnn.benchmark). On CPU (or with `--small`)
the models are narrow and the inputs 64-128 px: those figures check the machinery and are NOT the
H100/H200 targets. Run as `python -m benchmarks.throughput --help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks import reference
from workloads.config import (
    HEATMAP_STRIDE,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    RuntimeConfig,
    heatmap_hw_of_input,
)
from workloads.context import LocalContext
from workloads.data import synthetic
from workloads.data.coco import load_detections, load_persons
from workloads.data.device_decode import (
    collate_with_bytes,
    crop_images,
    decode_jpegs,
    decodes_on_device,
    read_jpeg_bytes,
)
from workloads.data.keypoints import NUM_KEYPOINTS
from workloads.engine import (
    apply_memory_format,
    compile_step,
    configure_backends,
    make_loader,
    make_optimizer,
    prefetch,
    sample_rng,
)
from workloads.hsjp import train as hsjp_train
from workloads.hsjp.batched import check_placement, render_batch, renders_on_device
from workloads.hsjp.dataset import (
    PuzzleDataset,
    crop_matrix,
    draw_puzzle,
    load_instances,
    read_crop,
    render_sample,
)
from workloads.hsjp.puzzle import padded_size
from workloads.hsjp.targets import heatmap_stride
from workloads.models import build_model
from workloads.pose import inference
from workloads.pose import train as pose_train
from workloads.pose.dataset import PoseTrainDataset
from workloads.pose.train import EVAL_BATCH, batch_size_of, cap_val_instances, uses_device_targets

log = logging.getLogger(__name__)

BACKBONES = ("hrnet_w32", "simplebaseline_r50")
TASKS = ("pretext", "finetune")
COLUMNS = ("backbone", "task", "input", "batch", "steps", "pipeline", "full img/s", "model img/s",
           "data img/s", "data wait", "peak mem")  # fmt: skip
STUDY_WORKERS = 8  # data.loader_workers of studies/*.yaml (tests/benchmarks checks they agree)
VAL2017_BOXES = 104_125  # HRNet's val2017 person detections (COCO_val2017_detections_AP_H_56_person.json)
SMALL_NOTE = ("NOTE: CPU / --small run: narrow models, {px} px inputs, {steps} steps of batch {batch}. These "
              "figures check the machinery; they are NOT the H100 targets (P1-P3: >= 2,000 img/s HRNet-W32, "
              ">= 3,000 img/s SimpleBaseline-R50 on one H100, bf16).")  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """What one benchmark run measures."""

    pretext_input: int  # pretext crop side, px (paper §3.1: 224)
    n: int  # puzzle size N (issue: N = 6, 36 heatmaps)
    finetune_hw: tuple[int, int]  # pose input (H, W) (paper §4.2: 256×192)
    batch: int
    steps: int  # timed steps per measurement
    warmup: int  # untimed steps before (worker start-up, cudnn autotuning, allocator)
    workers: int  # loader processes (and eval decode threads) per pipeline
    train_images: int  # synthetic set size
    val_images: int
    image_wh: tuple[int, int]  # synthetic image size (COCO images are ~640×480)
    eval_instances: int  # cap on evaluated boxes (whole images)
    models: dict[str, ModelConfig] = field(default_factory=dict)


FULL = Sizes(224, 6, (256, 192), 128, 30, 5, STUDY_WORKERS, 256, 512, (640, 480),
             4096, {"hrnet_w32": ModelConfig(), "simplebaseline_r50": ModelConfig(backbone="simplebaseline_r50")})  # fmt: skip
SMALL = Sizes(64, 6, (128, 96), 4, 3, 1, 2, 12, 6, (320, 240), 16,
              {"hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
               "simplebaseline_r50": ModelConfig(backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1),
                                                 deconv_channels=32)})  # fmt: skip


@dataclass
class Timing:
    seconds: float
    wait_seconds: float
    images: int
    last_loss: float
    first_step_seconds: float = float("nan")  # the first (untimed) step, synced: compile included
    frames_compiled_warm: int = 0  # torch.compile frames compiled in the warm-up (later ones: recompiles)

    @property
    def img_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class Pipeline:
    """A model + optimiser + loader, how a loader batch becomes the step's input, and the step."""

    name: str
    model: torch.nn.Module
    loader: Any
    prepare: Callable[[Any], Any]  # loader batch → the step's input on the device
    step: Callable[[Any], Any]  # prepared input → loss (a device tensor, or a float when the step syncs)
    count: Callable[[Any], int]  # loader batch → images
    prefetch: bool  # prepare two batches ahead as training does (ours), or inline (reference)


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepared(pipe: Pipeline, device: torch.device):
    """(prepared input, images) per loader batch, the way the pipeline's training loop makes them."""
    work = lambda b: (pipe.prepare(b), pipe.count(b))  # noqa: E731
    if pipe.prefetch:
        return prefetch(pipe.loader, work, device)
    return (work(b) for b in pipe.loader)


def frames_compiled() -> int:
    """Frames torch.compile (dynamo) has compiled in this process so far (its own counter; 0 if absent)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["frames"].get("ok", 0))


def time_loader_steps(pipe: Pipeline, warmup: int, steps: int, device: torch.device) -> Timing:
    """`warmup` untimed then `steps` timed loader-fed steps, no sync between them; wait = time the loop
    was blocked on its next batch. The first step is timed alone (synced, outside the timed window): with
    torch.compile it holds the compilation."""
    batches = iter(_prepared(pipe, device))
    frames0 = frames_compiled()
    wait, images, loss, start, first, frames_warm = 0.0, 0, float("nan"), time.perf_counter(), float("nan"), 0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            wait, images, start = 0.0, 0, time.perf_counter()
            frames_warm = frames_compiled()
        t0 = time.perf_counter()
        x, count = next(batches)
        wait += time.perf_counter() - t0
        t1 = time.perf_counter()
        loss = pipe.step(x)
        if i == 0 and warmup > 0:
            _sync(device)
            first = time.perf_counter() - t1
        images += count
    _sync(device)
    seconds = time.perf_counter() - start
    loss = float(loss)
    del batches
    return Timing(seconds, wait, images, loss, first, frames_warm - frames0)


def time_data_only(pipe: Pipeline, warmup: int, steps: int, device: torch.device) -> Timing:
    """Loader capacity: the batches made and prepared on the device as in training, with no model step."""
    batches = iter(_prepared(pipe, device))
    images, start = 0, time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            images, start = 0, time.perf_counter()
        _, count = next(batches)
        images += count
    _sync(device)
    seconds = time.perf_counter() - start
    del batches
    return Timing(seconds, 0.0, images, float("nan"))


def time_resident_steps(pipe: Pipeline, batch, warmup: int, steps: int, device: torch.device) -> Timing:
    """The step alone on one batch already prepared on the device."""
    x, count = pipe.prepare(batch), pipe.count(batch)
    for _ in range(warmup):
        pipe.step(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = pipe.step(x)
    _sync(device)
    return Timing(time.perf_counter() - start, 0.0, steps * count, float(loss))


def _batch_size(batch) -> int:
    if isinstance(batch, dict):  # a pretext batch, or a pose batch decoded on the device
        return int(batch["mask"].shape[0]) if "mask" in batch else batch_size_of(batch)
    return int(batch[0].shape[0])


def _to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return type(batch)(t.to(device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)


# ---------------------------------------------------------------------------------------- configs
def make_configs(
    backbone: str, sizes: Sizes, compile_model: str = "auto", augment_on: str = "auto"
) -> tuple[PretrainConfig, FinetuneConfig]:
    # "ours" measures bf16 autocast on CUDA (in the studies an opt-in: runtime.amp)
    runtime = RuntimeConfig(amp="auto", compile=compile_model)
    model = sizes.models[backbone]
    side = sizes.pretext_input
    pretrain = PretrainConfig(model=model, n=sizes.n, input_size=side, heatmap_size=side // HEATMAP_STRIDE,
                              batch_size=sizes.batch, runtime=runtime, augment_on=augment_on)  # fmt: skip
    h, w = sizes.finetune_hw
    finetune = FinetuneConfig(model=model, input_hw=(h, w), heatmap_hw=heatmap_hw_of_input(h, w), batch_size=sizes.batch,
                              runtime=runtime)  # fmt: skip
    return pretrain, finetune


def train_instances(task: str, root: str, cfg, count: int) -> list:
    """`count` training persons of the task (the set repeated when smaller: every sample is decoded anew)."""
    if task == "pretext":
        persons = load_instances(DataConfig(coco_root=root, max_train_instances=count), train=True, seed=0)
    else:
        aspect = cfg.input_hw[1] / cfg.input_hw[0]
        persons = load_persons(root, "train2017", with_keypoints=True, aspect_ratio=aspect)
    return (persons * math.ceil(count / len(persons)))[:count]


# --------------------------------------------------------------------------------------- pipelines
def ours_pipeline(
    task: str, cfg, persons: list, sizes: Sizes, device: torch.device, tmp: Path, decode_on: str = "auto"
) -> Pipeline:
    """The workloads' training path: their datasets and the engine task each hands the loop (`task_of`:
    `prepare_batch`, the compiled forward + loss, `pretext_step` / `pose_step`)."""
    channels = cfg.n * cfg.n if task == "pretext" else NUM_KEYPOINTS
    model = build_model(cfg.model, channels, generator=torch.Generator().manual_seed(0))
    model = apply_memory_format(model, cfg.runtime, device).to(device)
    model.train()
    optimizer = make_optimizer(model, cfg.lr)  # fused
    data = DataConfig(decode_on=decode_on)
    decode = decodes_on_device(data, device)
    ctx = LocalContext(tmp / f"ctx-{task}", device=device)
    if task == "pretext":
        check_placement(cfg, data, device)
        render = renders_on_device(cfg, device, data)
        dataset = PuzzleDataset(
            persons, cfg, train=True, seed=0, render_on_device=render, decode_on_device=decode
        )
        hw = hsjp_train.heatmap_hw_of(cfg)
        forward_loss = compile_step(hsjp_train.make_forward_loss(cfg, device, hw), cfg.runtime, device)
        stride = heatmap_stride(cfg.input_size, cfg.heatmap_size)
    else:
        dataset = PoseTrainDataset(persons, cfg, seed=0, device_targets=decode or uses_device_targets(device),
                                   decode_on_device=decode)  # fmt: skip
        forward_loss = compile_step(pose_train.make_forward_loss(cfg, device), cfg.runtime, device)
    collate = collate_with_bytes if decode else None
    loader, sampler = make_loader(
        dataset, sizes.batch, ctx, seed=0, workers=sizes.workers, collate_fn=collate
    )
    if task == "pretext":  # the engine's task of each workload: its own prepare and train step
        run = hsjp_train.PretextRun(cfg, ctx, model, optimizer, loader, sampler, hw, stride, forward_loss)
        work = hsjp_train.task_of(run, None, dict)
    else:
        work = pose_train.task_of(
            pose_train.FinetuneRun(cfg, ctx, model, optimizer, loader, sampler, forward_loss), None, dict
        )
    return Pipeline("ours", model, loader, work.prepare, work.train_step, _batch_size, prefetch=True)


def reference_pipeline(task: str, cfg, persons: list, sizes: Sizes, device: torch.device) -> Pipeline:
    channels = cfg.n * cfg.n if task == "pretext" else NUM_KEYPOINTS
    model, optimizer = reference.build_reference_model(cfg.model, channels, cfg.lr, device)
    if task == "pretext":
        dataset = reference.ReferencePuzzleDataset(persons, cfg)
    else:
        dataset = reference.ReferencePoseDataset(persons, cfg)
    loader = reference.make_reference_loader(dataset, sizes.batch, sizes.workers, device)
    step = lambda b: reference.reference_step(model, b, optimizer, device, task)  # noqa: E731
    return Pipeline(
        "reference", model, loader, lambda b: _to_device(b, device), step, _batch_size, prefetch=False
    )


# --------------------------------------------------------------------------------------- measuring
def measure(pipe: Pipeline, sizes: Sizes, device: torch.device) -> dict:
    """Full and model-only rates, data-wait share and peak device memory of one pipeline."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    frames0 = frames_compiled()
    full = time_loader_steps(pipe, sizes.warmup, sizes.steps, device)
    first = next(iter(pipe.loader))
    alone = time_resident_steps(pipe, first, sizes.warmup, sizes.steps, device)
    data = time_data_only(pipe, sizes.warmup, sizes.steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "pipeline": pipe.name,
        "full_img_s": full.img_per_s,
        "model_img_s": alone.img_per_s,
        "data_img_s": data.img_per_s,
        "data_wait_share": full.wait_seconds / max(full.seconds, 1e-9),
        "peak_mem_gib": peak,
        "full_seconds": full.seconds,
        "model_seconds": alone.seconds,
        "last_loss": full.last_loss,
        "first_step_s": full.first_step_seconds,
        "compiled_frames": full.frames_compiled_warm,
        # every frame compiled after the full run's warm-up (its timed steps, the model-only steps)
        "recompiles": frames_compiled() - frames0 - full.frames_compiled_warm,
    }


def measure_eval(model, cfg: FinetuneConfig, root: str, sizes: Sizes, device: torch.device) -> dict:
    """instances/s of `inference.predict` with the flip test over the val boxes (detections if present)."""
    aspect = cfg.input_hw[1] / cfg.input_hw[0]
    det_file = Path(root) / synthetic.DETECTION_FILE
    if det_file.is_file():
        instances, boxes = load_detections(det_file, root, "val2017", aspect_ratio=aspect), "detections"
    else:
        instances, boxes = load_persons(root, "val2017", with_keypoints=True, aspect_ratio=aspect), "gt"
    instances = cap_val_instances(instances, sizes.eval_instances)
    cfg = replace(cfg, flip_test=True)
    inference.predict(model, instances[: min(8, len(instances))], cfg, device, EVAL_BATCH, sizes.workers)
    _sync(device)
    start = time.perf_counter()
    results = inference.predict(model, instances, cfg, device, EVAL_BATCH, sizes.workers)
    _sync(device)
    seconds = time.perf_counter() - start
    rate = len(instances) / max(seconds, 1e-9)
    return {"boxes": boxes, "instances": len(instances), "results": len(results), "seconds": seconds,
            "inst_s": rate, "flip_test": True, "val2017_seconds_est": VAL2017_BOXES / rate,
            "workers": sizes.workers}  # fmt: skip


def _ms_per_image(fn: Callable[[], Any], images: int, repeats: int, device: torch.device) -> float:
    """Milliseconds per image of `fn` (one pass over `images` images), after one warm-up pass, synced."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return 1e3 * (time.perf_counter() - start) / (repeats * images)


def measure_render(root: str, sizes: Sizes, device: torch.device, repeats: int = 5) -> dict:
    """The pretext's data work alone, per image, for the two placements (same files, crops and draws):
    decode + crop — OpenCV per sample on one thread, file read included (each loader worker with
    decode_on: loader) vs decode_jpeg + one batched crop on `device` from the bytes (decode_on: device);
    puzzles with the paper's augmentation — OpenCV per sample on one thread (augment_on: loader) vs
    batched on `device` (augment_on: device)."""
    side = sizes.pretext_input
    square = padded_size(side, sizes.n)
    cfg = PretrainConfig(n=sizes.n, input_size=side, heatmap_size=side // HEATMAP_STRIDE)
    persons = train_instances("pretext", root, cfg, sizes.batch)
    crops = [read_crop(p, square) for p in persons]
    draws = [draw_puzzle(cfg, sample_rng(0, 0, i), augment=True) for i in range(len(crops))]
    files = [read_jpeg_bytes(p.image_path) for p in persons]
    mats = torch.from_numpy(np.stack([crop_matrix(p, square) for p in persons]))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    count = len(persons)
    decode_cpu = _ms_per_image(lambda: [read_crop(p, square) for p in persons], count, repeats, device)
    render_cpu = _ms_per_image(
        lambda: [render_sample(c, d, cfg) for c, d in zip(crops, draws, strict=True)],
        count,
        repeats,
        device,
    )
    cv2.setNumThreads(threads)
    decode_dev = _ms_per_image(
        lambda: crop_images(decode_jpegs(files, device), mats, (square, square), device),
        count,
        repeats,
        device,
    )
    on_device = torch.from_numpy(np.stack(crops)).to(device)
    color = torch.from_numpy(
        np.stack([d.color.to_vector() for d in draws])
    )  # read on the host, as in training
    perm = torch.from_numpy(np.stack([d.perm for d in draws]))
    matrix = torch.from_numpy(np.stack([d.matrix for d in draws]))
    render_dev = _ms_per_image(
        lambda: render_batch(on_device, color, perm, matrix, cfg), count, repeats, device
    )
    return {"input": side, "n": sizes.n, "batch": count, "device": device.type,
            "decode_per_sample_ms": decode_cpu, "decode_batched_ms": decode_dev,
            "per_sample_ms": render_cpu, "batched_ms": render_dev}  # fmt: skip


def bench_task(backbone: str, task: str, sizes: Sizes, device: torch.device, root: str, tmp: Path,
               args) -> tuple[list[dict], dict | None]:  # fmt: skip
    """Rows (ours, reference) of one backbone × task, and the evaluation figure for the finetune."""
    pretrain, finetune = make_configs(backbone, sizes, args.compile, args.augment_on)
    cfg = pretrain if task == "pretext" else finetune
    persons = train_instances(task, root, cfg, (sizes.warmup + sizes.steps + 1) * sizes.batch)
    size = f"{cfg.input_size}x{cfg.input_size}" if task == "pretext" else "x".join(map(str, cfg.input_hw))
    common = {"backbone": backbone, "task": task, "input": size, "batch": sizes.batch, "steps": sizes.steps}
    rows, evaluation = [], None
    for build in (ours_pipeline, reference_pipeline):
        args_ = (task, cfg, persons, sizes, device) + (
            (tmp, args.decode_on) if build is ours_pipeline else ()
        )
        pipe = build(*args_)
        log.info("measuring %s %s %s", backbone, task, pipe.name)
        rows.append(common | measure(pipe, sizes, device))
        if pipe.name == "ours" and task == "finetune" and not args.no_eval:
            evaluation = {"backbone": backbone, "input": size} | measure_eval(
                pipe.model, cfg, root, sizes, device
            )
        del pipe
    return rows, evaluation


# ------------------------------------------------------------------------------------------ output
def ratios(rows: list[dict]) -> list[dict]:
    """ours / reference of each backbone × task."""
    out = []
    for ours in (r for r in rows if r["pipeline"] == "ours"):
        ref = next(r for r in rows if r["pipeline"] == "reference" and r["backbone"] == ours["backbone"]
                   and r["task"] == ours["task"])  # fmt: skip
        out.append({"backbone": ours["backbone"], "task": ours["task"],
                    "full": ours["full_img_s"] / max(ref["full_img_s"], 1e-9),
                    "model": ours["model_img_s"] / max(ref["model_img_s"], 1e-9)})  # fmt: skip
    return out


def format_table(report: dict) -> str:
    """The printed report: header lines, the table with ratio rows, the evaluation lines."""
    lines = [f"hsjp-study throughput — device {report['device']} ({report['device_name']}), torch "
             f"{report['torch']}, {report['threads']} threads, {report['workers']} loader workers, "
             f"ours decodes on the {report['decode_on']} and augments pretext puzzles on the "
             f"{report['pretext_augment_on']}, compile {report['compile']}, data: {report['data']}",
             f"numerics (both pipelines): cuDNN TF32 {report['numerics']['cudnn_tf32']}, matmul TF32 "
             f"{report['numerics']['matmul_tf32']}, cudnn.benchmark {report['numerics']['cudnn_benchmark']}; "
             "ours bf16 autocast on CUDA (runtime.amp auto), reference fp32 with PyTorch's default Adam"]  # fmt: skip
    if report["small"]:
        lines.append(report["note"])
    cells = [list(COLUMNS)]
    for row in report["rows"]:
        mem = "n/a" if row["peak_mem_gib"] is None else f"{row['peak_mem_gib']:.2f} GiB"
        cells.append([row["backbone"], row["task"], row["input"], str(row["batch"]), str(row["steps"]),
                      row["pipeline"], f"{row['full_img_s']:.1f}", f"{row['model_img_s']:.1f}",
                      f"{row['data_img_s']:.1f}", f"{100 * row['data_wait_share']:.1f}%", mem])  # fmt: skip
        if row["pipeline"] == "reference":
            r = next(
                x for x in report["ratios"] if (x["backbone"], x["task"]) == (row["backbone"], row["task"])
            )
            cells.append(
                ["", "", "", "", "", "ours/ref", f"{r['full']:.2f}x", f"{r['model']:.2f}x", "", "", ""]
            )
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for c in cells:
        lines.append(
            "  ".join(v.ljust(w) if i < 6 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
        )
    if report.get("render"):
        r = report["render"]
        lines.append(f"pretext data work alone ({r['input']} px, N={r['n']}, batch {r['batch']}), ms per image — "
                     f"decode + crop: OpenCV per sample on one core {r['decode_per_sample_ms']:.2f}, batched on the "
                     f"{r['device']} {r['decode_batched_ms']:.3f}; puzzles with the paper's augmentation: OpenCV per "
                     f"sample on one core {r['per_sample_ms']:.2f}, batched on the {r['device']} "
                     f"{r['batched_ms']:.3f}")  # fmt: skip
    for ev in report["eval"]:
        lines.append(f"evaluation {ev['backbone']} {ev['input']}: predict with flip test (BN folded), {ev['instances']} "
                     f"{ev['boxes']} boxes in {ev['seconds']:.2f} s = {ev['inst_s']:.1f} instances/s on one rank "
                     f"(val2017's {VAL2017_BOXES:,} boxes: ~{ev['val2017_seconds_est']:.0f} s)")  # fmt: skip
    lines.append("full = loader-fed training steps as training runs them (decode, crop, augment, targets included); "
                 "model = the step alone on a prepared batch; data = the loader + device-side preparation alone "
                 "(loader capacity); data wait = share of full-step time blocked on the next batch.")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--backbone", choices=[*BACKBONES, "all"], default="all")
    p.add_argument("--task", choices=[*TASKS, "all"], default="all")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 30; --small 3)")
    p.add_argument("--warmup", type=int, help="untimed steps before each measurement (default 5; --small 1)")
    p.add_argument("--batch", type=int, help="batch size (default 128; --small 4)")
    p.add_argument("--workers", type=int,
                   help=f"loader workers per pipeline (default {STUDY_WORKERS}, the studies' data.loader_workers; --small 2)")  # fmt: skip
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--small", action="store_true", help="narrow models, 64-128 px inputs (always on for CPU)")
    p.add_argument("--coco-root", help="a COCO 2017 folder to read instead of a generated synthetic set")
    p.add_argument("--images", type=int, help="synthetic train images (default 256; --small 12)")
    p.add_argument("--eval-instances", type=int, help="cap on evaluated val boxes (default 4096; --small 16)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation (predict) measurement")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile of our training step (runtime.compile; auto = on CUDA)")  # fmt: skip
    p.add_argument("--decode-on", choices=["auto", "loader", "device"], default="auto",
                   help="where our training JPEGs are decoded and cropped: loader workers (OpenCV) or the device "
                        "(torchvision.io / nvJPEG); auto = data.decode_on's auto")  # fmt: skip
    p.add_argument("--augment-on", choices=["auto", "loader", "device"], default="auto",
                   help="where our pretext puzzles are augmented: loader workers (per sample) or batched on "
                        "the device; auto = device on CUDA (pretrain.augment_on)")  # fmt: skip
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "images", "eval_instances"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    return args


def resolve(args: argparse.Namespace) -> tuple[torch.device, Sizes, bool]:
    """(device, sizes, small) from the arguments; CPU always runs small."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    small = args.small or not cuda
    sizes = SMALL if small else FULL
    overrides = {"steps": args.steps, "warmup": args.warmup, "batch": args.batch, "workers": args.workers,
                 "train_images": args.images, "eval_instances": args.eval_instances}  # fmt: skip
    return device, replace(sizes, **{k: v for k, v in overrides.items() if v is not None}), small


def run(args: argparse.Namespace) -> dict:
    device, sizes, small = resolve(args)
    # Fork safety: PoseTrainDataset calls cv2.setNumThreads(1) in each loader worker, which can hang
    # forever when the forking process has a live OpenCV thread pool (from the synthetic generator or
    # predict's decoding here); with one cv2 thread in this process there is no pool to inherit.
    cv2.setNumThreads(1)
    configure_backends(device)  # cudnn.benchmark, as training and the official code
    backbones = BACKBONES if args.backbone == "all" else (args.backbone,)
    tasks = TASKS if args.task == "all" else (args.task,)
    px = f"{sizes.pretext_input}-{max(sizes.finetune_hw)}"
    report: dict = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "workers": sizes.workers,
        "decode_on": "device"
        if decodes_on_device(DataConfig(decode_on=args.decode_on), device)
        else "loader",
        "pretext_augment_on": "device"
        if renders_on_device(
            PretrainConfig(augment_on=args.augment_on), device, DataConfig(decode_on=args.decode_on)
        )
        else "loader",
        "small": small,
        "note": SMALL_NOTE.format(px=px, steps=sizes.steps, batch=sizes.batch) if small else "",
        "data": "",
        "numerics": reference.numerics(),
        "compile": "on" if RuntimeConfig(compile=args.compile).compiles(device) else "off",
        "rows": [],
        "ratios": [],
        "eval": [],
        "render": None,
        "complete": False,
    }
    with tempfile.TemporaryDirectory(prefix="hsjp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.coco_root:
            root, report["data"] = args.coco_root, f"COCO at {args.coco_root}"
        else:
            summary = synthetic.generate(tmp / "data", n_train=sizes.train_images, n_val=sizes.val_images,
                                         seed=0, image_size=sizes.image_wh)  # fmt: skip
            root = summary["root"]
            report["data"] = (f"synthetic {sizes.train_images}+{sizes.val_images} images at "
                              f"{sizes.image_wh[0]}x{sizes.image_wh[1]}")  # fmt: skip
        for backbone in backbones:
            for task in tasks:
                task_rows, evaluation = bench_task(backbone, task, sizes, device, root, tmp, args)
                report["rows"] += task_rows
                report["eval"] += [evaluation] if evaluation else []
                report["ratios"] = ratios(report["rows"])
                write_json(report, args.json)  # so far: a run cut short still leaves its figures
        report["render"] = measure_render(root, sizes, device) if "pretext" in tasks else None
    report["complete"] = True
    write_json(report, args.json)
    return report


def write_json(report: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.throughput ...` / `hsjp-study bench ...`: prints the table; 0 on success."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    print(format_table(report))
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
