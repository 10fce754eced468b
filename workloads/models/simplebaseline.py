"""SimpleBaseline pose network (paper §4.1: SimpleBaseline with a ResNet-50 backbone).

The trunk is torchvision's ResNet (Bottleneck, "PyTorch style" stride in the 3×3 conv) with its
module names at the top level (`conv1, bn1, layer1..layer4`), so torchvision's ImageNet ResNet-50
weights load directly. The head follows the official pose_resnet (microsoft/human-pose-estimation
.pytorch, config 256x192_d256x3): three ConvTranspose2d k4 s2 p1 without bias, each + BN + ReLU
(`deconv_layers.{0,3,6}`), then a 1×1 `final_layer` with bias and any channel count. Output is at
input/4. Facts in docs/pose-reference.md §2.
"""

from __future__ import annotations

import torch
from torch import nn

from workloads.models.freezing import GroupedBackbone
from workloads.models.hrnet import BN_MOMENTUM, check_input_hw, init_official

NUM_DECONV = 3  # SimpleBaseline config: NUM_DECONV_LAYERS 3, kernels [4, 4, 4]
DECONV_KERNEL, DECONV_PADDING, DECONV_OUTPUT_PADDING = 4, 1, 0  # pose_resnet: k4 → p1, op0


class PoseResNet(GroupedBackbone):
    """ResNet trunk + 3 deconvolutions + 1×1 head; ResNet-50 = resnet_layers (3, 4, 6, 3)."""

    GROUP_PREFIXES = {
        0: ("conv1.", "bn1."),
        1: ("layer1.",),
        2: ("layer2.",),
        3: ("layer3.",),
        4: ("layer4.",),
    }

    def __init__(
        self,
        out_channels: int,
        resnet_layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        deconv_channels: int = 256,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        # imported here: torchvision's package import costs ~2 s (torch._dynamo via torchvision.ops),
        # paid by every Ray Train worker process that imports the model registry, HRNet ones included
        from torchvision.models.resnet import Bottleneck, ResNet

        trunk = ResNet(Bottleneck, list(resnet_layers))
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            trunk.layer4,
        )
        layers: list[nn.Module] = []
        in_ch = 512 * Bottleneck.expansion  # ResNet-50: 2048 channels at stride 32
        for _ in range(NUM_DECONV):
            layers += [
                nn.ConvTranspose2d(
                    in_ch,
                    deconv_channels,
                    kernel_size=DECONV_KERNEL,
                    stride=2,
                    padding=DECONV_PADDING,
                    output_padding=DECONV_OUTPUT_PADDING,
                    bias=False,  # config: DECONV_WITH_BIAS false
                ),
                nn.BatchNorm2d(deconv_channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            in_ch = deconv_channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(deconv_channels, out_channels, kernel_size=1, bias=True)
        # official pose_resnet without a pretrained file: every conv / deconv N(0, 0.001), BN 1/0;
        # ImageNet weights, when wanted, are loaded afterwards over the trunk (load_imagenet)
        init_official(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] → heatmaps [B, out_channels, H/4, W/4]."""
        check_input_hw(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))
