"""The numerics a stage trained and evaluated in, as recorded with its result (`provenance.numerics`).

Training precision is a setting (`runtime.amp`): `off` runs the official numerics — fp32 weights and
activations, and on CUDA the convolutions in TF32 because PyTorch's default `cudnn.allow_tf32` is
True (so current PyTorch runs the official HRNet / SimpleBaseline code this way); `bf16` (or `auto` on
CUDA) autocasts the forward pass to bf16. Evaluation is always fp32 (inference.py, precision.py), so
only the training side differs between settings. The report marks cells trained in bf16.
"""

from __future__ import annotations

from typing import Any

import torch

from workloads.config import RuntimeConfig
from workloads.engine import use_bf16


def numerics_record(runtime: RuntimeConfig, device: torch.device | str) -> dict[str, Any]:
    """{"train": "bf16" | "fp32", "eval": "fp32", "amp": setting, "tf32_conv", "tf32_matmul"}.

    `tf32_*` are the CUDA switches in effect (None on CPU, where TF32 does not exist)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "train": "bf16" if use_bf16(runtime, device) else "fp32",
        "eval": "fp32",
        "amp": runtime.amp,
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
    }
