"""DDP as the training stages wrap it (engine.DDP_KWARGS, use_static_graph) over a real two-process gloo
group: gradients averaged, BN statistics left per rank in training and made rank 0's by sync_buffers."""

from __future__ import annotations

import torch
from torch import nn

from tests.workloads.gloo import run_on_ranks
from workloads.config import RuntimeConfig
from workloads.engine import DDP_KWARGS, sync_buffers, use_static_graph


def _worker(rank: int) -> dict:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))
    net(torch.rand(1, 3, 6, 6))  # materialise the lazy layer before DDP
    model = nn.parallel.DistributedDataParallel(net, **DDP_KWARGS)
    static = use_static_graph(model, RuntimeConfig(compile="off"), torch.device("cpu"))
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(10 + rank))  # a different shard each
    for _ in range(2):
        model.zero_grad()
        model(x).sum().backward()
    grad = net[0].weight.grad.clone()
    before = net[1].running_mean.clone()
    sync_buffers(model, 2)
    return {"static": static, "grad": grad, "before": before, "after": net[1].running_mean.clone()}


def test_ddp_flags_static_graph_and_buffer_sync():
    got = run_on_ranks(_worker)
    assert got[0]["static"] and got[1]["static"]
    assert torch.equal(got[0]["grad"], got[1]["grad"])  # averaged over ranks
    assert not torch.equal(got[0]["before"], got[1]["before"])  # broadcast_buffers=False: per-rank stats
    assert torch.equal(got[1]["after"], got[0]["before"]) and torch.equal(got[0]["after"], got[0]["before"])
    assert not use_static_graph(nn.Linear(1, 1), RuntimeConfig(compile="off"), torch.device("cpu"))  # no DDP


def _compiled_worker(rank: int) -> dict:
    """The production pattern: a compiled step function (engine.compile_step's torch.compile of
    forward + loss) calling the DDP-wrapped model; aot_eager keeps it to seconds on CPU."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model = nn.parallel.DistributedDataParallel(net, **DDP_KWARGS)
    assert not use_static_graph(model, RuntimeConfig(compile="on"), torch.device("cpu"))

    def forward_loss(m, x):
        return (m(x.float() / 255.0) ** 2).mean()

    step = torch.compile(forward_loss, backend="aot_eager")
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
    for _ in range(3):
        opt.zero_grad()
        step(model, x).backward()
        opt.step()
    return {"weight": net[0].weight.detach().clone()}


def test_a_compiled_step_over_ddp_keeps_the_ranks_in_step():
    got = run_on_ranks(_compiled_worker)
    assert torch.equal(got[0]["weight"], got[1]["weight"])  # gradients all-reduced through the compiled step
