"""The training step compiles as one graph (`fullgraph=True`: any graph break is an error) for both
backbones and both tasks, on CPU. The step is what `engine.compile_step` compiles in training: the input
normalisation (uint8 NHWC → float, on the device), the forward under the runtime's autocast, and the
loss; its backward goes through AOTAutograd as well (the `aot_eager` backend traces forward and backward
without generating kernels, so the test stays within seconds; inductor is what CUDA runs)."""

from __future__ import annotations

import pytest
import torch

from workloads.config import FinetuneConfig, ModelConfig, PretrainConfig, RuntimeConfig
from workloads.hsjp import train as hsjp_train
from workloads.hsjp.targets import heatmap_stride, make_heatmaps
from workloads.models import build_model
from workloads.pose import train as pose_train
from workloads.pose.targets import make_heatmaps_batched

CPU = torch.device("cpu")
BACKBONES = {
    "hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
    "simplebaseline_r50": ModelConfig(
        backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=16
    ),
}
RUNTIMES = {
    "fp32": RuntimeConfig(amp="off"),
    "bf16+channels_last": RuntimeConfig(amp="bf16", channels_last="on"),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_equals_eager(fn, model, args, bf16: bool) -> None:
    """fullgraph compile of fn(model, *args), its loss and gradients equal to eager within fp tolerance
    (bf16: within bf16 rounding — AOTAutograd may order the casts of the backward differently)."""
    eager_loss = fn(model, *args)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = compiled(model, *args)
    loss.backward()
    rtol = 2e-2 if bf16 else 1e-4
    torch.testing.assert_close(loss, eager_loss, rtol=rtol, atol=1e-6)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        scale = float(g.abs().max()) + 1e-12
        torch.testing.assert_close(p.grad, g, rtol=0.0, atol=(5e-2 if bf16 else 1e-4) * scale)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_pose_step_compiles_without_graph_breaks(backbone, runtime):
    cfg = FinetuneConfig(
        model=BACKBONES[backbone], input_hw=(64, 64), heatmap_hw=(16, 16), runtime=RUNTIMES[runtime]
    )
    model = build_model(cfg.model, 17, generator=torch.Generator().manual_seed(0))
    if cfg.runtime.channels_last == "on":
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=g)
    joints = torch.rand(2, 17, 2, generator=g, dtype=torch.float64) * 64
    targets, weights = make_heatmaps_batched(
        joints, torch.ones(2, 17), cfg.input_hw, cfg.heatmap_hw, cfg.sigma
    )
    _compiled_equals_eager(
        pose_train.make_forward_loss(cfg, CPU), model, (images, targets, weights), runtime != "fp32"
    )


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_pretext_step_compiles_without_graph_breaks(backbone, runtime):
    cfg = PretrainConfig(
        model=BACKBONES[backbone], n=2, input_size=64, heatmap_size=16, runtime=RUNTIMES[runtime]
    )
    model = build_model(cfg.model, 4, generator=torch.Generator().manual_seed(0))
    if cfg.runtime.channels_last == "on":
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=g)
    centers = torch.rand(2, 4, 2, generator=g) * 64
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    target = make_heatmaps(centers, mask, (16, 16), heatmap_stride(64, 16), cfg.sigma)
    fn = hsjp_train.make_forward_loss(cfg, CPU, (16, 16))
    _compiled_equals_eager(fn, model, (images, target, mask), runtime != "fp32")


def test_compile_is_on_by_default_on_cuda_only():
    runtime = RuntimeConfig()
    assert runtime.compiles(torch.device("cuda")) and not runtime.compiles(CPU)
    assert RuntimeConfig(compile="on").compiles(CPU) and not RuntimeConfig(compile=False).compiles(
        torch.device("cuda")
    )


def test_a_graph_break_fails_the_check():
    """The check can fail: a host read in the step (data-dependent branch) is a graph break."""

    def breaking(model, x):
        y = model(x)
        return y.sum() if float(y.mean()) > 0 else -y.sum()

    with pytest.raises(Exception, match="(?i)graph break|data-dependent|Unsupported"):
        _compiled_equals_eager(breaking, torch.nn.Linear(3, 1), (torch.rand(2, 3),), bf16=False)
