"""HRNet pose network (paper §4.1: HRNet-W32 backbone), with the official module names.

Layout and names follow the official pose_hrnet (leoxiaobin/deep-high-resolution-net.pytorch,
config w32_256x192), so its pose checkpoint loads with strict=True and the official ImageNet
HRNet-W32 checkpoint loads into the backbone (see `loading.py`). Facts in
docs/pose-reference.md §1. Narrow variants (width, blocks, modules from
`ModelConfig`) come from the same code; `num_blocks` also sets layer1's Bottleneck count (the official
code fixes it at 4, which W32's num_blocks = 4 reproduces). The output is the heatmap of the highest-resolution
branch at input/4, through a 1×1 `final_layer` with any channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from workloads.config import HEATMAP_STRIDE, INPUT_MULTIPLE
from workloads.models.freezing import GroupedBackbone

BN_MOMENTUM = 0.1  # HRNet pose_hrnet.py: BN_MOMENTUM = 0.1
STEM_CHANNELS = 64  # HRNet: conv1/conv2 3→64→64, layer1 Bottleneck planes 64 (→ 256)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """3×3 → 3×3 residual block (stages 2-4: in == out channels, no downsample)."""

    expansion = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = bn(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 (×4) residual block of layer1, with `downsample` when channels change."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = bn(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = bn(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(conv1x1(in_ch, out_ch), bn(out_ch)) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then multi-resolution fusion (`fuse_layers.i.j`: out i ← in j)."""

    def __init__(self, channels: list[int], num_blocks: int, multi_scale_output: bool) -> None:
        super().__init__()
        self.channels = list(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(num_blocks)]) for c in channels
        )
        num_out = len(channels) if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(i, j) for j in range(len(channels))) for i in range(num_out)
        )
        self.relu = nn.ReLU(inplace=False)

    def _fuse(self, i: int, j: int) -> nn.Module | None:
        c_in, c_out = self.channels[j], self.channels[i]
        if j == i:
            return None
        if j > i:  # lower resolution → 1×1 conv, BN, nearest upsample ×2^(j-i)
            return nn.Sequential(conv1x1(c_in, c_out), bn(c_out), nn.Upsample(scale_factor=2 ** (j - i)))
        steps = []  # higher resolution → (i-j) stride-2 3×3 convs; ReLU on all but the last
        for k in range(i - j):
            if k == i - j - 1:
                steps.append(nn.Sequential(conv3x3(c_in, c_out, 2), bn(c_out)))
            else:
                steps.append(nn.Sequential(conv3x3(c_in, c_in, 2), bn(c_in), nn.ReLU(inplace=True)))
        return nn.Sequential(*steps)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for row in self.fuse_layers:  # summed in branch order j = 0, 1, ... as the official code
            terms = [x if layer is None else layer(x) for layer, x in zip(row, xs)]
            y = terms[0]
            for term in terms[1:]:
                y = y + term
            fused.append(self.relu(y))
        return fused


def make_transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
    """Branch adapters between stages; new branches come from the last (lowest-res) input branch."""
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            same = pre[i] == c
            layers.append(None if same else nn.Sequential(conv3x3(pre[i], c), bn(c), nn.ReLU(inplace=True)))
            continue
        steps = []
        for k in range(i + 1 - len(pre)):
            c_out = c if k == i - len(pre) else pre[-1]
            steps.append(nn.Sequential(conv3x3(pre[-1], c_out, 2), bn(c_out), nn.ReLU(inplace=True)))
        layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


def apply_transition(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for i, layer in enumerate(transition):
        if layer is None:
            out.append(xs[i])
        else:  # an existing branch adapts its own input; a new branch grows from the lowest-res one
            out.append(layer(xs[i] if i < len(xs) else xs[-1]))
    return out


def check_input_hw(x: torch.Tensor) -> None:
    h, w = x.shape[-2:]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise ValueError(
            f"input size {h}x{w} (HxW) is not divisible by {INPUT_MULTIPLE}; "
            f"use e.g. 256x192 or 224x224 so the heatmap is exactly input / {HEATMAP_STRIDE}"
        )


def init_official(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Official init: conv / deconv weights N(0, 0.001), their biases 0; BatchNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.001, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PoseHRNet(GroupedBackbone):
    """HRNet pose network; W32 = width 32, num_blocks 4, num_modules (1, 4, 3)."""

    GROUP_PREFIXES = {
        0: ("conv1.", "bn1.", "conv2.", "bn2."),
        1: ("layer1.",),
        2: ("transition1.", "stage2."),
        3: ("transition2.", "stage3."),
        4: ("transition3.", "stage4."),
    }

    def __init__(
        self,
        out_channels: int,
        width: int = 32,
        num_blocks: int = 4,
        num_modules: tuple[int, int, int] = (1, 4, 3),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = bn(STEM_CHANNELS)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = bn(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        layer1_out = STEM_CHANNELS * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            *[Bottleneck(STEM_CHANNELS if b == 0 else layer1_out, STEM_CHANNELS) for b in range(num_blocks)]
        )
        ch = [width * 2**i for i in range(4)]  # HRNet: branch channels C, 2C, 4C, 8C
        self.transition1 = make_transition([layer1_out], ch[:2])
        self.stage2 = self._make_hr_stage(ch[:2], num_blocks, num_modules[0], multi_scale_output=True)
        self.transition2 = make_transition(ch[:2], ch[:3])
        self.stage3 = self._make_hr_stage(ch[:3], num_blocks, num_modules[1], multi_scale_output=True)
        self.transition3 = make_transition(ch[:3], ch[:4])
        # pose_hrnet: the last stage-4 module outputs only the highest-resolution branch
        self.stage4 = self._make_hr_stage(ch, num_blocks, num_modules[2], multi_scale_output=False)
        self.final_layer = nn.Conv2d(ch[0], out_channels, kernel_size=1, bias=True)
        init_official(self, generator)

    @staticmethod
    def _make_hr_stage(channels: list[int], num_blocks: int, num_modules: int, multi_scale_output: bool):
        return nn.Sequential(
            *[
                HighResolutionModule(channels, num_blocks, multi_scale_output or m < num_modules - 1)
                for m in range(num_modules)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] → heatmaps [B, out_channels, H/4, W/4]."""
        check_input_hw(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(apply_transition(self.transition1, [x]))
        ys = self.stage3(apply_transition(self.transition2, ys))
        ys = self.stage4(apply_transition(self.transition3, ys))
        return self.final_layer(ys[0])
