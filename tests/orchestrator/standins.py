"""Tiny stand-in workloads and plans for the orchestrator's Ray tests (not collected as tests).

The workloads follow the real contract — a function of (config, data, ctx[, init]) that resumes from
`ctx.resume_state()`, saves every epoch through `ctx.save_epoch` (via the shared engine's
`run_epochs`) and returns a StageResult — with an `nn.Linear(4, 1)` instead of a pose network, so a
stage costs Ray's fixed overhead and nothing more. Each call appends one line to a calls file, so
tests can count how often a stage's workload actually ran.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from orchestrator.plan import Plan, StageSpec, TrialSpec
from orchestrator.spec.inputs import CPU_THROUGHPUT, ComputeConfig
from workloads.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig, to_dict
from workloads.context import StageResult
from workloads.engine import LoopSpec, Task, loss_summary, make_lr_schedule, make_optimizer, run_epochs

TINY_MODEL = ModelConfig(backbone="hrnet_w32", width=4, num_blocks=1, num_modules=(1, 1, 1))
SMALL_STUDY = """
data: {synthetic: {train: 2, val: 1, seed: 0}, loader_workers: 0}
defaults:
  model: {backbone: hrnet_w32, width: 8, num_blocks: 1, num_modules: [1, 1, 1]}
  pretrain: {input_size: 64, heatmap_size: 16, epochs: 2}
  finetune: {input_hw: [128, 96], heatmap_hw: [32, 24], epochs: 2}
