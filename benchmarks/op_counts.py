"""aten operations and host syncs per training step, counted with TorchDispatchModes on CPU (the same
calls are made on CUDA; each aten op is at least one kernel launch there in eager mode).

Prints, for one batch at the given size: the pretext's batched colour augmentation and whole puzzle
render (augment_on: device), and the full training step of each task (data preparation + forward +
backward + Adam) for each backbone — aten ops (views included, which launch nothing) and host syncs
(`workloads.hostsync.SYNC_OPS`). The step is counted in its second call (device constants and the
optimiser state are made in the first). Run as `python -m benchmarks.op_counts [--batch 128]`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from workloads.config import HEATMAP_STRIDE, FinetuneConfig, ModelConfig, PretrainConfig
from workloads.hostsync import HostSyncCounter, OpCounter
from workloads.hsjp.batched import color_augment_batch, render_batch
from workloads.hsjp.dataset import draw_puzzle
from workloads.hsjp.puzzle import padded_size

BACKBONES = {
    "hrnet_w32": ModelConfig(),
    "simplebaseline_r50": ModelConfig(backbone="simplebaseline_r50"),
}


def counted(fn) -> tuple[int, int, dict]:
    """(aten ops, host syncs, syncs by op) of one call of fn."""
    with OpCounter() as ops, HostSyncCounter() as syncs:
        fn()
    return ops.total, syncs.total, dict(syncs.by_op)


def pretext_draws(cfg: PretrainConfig, batch: int) -> dict:
    rng = np.random.default_rng(0)
    side = padded_size(cfg.input_size, cfg.n)
    draws = [draw_puzzle(cfg, rng, augment=True) for _ in range(batch)]
    return {
        "crop": torch.from_numpy(rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8)),
        "color": torch.from_numpy(np.stack([d.color.to_vector() for d in draws])),
        "perm": torch.from_numpy(np.stack([d.perm for d in draws])),
        "matrix": torch.from_numpy(np.stack([d.matrix for d in draws])),
        "centers_xy": torch.from_numpy(np.stack([d.centers_xy for d in draws])),
        "mask": torch.from_numpy(np.stack([d.mask for d in draws])),
    }


def data_rows(batch: int, input_size: int) -> list[tuple[str, int, int, dict]]:
    cfg = PretrainConfig(n=6, input_size=input_size, heatmap_size=input_size // HEATMAP_STRIDE)
    b = pretext_draws(cfg, batch)
    x = b["crop"].permute(0, 3, 1, 2).float()
    rows = []
    for name, fn in (
        ("pretext colour augmentation", lambda: color_augment_batch(x, b["color"])),
        ("pretext render (colour + shuffle + warp + normalise)",
         lambda: render_batch(b["crop"], b["color"], b["perm"], b["matrix"], cfg)),
    ):  # fmt: skip
        fn()  # device constants made once
        rows.append((name, *counted(fn)))
    return rows


def step_rows(batch: int, input_size: int, backbones: list[str]) -> list[tuple[str, int, int, dict]]:
    from types import SimpleNamespace

    from workloads.engine import make_optimizer
    from workloads.hsjp import train as hsjp_train
    from workloads.hsjp.targets import heatmap_stride
    from workloads.models import build_model
    from workloads.pose import train as pose_train

    cpu = torch.device("cpu")
    rows = []
    for backbone in backbones:
        model_cfg = BACKBONES[backbone]
        cfg = PretrainConfig(model=model_cfg, n=6, input_size=input_size, heatmap_size=input_size // HEATMAP_STRIDE,
                             augment_on="device")  # fmt: skip
        model = build_model(model_cfg, 36).train()
        hw = hsjp_train.heatmap_hw_of(cfg)
        run = SimpleNamespace(cfg=cfg, ctx=SimpleNamespace(device=cpu), model=model,
                               optimizer=make_optimizer(model, 1e-3), heatmap_hw=hw,
                               stride=heatmap_stride(cfg.input_size, cfg.heatmap_size),
                               forward_loss=hsjp_train.make_forward_loss(cfg, cpu, hw))  # fmt: skip
        b = pretext_draws(cfg, batch)
        fn = lambda run=run, b=b: hsjp_train.pretext_step(run, hsjp_train.prepare_batch(dict(b), run))  # noqa: E731
        fn()
        rows.append((f"{backbone} pretext step (render + targets + fwd/bwd + Adam)", *counted(fn)))

        fcfg = FinetuneConfig(model=model_cfg)
        h, w = fcfg.input_hw
        pose = build_model(model_cfg, 17).train()
        opt = make_optimizer(pose, 1e-3)
        g = torch.Generator().manual_seed(0)
        pb = (torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=g),
              torch.rand(batch, 17, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h]),
              (torch.rand(batch, 17, generator=g) > 0.3).float())  # fmt: skip
        fwd = pose_train.make_forward_loss(fcfg, cpu)
        fn = lambda pose=pose, pb=pb, opt=opt, fcfg=fcfg, fwd=fwd: pose_train.pose_step(  # noqa: E731
            pose, pb, opt, fcfg, cpu, fwd
        )
        fn()
        rows.append((f"{backbone} finetune step (targets + fwd/bwd + Adam)", *counted(fn)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.op_counts", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--batch", type=int, default=8, help="batch size (op counts do not depend on it; default 8)"
    )
    p.add_argument("--input", type=int, default=224, help="pretext input side (default 224)")
    p.add_argument("--no-steps", action="store_true", help="only the data work (no full-size model steps)")
    p.add_argument("--backbone", choices=[*BACKBONES, "all"], default="all")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = data_rows(args.batch, args.input)
    if not args.no_steps:
        backbones = list(BACKBONES) if args.backbone == "all" else [args.backbone]
        rows += step_rows(args.batch, args.input, backbones)
    width = max(len(r[0]) for r in rows)
    print(f"{'per step, batch ' + str(args.batch):{width}}  aten ops  host syncs")
    for name, ops, syncs, by_op in rows:
        detail = f"  {by_op}" if syncs else ""
        print(f"{name:{width}}  {ops:8d}  {syncs:10d}{detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
