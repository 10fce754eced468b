"""The training engine shared by both workloads (pretext and pose finetune).

One epoch loop with: exact resume from the latest epoch checkpoint, per-epoch metrics, evaluation
every k epochs and at the end, best-metric model as the stage output, and collapse detection
(NaN/Inf or exploding loss → a result, not a crash). Also: deterministic sharded sampling whose
order depends only on (seed, epoch), per-sample RNGs keyed by (seed, epoch, index) so a resumed
run sees exactly the batches and augmentations of an uninterrupted one, Adam + MultiStepLR,
and the bf16 / channels_last switches.
"""

from __future__ import annotations

import contextlib
import copy as copy_module
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from workloads.config import HEATMAP_STRIDE, RuntimeConfig, lr_drop_epochs
from workloads.context import StageContext
from workloads.data.transforms import network_input

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ sampling
class EpochSampler(Sampler[Any]):
    """Yields `(epoch, index)` keys: a permutation that depends only on (seed, epoch), sharded over
    ranks (padded by wrapping so every rank gets the same count, as DistributedSampler does).

    Datasets take the key in `__getitem__` and derive the sample's RNG from it (`sample_rng`), so
    augmentations do not depend on loader workers, and a resumed epoch repeats exactly.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if num_items < 1:
            raise ValueError("EpochSampler: the dataset is empty")
        self.num_items, self.seed, self.rank, self.world_size, self.shuffle = (
            num_items,
            seed,
            rank,
            world_size,
            shuffle,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        total = len(self) * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        for idx in order[self.rank :: self.world_size]:
            yield (self.epoch, idx)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample in one epoch (independent of loader workers and resume points)."""
    return np.random.default_rng([seed, epoch, index])


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    ctx: StageContext,
    seed: int,
    workers: int,
    shuffle: bool = True,
    drop_last: bool = True,
    collate_fn: Callable[..., Any] | None = None,
) -> tuple[DataLoader[Any], EpochSampler]:
    """A loader over `dataset` (whose __getitem__ takes an `(epoch, index)` key) for this rank.

    `batch_size` is per worker (per GPU: the configs' batch sizes are, as the official BATCH_SIZE_PER_GPU);
    the global batch is batch_size × world size. With fewer items than a batch, the batch shrinks to
    the shard so tiny data sets still train.
    """
    per_rank = max(1, batch_size)
    # torch's Dataset declares no __len__; a map-style dataset (every one here) defines it
    sampler = EpochSampler(len(cast(Sized, dataset)), seed, ctx.rank, ctx.world_size, shuffle)
    per_rank = min(per_rank, len(sampler))
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
    )
    return loader, sampler