"""
"""The smallest study file that plans (synthetic data, a narrow HRNet, 2-epoch stages); a test adds its
`matrix` / `include` / `name` lines or replaces one to make the study it needs."""


def _linear_stage(
    cfg: Any, ctx: Any, select_key: str, epochs: int, init_state: dict | None, sleep_s: float
) -> Any:
    torch.manual_seed(cfg.seed)
    model = nn.Linear(4, 1)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = ctx.prepare_model(model)
    optimizer = make_optimizer(model, cfg.lr)
    lr_schedule = make_lr_schedule(optimizer, cfg.milestones, cfg.lr_factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(32, 4, generator=gen)
    y = 0.1 * x.sum(1, keepdim=True)

    def train_step(tensors: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = tensors
        loss = (model(inputs) - targets).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(sleep_s)
        return loss.detach()

    def evaluate() -> dict:
        with torch.no_grad():
            mse = float((model(x) - y).pow(2).mean())
        return {select_key: 1.0 / (1.0 + mse)}

    spec = LoopSpec(
        epochs=epochs,
        eval_every=cfg.eval_every,
        select_key=select_key,
        collapse_loss=cfg.collapse_loss,
        config=to_dict(cfg),
    )
    task = Task(model, optimizer, lr_schedule, [(x, y)], _OneBatch(), lambda b: b, train_step, evaluate)
    return run_epochs(ctx, task, spec)


def _wait_for_gate(gate: str | None, timeout_s: float = 300.0) -> None:
    """Hold the stage before its first epoch until the file `gate` exists (a test opens it once what
    it needs to happen meanwhile has happened); a gate never opened fails the stage."""
    deadline = time.time() + timeout_s
    while gate and not os.path.exists(gate):
        if time.time() > deadline:
            raise RuntimeError(f"stand-in: the start gate {gate} was not opened within {timeout_s} s")
        time.sleep(0.1)


class _OneBatch:
    """The sampler of a one-batch loader: every epoch the same batch."""

    def set_epoch(self, epoch: int) -> None:
        pass


def _log_call(calls_file: str | None, kind: str, ctx: Any) -> None:
    if calls_file and ctx.rank == 0:
        row = {"kind": kind, "pid": os.getpid(), "time": time.time()}
        if os.environ.get("HSJP_TEST_LOG_RESOURCES"):  # the Ray this stage runs on (tests/reliability)
            import ray

            row["cluster"] = ray.cluster_resources()
            row["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        with open(calls_file, "a") as f:
            f.write(json.dumps(row) + "\n")


def standin_pretrain(
    cfg: PretrainConfig,
    data: DataConfig,
    ctx: Any,
    *,
    calls_file: str | None = None,
    sleep_s: float = 0.0,
    fail_flag: str | None = None,
    start_sleep_s: float = 0.0,
    end_sleep_s: float = 0.0,
    fail_always: bool = False,
    start_gate: str | None = None,
) -> StageResult:
    _log_call(calls_file, "pretrain", ctx)
    if fail_always:  # a deterministic bug: every attempt raises the same error
        raise RuntimeError("stand-in pretrain: always fails")
    if fail_flag and not os.path.exists(fail_flag):  # fail once: the next attempt succeeds
        open(fail_flag, "w").close()
        raise RuntimeError("stand-in pretrain: injected failure")
    time.sleep(start_sleep_s)
    _wait_for_gate(start_gate)
    out = _linear_stage(cfg, ctx, "precision", cfg.epochs, None, sleep_s)
    time.sleep(end_sleep_s)
    return StageResult(
        metrics={"precision": out.best_value, "best_epoch": out.best_epoch, **loss_summary(out.history)},
        weights=None if out.collapsed else out.best_model,
        collapsed=out.collapsed,
        collapsed_epoch=out.collapsed_epoch,
        epochs_trained=out.trained,
    )


def standin_finetune(
    cfg: FinetuneConfig,
    data: DataConfig,
    ctx: Any,
    init: PretrainConfig | None = None,
    *,
    calls_file: str | None = None,
    sleep_s: float = 0.0,
    fail_flag: str | None = None,
    start_sleep_s: float = 0.0,
    end_sleep_s: float = 0.0,
    start_gate: str | None = None,
) -> StageResult:
    _log_call(calls_file, "finetune", ctx)
    if fail_flag and not os.path.exists(fail_flag):
        open(fail_flag, "w").close()
        raise RuntimeError("stand-in finetune: injected failure")
    time.sleep(start_sleep_s)
    _wait_for_gate(start_gate)
    parent = ctx.parent_weights()
    out = _linear_stage(cfg, ctx, "AP", cfg.total_epochs, parent, sleep_s)
    time.sleep(end_sleep_s)
    method = init.method if init is not None else "scratch"
    return StageResult(
        metrics={
            "AP": out.best_value,
            "AP50": out.best_value,
            "best_epoch": out.best_epoch,
            "load_report": {"method": method, "loaded_parent": parent is not None},
        },
        weights=out.best_model,
        collapsed=out.collapsed,
        collapsed_epoch=out.collapsed_epoch,
        epochs_trained=out.trained,
    )


def standin_evaluate(cfg: Any, data: DataConfig, ctx: Any, *, calls_file: str | None = None) -> StageResult:
    """An evaluate stage's stand-in: reads its finetune's weights (`ctx.parent_weights()`) and writes
    server-named files whose content is a digest of those weights and the worker count."""
    from workloads.pose.testdev import submission_files

    _log_call(calls_file, "evaluate", ctx)
    weights = ctx.parent_weights()
    if weights is None:
        raise RuntimeError("stand-in evaluate: no finetune weights")
    digest = hashlib.sha1(b"".join(v.numpy().tobytes() for _, v in sorted(weights.items()))).hexdigest()
    results = [{"weights_sha1": digest, "world_size": ctx.world_size}]
    return StageResult(
        metrics={"results": 1}, weights=None, artifacts=submission_files(results, cfg.split, cfg.alg)
    )


def workloads(
    calls_file: str | None = None,
    sleep_s: float = 0.0,
    fail_flag: str | None = None,
    fail_kind: str = "finetune",
    start_sleep_s: float = 0.0,
    end_sleep_s: float = 0.0,
    pause_kind: str = "finetune",
    fail_always: str | None = None,
    start_gate: str | None = None,
) -> dict:
    """The stand-in registry; `fail_always`: that kind's stage raises the same error on every attempt; `fail_flag`: the `fail_kind` stage raises once (until the flag file exists);
    `start_sleep_s` / `end_sleep_s`: the `pause_kind` stage sleeps before its first epoch / after its
    last one (a wide window for a kill between stages or at a stage's end); `start_gate`: the
    `pause_kind` stage then waits for that file to exist before its first epoch."""
    flags = {fail_kind: fail_flag}
    pauses = {
        pause_kind: {"start_sleep_s": start_sleep_s, "end_sleep_s": end_sleep_s, "start_gate": start_gate}
    }
    return {
        "pretrain": functools.partial(
            standin_pretrain,
            calls_file=calls_file,
            sleep_s=sleep_s,
            fail_flag=flags.get("pretrain"),
            fail_always=fail_always == "pretrain",
            **pauses.get("pretrain", {}),
        ),
        "finetune": functools.partial(
            standin_finetune,
            calls_file=calls_file,
            sleep_s=sleep_s,
            fail_flag=flags.get("finetune"),
            **pauses.get("finetune", {}),
        ),
        "evaluate": functools.partial(standin_evaluate, calls_file=calls_file),
    }


def _on_node(workload, nodes_file: str, kind: str, cfg, data, ctx, *args, **kwargs):
    """Run a stand-in workload, first noting (rank 0) which Ray node this attempt runs on, and when."""
    if ctx.rank == 0:
        import ray

        row = {"kind": kind, "node": ray.get_runtime_context().get_node_id(), "time": time.time()}
        with open(nodes_file, "a") as f:
            f.write(json.dumps(row) + "\n")
    return workload(cfg, data, ctx, *args, **kwargs)


def node_tagged_workloads(calls_file: str, nodes_file: str, sleep_s: float) -> dict:
    """The stand-in registry whose every attempt also appends {kind, node, time} to `nodes_file` (the
    multi-node tests: on which node each stage ran)."""
    return {
        kind: functools.partial(_on_node, fn, nodes_file, kind)
        for kind, fn in workloads(calls_file, sleep_s=sleep_s).items()
    }


def read_calls(calls_file: str) -> list[dict]:
    """The rows of a JSON-lines file written by the stand-ins (a calls or nodes file); [] before any."""
    if not os.path.exists(calls_file):
        return []
    with open(calls_file) as f:
        return [json.loads(line) for line in f if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_workers_gone(calls_file: str, timeout_s: float = 120.0) -> None:
    """After a driver's SIGKILL: wait until every stage process that logged a call (rank 0, its pid)
    has exited. Orphaned Train workers outlive the driver by ~2 s (docs/ray.md §3c) and may still write
    a metrics row or a checkpoint meanwhile; this waits for exactly that instead of a fixed sleep."""
    pids = {c["pid"] for c in read_calls(calls_file)}
    deadline = time.time() + timeout_s
    while any(_pid_alive(p) for p in pids):
        if time.time() > deadline:
            raise TimeoutError(f"stage processes {sorted(pids)} still alive {timeout_s} s after the kill")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------- plans
def _stage_id(kind: str, payload: Any) -> str:
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def pretrain_config(**overrides: Any) -> PretrainConfig:
    base = PretrainConfig(
        model=TINY_MODEL,
        epochs=3,
        eval_every=1,
        lr=0.05,
        lr_steps=(200,),
        n=2,
        input_size=32,
        heatmap_size=8,
        batch_size=8,
    )
    return replace(base, **overrides)


def finetune_config(**overrides: Any) -> FinetuneConfig:
    base = FinetuneConfig(model=TINY_MODEL, epochs=2, eval_every=1, lr=0.05, batch_size=8)
    return replace(base, **overrides)


def make_plan(
    study: str,
    trials: list[tuple[str, PretrainConfig, FinetuneConfig]],
    *,
    salt: str,
    compute: ComputeConfig | None = None,
) -> Any:
    """A plan from (trial id, pretrain, finetune) triples; stage ids hash the configs + `salt` (a
    per-test value, so tests sharing a store never share stages by accident)."""
    stages: dict[str, Any] = {}
    specs = []
    for trial_id, pre, ft in trials:
        pre_id = _stage_id("pretrain", [salt, to_dict(pre)])
        ft_id = _stage_id("finetune", [salt, pre_id, to_dict(ft)])
        stages[pre_id] = StageSpec(
            stage_id=pre_id, kind="pretrain", config=pre, parent=None, work=pre.method == "hsjp"
        )
        stages[ft_id] = StageSpec(stage_id=ft_id, kind="finetune", config=ft, parent=pre_id, work=True)
        specs.append(
            TrialSpec(
                trial_id=trial_id,
                params={"pretrain.method": pre.method, "finetune.lr": ft.lr},
                pretrain=pre_id,
                finetune=ft_id,
            )
        )
    return Plan(
        study=study,
        data=DataConfig(coco_root="/nonexistent-standin"),
        compute=compute or tiny_compute(),
        stages=stages,
        trials=specs,
    )


def tiny_compute(**overrides: Any) -> ComputeConfig:
    return ComputeConfig(**{"max_failures": 0, "throughput": dict(CPU_THROUGHPUT), **overrides})


def epochs_in_metrics(store: Any, stage_id: str) -> list[int]:
    """Epochs recorded in a stage's metrics.jsonl, in order (a re-trained epoch appears twice)."""
    return [int(r["epoch"]) for r in store.read_metrics(stage_id) if "epoch" in r]
