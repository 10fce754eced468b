"""Counting the operations that make the host wait for the device, and aten operations in general.

A training step that reads a device value on the host (`.item()`, `bool(t)`, `t.tolist()`, an index
by a boolean mask, `nonzero`), makes a tensor from Python data on the device (`torch.tensor(..., device=)`:
a blocking copy from pageable memory) or copies device → host stalls the CPU until the GPU has caught
up, so the next kernels are launched late and the GPU idles. `HostSyncCounter` is a TorchDispatchMode
that sees every aten call and counts those; it runs on CPU tensors as well (the same calls are made
whatever the device), so a CPU test can prove a step free of them. `OpCounter` counts all aten calls
(the kernel-launch budget of eager mode).

What counts as a host sync (`SYNC_OPS`):
- `_local_scalar_dense` (`.item()`, `float(t)`, `bool(t)`, `if t:`), `is_nonzero`, `equal`;
- ops whose output shape depends on values: `nonzero`, `masked_select`, boolean-mask indexing
  (`index` with a bool index → nonzero), `unique`, `repeat_interleave` with tensor repeats;
- `lift_fresh` (a tensor made from Python data / numpy inside the step: on CUDA a blocking copy);
- copies between the host and a device (`_to_copy` / `copy_`) where the host side is not pinned
  memory, or device → host (only seen when a device is present).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.is_nonzero",
        "aten.equal",
        "aten.nonzero",
        "aten.masked_select",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.lift_fresh",
        "aten.lift_fresh_copy",
    }
)
_VALUE_SHAPED = ("aten.repeat_interleave.Tensor", "aten.repeat_interleave.self_Tensor")


def _packet(func) -> str:
    return f"{func.namespace}.{func._opname}"


def _is_host_device_copy(name: str, args, kwargs, result) -> bool:
    """A copy between host memory and a device that blocks the host (pageable host side, or D2H)."""
    if name == "aten._to_copy" and args and isinstance(args[0], torch.Tensor):
        src, dst = args[0], result
    elif name == "aten.copy_" and len(args) >= 2 and isinstance(args[1], torch.Tensor):
        src, dst = args[1], args[0]
    else:
        return False
    if not isinstance(dst, torch.Tensor) or src.device.type == dst.device.type:
        return False
    if dst.device.type == "cpu":  # device → host: the host waits for the value
        return True
    non_blocking = bool(kwargs.get("non_blocking", False)) or (
        name == "aten.copy_" and len(args) > 2 and args[2]
    )
    return src.device.type == "cpu" and not (src.is_pinned() and non_blocking)


class _OpTally(TorchDispatchMode):
    """A dispatch mode that tallies aten operations by name in `by_op` (what it counts: the subclass)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def reset(self) -> None:
        self.by_op.clear()


class HostSyncCounter(_OpTally):
    """Counts host-sync operations (module docstring) in the code run under it: `total`, `by_op`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name, packet = str(func.overloadpacket), _packet(func)
        full = f"{packet}.{func._overloadname}"
        if packet in SYNC_OPS or full in _VALUE_SHAPED:
            self.by_op[packet] += 1
        elif packet == "aten.index" and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else [])
        ):
            self.by_op["aten.index(bool mask)"] += 1
        elif _is_host_device_copy(packet, args, kwargs, result):
            self.by_op[f"{name} host<->device"] += 1
        return result


class OpCounter(_OpTally):
    """Counts every aten operation run under it (each is at least one kernel launch in eager mode)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_op[_packet(func)] += 1
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------------- device constants
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def constant(values, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A small tensor of Python `values` on `device`, made once per (values, dtype, device) and reused, so
    a training step does not copy it from pageable host memory (a blocking copy on CUDA) every time.
    Inside a torch.compile trace it is a plain `torch.tensor` (a graph constant), never cached there.
    The result is shared: never write to it."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    device = torch.device(device)
    key = (_frozen(values), dtype, device.type, device.index)
    cached = _CONSTANTS.get(key)
    if cached is None:
        cached = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return cached


def _frozen(values):
    if isinstance(values, (list, tuple)):
        return tuple(_frozen(v) for v in values)
    return float(values)