# ------------------------------------------------------------------------------ optimiser / runtime
def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters, no weight decay (official HRNet/SimpleBaseline; paper §3.4).

    The fused implementation (CPU and CUDA since torch 2.4): a few kernels per step for all tensors, and
    its step count stays a device tensor — the for-loop / foreach Adam read it on the host (`.item()`,
    one host sync per parameter tensor per step on CUDA's non-capturable path)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr, fused=bool(params))


def make_lr_schedule(
    optimizer: torch.optim.Optimizer, milestones: list[int], factor: float
) -> torch.optim.lr_scheduler.MultiStepLR:
    """MultiStepLR stepped once per epoch after training it, with the official drop placement: the lr
    drops by `factor` from 0-based epoch m − 1 for each milestone m (`lr_drop_epochs`).

    The official HRNet / SimpleBaseline tools/train.py call `lr_scheduler.step()` at the START of each
    epoch on an lr scheduler whose constructor already stepped once (PyTorch < 1.1), so epoch e trains
    with the lr of lr-scheduler epoch e + 1: LR_STEP [170, 200] of 210 epochs gives 169 / 30 / 11 epochs per lr
    (0..168, 169..198, 199..209). Stepping after the epoch with milestones m − 1 gives the same lrs."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=lr_drop_epochs(milestones), gamma=factor
    )


def use_bf16(runtime: RuntimeConfig, device: torch.device) -> bool:
    return runtime.amp == "bf16" or (runtime.amp == "auto" and device.type == "cuda")


def autocast(runtime: RuntimeConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast context when enabled, else a no-op context."""
    if use_bf16(runtime, device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def wants_channels_last(runtime: RuntimeConfig, device: torch.device) -> bool:
    """The one channels_last rule, for the model (`apply_memory_format`) and its input batches alike:
    "on", or "auto" on CUDA (where cuDNN's NHWC kernels are the fast ones)."""
    return runtime.channels_last == "on" or (runtime.channels_last == "auto" and device.type == "cuda")


def apply_memory_format(model: nn.Module, runtime: RuntimeConfig, device: torch.device) -> nn.Module:
    if wants_channels_last(runtime, device):
        return model.to(memory_format=torch.channels_last)
    return model


def forward_heatmaps(
    model: nn.Module, images: torch.Tensor, runtime: RuntimeConfig, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """The model's heatmaps of a batch as the loaders and `prepare` ship it (uint8 NHWC or normalised
    float NCHW): normalised and laid out on the device (`network_input`), the forward under the
    configured autocast. The first half of both tasks' `forward_loss`."""
    x = network_input(images, channels_last)
    with autocast(runtime, device):
        heatmaps: torch.Tensor = model(x)
        return heatmaps


def backward_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """One optimiser step on `loss` (gradients zeroed first, as None); the loss back, detached and still
    on the device (no host read). Both workloads' steps (`pretext_step`, `pose_step`) end with it."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    optimizer.step()
    return loss.detach()


def check_heatmap_output(pred: torch.Tensor, expected_hw: Iterable[int], key: str, value: Any) -> None:
    """The model's heatmaps [B, K, H, W] have the configured size (`key` = `value`): a backbone outputs
    input / HEATMAP_STRIDE, so a mismatch is a config that slipped past the study checks."""
    if tuple(pred.shape[-2:]) != tuple(expected_hw):
        raise ValueError(
            f"{key} = {value}: the model outputs {tuple(pred.shape[-2:])} heatmaps, expected "
            f"{tuple(expected_hw)} (heatmaps are input / {HEATMAP_STRIDE})"
        )


def configure_backends(device: torch.device) -> None:
    """cudnn.benchmark on for training on CUDA: the input shapes are fixed (drop_last), so the fastest
    convolution algorithms are found once in the first steps and reused."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def compile_step(
    fn: Callable[..., Any], runtime: RuntimeConfig, device: torch.device, fullgraph: bool = False
) -> Callable[..., Any]:
    """`fn` (a training step's forward + loss) under torch.compile when `runtime.compiles(device)`, else
    `fn`. The step is compiled, not the module, so the DDP wrapper, the loss and the input normalisation
    are in the graph too; tests/workloads/test_compile.py proves there are no graph breaks."""
    if not runtime.compiles(device):
        return fn
    mode = None if runtime.compile_mode == "default" else runtime.compile_mode
    log.info("torch.compile of the training step (mode %s)", runtime.compile_mode)
    return torch.compile(fn, mode=mode, fullgraph=fullgraph)


DDP_KWARGS: dict[str, Any] = {
    "broadcast_buffers": False,  # BN statistics are not broadcast before every forward (sync_buffers)
    "gradient_as_bucket_view": True,  # grads live in the all-reduce buckets: no copy, less memory
}
"""DistributedDataParallel options of the training model (Ray's prepare_model forwards them). static_graph
is set per stage by `use_static_graph`: it is valid here (the same parameters take part in every step;
frozen ones never do) but is left off under torch.compile, whose DDP graph splitting (DDPOptimizer) is
reported not to work with it (pytorch/pytorch#109261)."""


def use_static_graph(model: nn.Module, runtime: RuntimeConfig, device: torch.device) -> bool:
    """Mark a DDP-wrapped `model` as a static graph (DDP's own `_set_static_graph`, what static_graph=True
    does in its constructor) when the step runs eagerly; True when it did. Call before the first step."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not runtime.compiles(device):
        model._set_static_graph()  # type: ignore[no-untyped-call]  # DDP's private method is unannotated
        return True
    return False


def place_model(model: nn.Module, runtime: RuntimeConfig, ctx: StageContext) -> nn.Module:
    """The training model of a stage, both tasks alike: in the runtime's memory format, on the stage's
    device and under DDP when it has several workers (`ctx.prepare_model`), cuDNN's autotuner on for
    CUDA, and a DDP model marked static when it runs eagerly (after the wrap: `use_static_graph`)."""
    model = ctx.prepare_model(apply_memory_format(model, runtime, ctx.device))
    configure_backends(ctx.device)
    use_static_graph(model, runtime, ctx.device)
    return model


def sync_buffers(model: nn.Module, world_size: int) -> None:
    """Rank 0's buffers (BN running statistics) to every rank: with broadcast_buffers=False they drift
    apart per rank in training; evaluation and the checkpoint then use rank 0's, as before."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf, src=0)


def prefetch(
    loader: Iterable[Any], prepare: Callable[[Any], Any], device: torch.device, depth: int = 2
) -> Iterator[Any]:
    """`prepare(batch)` of every batch of `loader`, `depth` batches ahead of the consumer.

    On CUDA `prepare` (host→device copies of pinned memory, decode / render / targets) runs on a side
    stream, so batch k+1 is made while step k runs; the consumer's stream waits for it on the device (an
    event, no host sync) and its tensors are marked as used there (`record_stream`), so the caching
    allocator does not hand their memory to the side stream while the step still reads it. On CPU the
    same order without streams."""
    it = iter(loader)
    # torch.cuda.Stream / Event are unannotated constructors
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # type: ignore[no-untyped-call]
    queue: deque[Any] = deque()

    def launch() -> None:
        batch = next(it, _END)
        if batch is _END:
            return
        if stream is None:
            queue.append((prepare(batch), None))
            return
        # no wait on the step's stream: prepare only reads pinned host batches and device constants
        # (complete when made), and its outputs' memory comes from the side stream's own pool
        with torch.cuda.stream(stream):
            out = prepare(batch)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(stream)
        queue.append((out, event))

    for _ in range(max(1, depth)):
        launch()
    while queue:
        out, event = queue.popleft()
        if event is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            _record_stream(out, current)
        launch()
        yield out


_END = object()


def _record_stream(tree: Any, stream: torch.cuda.Stream) -> None:
    if isinstance(tree, torch.Tensor):
        if tree.is_cuda:
            tree.record_stream(stream)
    elif isinstance(tree, dict):
        for v in tree.values():
            _record_stream(v, stream)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            _record_stream(v, stream)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)  # torch.compile's OptimizedModule
        else:
            return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return cast(dict[str, torch.Tensor], host_copy(dict(unwrap(model).state_dict())))


def host_copy(tree: Any) -> Any:
    """A copy of `tree` (dicts / lists / tuples of tensors and plain data) with every tensor in host
    memory: device tensors go into pinned buffers with non_blocking copies and one synchronize at the end
    (not one blocking copy per tensor); host tensors are cloned. What a checkpoint writer may then
    serialise in the background while training goes on."""
    pending: list[bool] = []

    def copy(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.device.type == "cpu":
                return x.clone()
            out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            out.copy_(x, non_blocking=True)
            pending.append(True)
            return out
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, list):
            return [copy(v) for v in x]
        if isinstance(x, tuple):
            return tuple(copy(v) for v in x)
        return copy_module.deepcopy(x)

    out = copy(tree)
    if pending and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


# -------------------------------------------------------------------------------------- epoch loop
@dataclass
class LoopSpec:
    epochs: int
    """Total epochs of the stage."""
    eval_every: int
    """Evaluate every k epochs and after the last one."""
    select_key: str
    """Metric (from `evaluate`) whose maximum selects the output model: `precision` / `AP`."""
    collapse_loss: float
    """Mean epoch loss above this (or non-finite) = collapsed."""
    config: dict[str, Any]
    """The stage's config as plain data (stored in every checkpoint)."""
    collapse_check: Callable[[list[dict[str, Any]], bool], str | None] | None = None
    """Called on every rank after each evaluation with (history, is-last-epoch): a reason string ends
    the stage as collapsed (pretext: it failed to learn the puzzle after a warm-up, hsjp/collapse.py)."""
    history_keys: tuple[str, ...] = ()
    """Evaluation metrics kept in the history beside `select_key` (what `collapse_check` reads)."""


@dataclass
class LoopOutcome:
    best_value: float | None
    best_epoch: int | None
    best_model: dict[str, torch.Tensor] | None
    best_eval: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    collapsed: bool = False
    collapsed_epoch: int | None = None
    collapse_reason: str | None = None


REPORTS_PER_EPOCH = 4  # within-epoch progress reports (each costs one device sync)


def global_mean(total: torch.Tensor, seen: int, world_size: int) -> float:
    """Sample-weighted mean over every rank (equal shards: EpochSampler pads them)."""
    buf = torch.stack([total.double(), torch.tensor(float(seen), dtype=torch.float64, device=total.device)])
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(buf)
    return float(buf[0] / buf[1].clamp(min=1.0))


class Batches(Protocol):
    """A task's loader: iterated once per epoch, with a length (a DataLoader, a list)."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass
class Task:
    """What a workload hands the engine: its model, optimiser, lr schedule and loader, and three
    functions. `run_epochs` runs the epochs, `train_one_epoch` the batches of one."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    """The lr scheduler, stepped once per epoch (`make_lr_schedule`)."""
    loader: Batches
    sampler: Any
    """The loader's `EpochSampler` (anything with `set_epoch`)."""
    prepare: Callable[[Any], tuple[torch.Tensor, ...]]
    """A loader batch → the step's tensors on the device, the images [B, ...] first (B counts the
    samples: a host-side shape, no sync). Runs two batches ahead (`prefetch`)."""
    train_step: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
    """The prepared tensors → the loss, still on the device, after one optimiser step."""
    evaluate: Callable[[], dict[str, Any]]
    """→ metrics incl. `LoopSpec.select_key` (on rank 0; other ranks may return {})."""


def train_one_epoch(ctx: StageContext, task: Task, epoch: int) -> dict[str, Any]:
    """One pass over this rank's shard, both tasks alike: {"loss": sample mean over all ranks, "images",
    "data_wait_share"}.

    Batches are prepared two ahead (`prefetch`: a side stream on CUDA) and the running loss stays on
    the device: the host reads it only at the REPORTS_PER_EPOCH progress reports
    (tests/workloads/test_host_syncs.py). A non-finite running loss ends the epoch early; `run_epochs`
    then records the collapse."""
    task.sampler.set_epoch(epoch)
    task.model.train()  # frozen block groups keep their BN in eval mode (GroupedBackbone.train)
    total = torch.zeros((), dtype=torch.float64, device=ctx.device)
    seen, steps, wait = 0, len(task.loader), 0.0
    report_every = max(1, steps // REPORTS_PER_EPOCH)
    batches = prefetch(task.loader, task.prepare, ctx.device)
    t0 = t_wait = time.perf_counter()
    for i, tensors in enumerate(batches):
        wait += time.perf_counter() - t_wait
        count = int(tensors[0].shape[0])
        loss = task.train_step(tensors)
        total += loss.double() * count
        seen += count
        if (i + 1) % report_every == 0 or i + 1 == steps:
            running = global_mean(total, seen, ctx.world_size)
            ctx.report(
                {
                    "epoch": epoch,
                    "step": i + 1,
                    "steps": steps,
                    "loss": running,
                    "img_per_s": seen * ctx.world_size / max(time.perf_counter() - t0, 1e-9),
                }
            )
            if not math.isfinite(running):
                log.warning("epoch %d step %d: loss %s, ending the epoch early", epoch, i + 1, running)
                return {"loss": running, "images": seen}
        t_wait = time.perf_counter()
    elapsed = time.perf_counter() - t0
    return {
        "loss": global_mean(total, seen, ctx.world_size),
        "images": seen,
        "data_wait_share": wait / max(elapsed, 1e-9),
    }


def run_epochs(ctx: StageContext, task: Task, spec: LoopSpec) -> LoopOutcome:
    """Train epochs [start, spec.epochs) of `task` where start follows the latest checkpoint of this
    stage: each epoch `train_one_epoch`, the lr step, every `spec.eval_every` epochs (and after the
    last) `task.evaluate` and the best-model choice, the collapse checks, then the epoch checkpoint."""
    model, optimizer, lr_schedule = task.model, task.optimizer, task.lr_schedule
    out, start = _resume(ctx, task)
    if out.collapsed:
        return out
    for epoch in range(start, spec.epochs):
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        stats = train_one_epoch(ctx, task, epoch)
        seconds = time.perf_counter() - t0
        lr_schedule.step()
        loss = float(stats["loss"])
        collapsed = not math.isfinite(loss) or loss > spec.collapse_loss
        metrics = {
            "epoch": epoch,
            "epochs": spec.epochs,
            "loss": loss,
            "lr": lr,
            "seconds": seconds,
            "img_per_s": stats.get("images", 0) * ctx.world_size / max(seconds, 1e-9),
        }
        metrics.update({k: v for k, v in stats.items() if k not in metrics})
        evaluated = not collapsed and ((epoch + 1) % spec.eval_every == 0 or epoch == spec.epochs - 1)
        if evaluated:
            sync_buffers(model, ctx.world_size)
            ev = task.evaluate()
            metrics.update({k: v for k, v in ev.items() if not k.startswith("_")})  # `_`: not a metric
            value = ev.get(spec.select_key)
            if value is not None and (out.best_value is None or value > out.best_value):
                out.best_value, out.best_epoch, out.best_eval = float(value), epoch, dict(ev)
                out.best_model = cpu_state_dict(model)
        out.history.append(
            {k: metrics[k] for k in ("epoch", "loss", "lr") if k in metrics}
            | ({spec.select_key: metrics[spec.select_key]} if spec.select_key in metrics else {})
            | {k: metrics[k] for k in spec.history_keys if k in metrics}
        )
        out.trained.append(epoch)
        reason = None
        if collapsed:
            reason = f"collapsed: loss {loss:.4g} at epoch {epoch + 1} (bound {spec.collapse_loss:.3g})"
        elif evaluated and spec.collapse_check is not None:
            reason = spec.collapse_check(out.history, epoch == spec.epochs - 1)
            collapsed = reason is not None
        if collapsed:
            out.collapsed, out.collapsed_epoch, out.collapse_reason = True, epoch, reason
            metrics["collapsed"] = True
            log.warning("epoch %d: %s", epoch, reason)
        ctx.save_epoch(_checkpoint(model, optimizer, lr_schedule, epoch, out, spec, collapsed), metrics)
        if collapsed:
            break
    return out


def _resume(ctx: StageContext, task: Task) -> tuple[LoopOutcome, int]:
    """(the loop's outcome so far, the first epoch to train) from this stage's latest epoch checkpoint
    (model, optimiser, lr schedule, RNG, best model, history, loaded into `task`); a fresh outcome and
    epoch 0 when there is none. A collapsed checkpoint comes back collapsed."""
    out = LoopOutcome(best_value=None, best_epoch=None, best_model=None, best_eval={})
    state = ctx.resume_state()
    if state is None:
        return out, 0
    unwrap(task.model).load_state_dict(state["model"])
    task.optimizer.load_state_dict(state["optimizer"])
    task.lr_schedule.load_state_dict(state["scheduler"])  # the checkpoint key of the lr schedule
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    best = state.get("best") or {}
    out.best_value, out.best_epoch = best.get("value"), best.get("epoch")
    out.best_model, out.best_eval = best.get("model"), best.get("eval") or {}
    out.history = list(state.get("history") or [])
    start = int(state["epoch"]) + 1
    if state.get("collapsed"):
        out.collapsed, out.collapsed_epoch = True, int(state["epoch"])
        out.collapse_reason = state.get("collapse_reason")
        return out, start
    log.info("resuming at epoch %d", start)
    return out, start


def _checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: Any,
    epoch: int,
    out: LoopOutcome,
    spec: LoopSpec,
    collapsed: bool,
) -> dict[str, Any]:
    return {
        "model": cpu_state_dict(model),
        "optimizer": host_copy(optimizer.state_dict()),
        "scheduler": lr_schedule.state_dict(),  # key kept: checkpoints written before read it back
        "epoch": epoch,
        "rng": torch.get_rng_state(),
        "best": {
            "value": out.best_value,
            "epoch": out.best_epoch,
            "model": out.best_model,
            "eval": out.best_eval,
        },
        "history": out.history,
        "collapsed": collapsed,
        "collapse_reason": out.collapse_reason,
        "config": spec.config,
    }


def loss_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """First / last / min epoch loss of a run (what result.json keeps of the loss curve)."""
    losses = [h["loss"] for h in history if "loss" in h]
    if not losses:
        return {}
    finite = [x for x in losses if math.isfinite(x)]
    return {
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_min": min(finite) if finite else None,
        "loss_curve": losses,
    }
