"""BatchNorm folded into the convolution before it, for inference.

In eval mode a BatchNorm2d is an affine per channel, y = γ·(x − μ)/√(σ² + ε) + β, so after a convolution
(or a transposed convolution: SimpleBaseline's deconvolutions) it can be merged into that convolution's
weight and bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`): one kernel and one pass over the
activations fewer per pair, the same function up to float rounding. HRNet-W32 and SimpleBaseline-R50
have a BatchNorm after every convolution but the heads.

Which BatchNorm follows which convolution is found by running the model once on an example input with
hooks (the models' forward has shape checks, so torch.fx cannot trace them symbolically): a BatchNorm
whose input is exactly the output tensor of a convolution module is folded into it. The folded copy is
then checked against the original on the same input; a mismatch (a convolution output that something
else reads too) is an error, never a silently different model.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from workloads.models import eval_mode

log = logging.getLogger(__name__)

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution name, BatchNorm name) for every BatchNorm2d fed directly by a convolution's output,
    found from one eval-mode forward of `example`."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) → (conv name, output kept alive)
    pairs: list[tuple[str, str]] = []
    hooks = []

    def after_conv(name: str):
        def hook(_module, _inputs, output):
            produced[id(output)] = (name, output)

        return hook

    def before_bn(name: str):
        def hook(_module, inputs):
            hit = produced.get(id(inputs[0]))
            if hit is not None and hit[1] is inputs[0]:
                pairs.append((hit[0], name))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, _CONVS):
            hooks.append(module.register_forward_hook(after_conv(name)))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    seen: set[str] = set()
    unique = []
    for conv, bn in pairs:  # a module called twice (shared weights) would be folded twice: refuse
        if conv in seen or bn in {b for _, b in unique}:
            raise ValueError(f"fold_batchnorm: {conv} / {bn} run more than once per forward; cannot fold")
        seen.add(conv)
        unique.append((conv, bn))
    return unique


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> tuple[nn.Module, int]:
    """(an eval-mode copy of `model` with every conv → BatchNorm2d pair merged, number of pairs).

    `example`: an input batch of the model's shape, on its device (one forward finds the pairs, a second
    checks the result: outputs within `rtol` of the largest output value). The original is untouched."""
    pairs = conv_bn_pairs(model, example)
    folded = copy.deepcopy(model).eval()
    channels_last = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                        and not p.is_contiguous() for p in model.parameters())  # fmt: skip
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
        fused.requires_grad_(False)
        _set(folded, conv_name, fused)
        _set(folded, bn_name, nn.Identity())
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    with eval_mode(model), torch.no_grad():
        ref, out = model(example).float(), folded(example).float()
    err = float((ref - out).abs().max())
    scale = float(ref.abs().max()) + 1e-12
    if err > rtol * scale:
        raise ValueError(
            f"fold_batchnorm: the folded model differs from the original by {err:.3g} (outputs up to "
            f"{scale:.3g}); a convolution output is read by more than its BatchNorm"
        )
    log.debug("folded %d BatchNorm layers into their convolutions (max difference %.2g)", len(pairs), err)
    return folded, len(pairs)
