"""Named backbone block groups and layer freezing (paper §4.3, Fig. 5: "freezing layers 0..k").

The paper freezes "layers 0-k" of the pretrained backbone during finetuning without defining the
layers. Both backbones are split into five block groups, 0..4, from their official module names:

| group | HRNet-W32 (official pose_hrnet names)  | SimpleBaseline-R50 (torchvision names) |
|-------|----------------------------------------|----------------------------------------|
| 0     | stem: conv1, bn1, conv2, bn2           | conv1, bn1                             |
| 1     | layer1                                 | layer1                                 |
| 2     | transition1 + stage2                   | layer2                                 |
| 3     | transition2 + stage3                   | layer3                                 |
| 4     | transition3 + stage4                   | layer4                                 |

`final_layer` (both) and SimpleBaseline's `deconv_layers` belong to no block group: they are never frozen,
so freezing 0..4 trains only the head (HRNet) or deconvolutions + head (SimpleBaseline).

Here each HRNet transition sits with the block group of the HRNet stage it feeds. mmpose's `frozen_stages` groups the other
way: i = 1 freezes layer1 + transition1, 2 stage2 + transition2, 3 stage3 + transition3, 4 stage4.
The two groupings differ only in where transition1..3 go; "0..4" freezes the same parameters under
both (see docs/pose-reference.md §1).

Frozen block groups get `requires_grad = False` and their BatchNorm layers stay in eval mode (running
statistics frozen, as mmpose does) even after `model.train()`: `GroupedBackbone.train` re-applies it.
"""

from __future__ import annotations

import logging

from torch import nn

from workloads.engine import unwrap

log = logging.getLogger(__name__)

NUM_BLOCK_GROUPS = 5
"""Block groups 0..4 (paper Fig. 5: layers 0-k with k ≤ 4)."""


class GroupedBackbone(nn.Module):
    """Base class of both pose backbones: named block groups and freezing that survives `.train()`.

    Subclasses set `GROUP_PREFIXES`: block-group index → state-dict name prefixes (with the trailing dot).
    """

    GROUP_PREFIXES: dict[int, tuple[str, ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.frozen_upto: int | None = None
        """Highest frozen block group (groups 0..frozen_upto are frozen); None = nothing frozen."""

    def group_of(self, name: str) -> int | None:
        """Block-group index of a parameter / buffer / module name, None for the head and deconvolutions."""
        for group, prefixes in self.GROUP_PREFIXES.items():
            if any(name.startswith(p) or name == p[:-1] for p in prefixes):
                return group
        return None

    def train(self, mode: bool = True) -> GroupedBackbone:
        super().train(mode)
        if mode and self.frozen_upto is not None:
            for name, module in self.named_modules():
                group = self.group_of(name)
                if group is not None and group <= self.frozen_upto and _is_batchnorm(module):
                    module.eval()
        return self


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _grouped(model: nn.Module) -> GroupedBackbone:
    inner = unwrap(model)
    if not isinstance(inner, GroupedBackbone):
        raise TypeError(
            f"expected a model built by workloads.models.build_model (a GroupedBackbone), got {type(inner).__name__}"
        )
    return inner


def block_group_of(model: nn.Module, name: str) -> int | None:
    """Block group (0..4) of the parameter `name` of `model` (plain name, no `module.` prefix); None = head."""
    return _grouped(model).group_of(name)


def block_group_names(model: nn.Module) -> dict[int, list[str]]:
    """Parameter names of each block group 0..4, in `named_parameters` order."""
    inner = _grouped(model)
    names: dict[int, list[str]] = {s: [] for s in range(NUM_BLOCK_GROUPS)}
    for name, _ in inner.named_parameters():
        group = inner.group_of(name)
        if group is not None:
            names[group].append(name)
    return names


def freeze_block_groups(model: nn.Module, k: int) -> list[str]:
    """Freeze block groups 0..k (paper Fig. 5): requires_grad False, BatchNorm kept in eval mode.

    The BatchNorm part is re-applied by every later `model.train()`. Returns the frozen parameter names.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < NUM_BLOCK_GROUPS:
        raise ValueError(
            f"freeze_block_groups: k={k!r} is outside the block-group range 0..{NUM_BLOCK_GROUPS - 1}"
        )
    inner = _grouped(model)
    frozen: list[str] = []
    for name, param in inner.named_parameters():
        group = inner.group_of(name)
        if group is not None and group <= k:
            param.requires_grad_(False)
            frozen.append(name)
    inner.frozen_upto = k if inner.frozen_upto is None else max(k, inner.frozen_upto)
    inner.train(inner.training)
    log.info("froze block groups 0..%d: %d parameter tensors", k, len(frozen))
    return frozen
