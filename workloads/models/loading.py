"""Weight loading with exact key accounting (paper §4.1: HSJP / ImageNet / scratch initialisation).

Every load returns a `LoadReport` with the exact loaded / missing / unexpected / skipped key lists,
so a silent partial load cannot invalidate a table. Keys under `skip_prefixes` are excluded on both
sides: not loaded from the checkpoint (listed as `skipped`) and not required from the model (the
head `final_layer` is replaced between the pretext and the pose task).

ImageNet checkpoints (docs/pose-reference.md §1-§2):
- HRNet-W32: `hrnet_w32-36af842e.pth` of HRNet/HRNet-Image-Classification (cls_hrnet). Its
  classification head (`incre_modules`, `downsamp_modules`, `classifier`, and a `final_layer` whose
  name collides with the pose head) and the multi-scale fuse layers of the last stage-4 module
  (`stage4.<last>.fuse_layers.{1,2,3}`, absent in pose_hrnet) are skipped, as the official
  PRETRAINED_LAYERS filter + strict=False does.
- ResNet-50: torchvision's `resnet50-0676ba61.pth` (V1) or the older `resnet50-19c8e357.pth`; its
  `fc.*` is unexpected, `deconv_layers.*` / `final_layer.*` are missing (left at the official init).

Checkpoints saved before PyTorch 0.4.1 (`resnet50-19c8e357.pth`, the SimpleBaseline zoo's
`pose_resnet_50_256x192.pth.tar`) have no BatchNorm `num_batches_tracked` counters. PyTorch's own
strict load accepts them (`_BatchNorm._load_from_state_dict` fills the counter of a state dict older
than BatchNorm version 2), so we do too: a counter is filled with 0, the value of a freshly built
model's counter, when the checkpoint has the running statistics of its BatchNorm
(`fill_batch_counters`; listed as `filled`). Every other key stays required. The counter only matters
with `momentum=None` (a cumulative average); both backbones use momentum 0.1, so 0 changes nothing.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from workloads.config import ConfigError
from workloads.engine import unwrap
from workloads.user_errors import CheckpointError, MissingFileError

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("final_layer.",)
"""The task-specific head, replaced between pretext (N² channels) and pose (17 channels)."""

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile state dicts
MIN_MATCH_FRACTION = 0.5  # fewer matching names than this share of the model → another architecture

IMAGENET_SOURCES = {
    "hrnet_w32": "hrnet_w32-36af842e.pth from https://github.com/HRNet/HRNet-Image-Classification "
    "(the README's HRNet-W32-C ImageNet model)",
    "simplebaseline_r50": "torchvision's ResNet-50 weights: https://download.pytorch.org/models/"
    "resnet50-0676ba61.pth (IMAGENET1K_V1) or the older resnet50-19c8e357.pth used by SimpleBaseline",
}
HRNET_CLS_PREFIXES = ("incre_modules.", "downsamp_modules.", "classifier.", "final_layer.")
BATCH_COUNTER = "num_batches_tracked"  # BatchNorm buffer added in PyTorch 0.4.1 (BatchNorm version 2)


@dataclass
class LoadReport:
    """What a load did, key by key (checkpoint names, `module.` prefixes removed)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Model keys outside `skip_prefixes` that the checkpoint did not provide (left at init)."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint keys outside `skip_prefixes` that the model does not have (ignored)."""
    skipped: list[str] = field(default_factory=list)
    """Checkpoint keys under `skip_prefixes` (deliberately not loaded)."""
    filled: list[str] = field(default_factory=list)
    """BatchNorm `num_batches_tracked` counters absent from a pre-0.4.1 checkpoint, set to 0 as
    PyTorch's strict load accepts (`fill_batch_counters`); not in `missing`."""

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a `.pth` file, read with `torch.load(weights_only=True)` on CPU.

    Unwraps `{"state_dict": ...}` / `{"model": ...}` nestings and `module.` / `_orig_mod.` prefixes.
    """
    return unwrap_state_dict(read_weights_file(path), str(path))


def read_weights_file(path: str | Path) -> object:
    """What a checkpoint file holds, read with `torch.load(weights_only=True)` on CPU (no code runs);
    MissingFileError / CheckpointError naming the file when it is absent, pickles Python objects, or
    is not a torch file (truncated, another format)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused it, so it is not a plain state dict "
            f"(it pickles Python objects). Re-save it as a dict of tensors. Reason: {str(exc)[:300]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated / not a torch file
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({str(exc)[:300]})") from None


def unwrap_state_dict(obj: object, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Peel `state_dict` / `model` nestings and wrapper prefixes off a loaded checkpoint object."""
    while isinstance(obj, dict) and not _all_tensors(obj):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
            raise CheckpointError(
                f"{where}: not a state dict: entries {bad} are not tensors and there is no "
                f"'state_dict' or 'model' entry holding one"
            )
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, got {type(obj).__name__}")
    state = dict(obj)
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def fill_batch_counters(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`state` with each absent BatchNorm `num_batches_tracked` counter of `model` filled with 0, and the
    filled keys (model order). A counter is filled only where the checkpoint has that BatchNorm's
    `running_mean` (a pre-0.4.1 save of the same layer, as `_BatchNorm._load_from_state_dict` accepts);
    a BatchNorm absent from the checkpoint stays missing, and so does every other key."""
    filled = []
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm) or not module.track_running_stats:
            continue
        prefix = f"{name}." if name else ""
        key = prefix + BATCH_COUNTER
        if key not in state and prefix + "running_mean" in state:
            filled.append(key)
    if not filled:
        return state, []
    zero = torch.tensor(0, dtype=torch.long)
    return {**state, **{k: zero.clone() for k in filled}}, filled


def _all_tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def load_backbone(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    skip_prefixes: tuple[str, ...] = HEAD_PREFIXES,
) -> LoadReport:
    """Copy every checkpoint tensor whose name and shape match the model, except `skip_prefixes`.

    Raises ValueError when a shared key has another shape (naming key and both shapes), or when
    fewer than half the model's keys are present (a checkpoint of another architecture).
    """
    inner = unwrap(model)
    target = inner.state_dict()
    state = unwrap_state_dict(state_dict)
    skip = tuple(skip_prefixes)
    report = LoadReport()
    report.skipped = [k for k in state if k.startswith(skip)]
    candidates, report.filled = fill_batch_counters(
        inner, {k: v for k, v in state.items() if not k.startswith(skip)}
    )
    report.unexpected = [k for k in candidates if k not in target]
    wanted = [k for k in target if not k.startswith(skip)]
    report.missing = [k for k in wanted if k not in candidates]
    matched = [k for k in candidates if k in target]
    if wanted and len(matched) < MIN_MATCH_FRACTION * len(wanted):
        first = report.unexpected[0] if report.unexpected else (report.missing or ["<none>"])[0]
        raise CheckpointError(
            f"checkpoint looks like a checkpoint of another architecture than {type(inner).__name__}: "
            f"only {len(matched)} of {len(wanted)} model keys match; first unmatched key {first!r}"
        )
    for k in matched:
        if tuple(candidates[k].shape) != tuple(target[k].shape):
            raise CheckpointError(
                f"shape mismatch for {k!r}: checkpoint {tuple(candidates[k].shape)} vs "
                f"model {tuple(target[k].shape)}"
            )
    result = inner.load_state_dict({k: candidates[k] for k in matched}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # matched ⊆ target by construction
    filled = set(report.filled)
    report.loaded = [k for k in matched if k not in filled]
    log.info(
        "loaded %d tensors into %s (missing %d, unexpected %d, skipped %d, BN counters filled %d)",
        len(report.loaded),
        type(inner).__name__,
        len(report.missing),
        len(report.unexpected),
        len(report.skipped),
        len(report.filled),
    )
    return report


def load_imagenet(model: nn.Module, path: str | Path, backbone: str) -> LoadReport:
    """Load the official ImageNet classification weights of `backbone` into the model's trunk."""
    if backbone not in IMAGENET_SOURCES:
        raise ConfigError(
            f"backbone={backbone!r} has no ImageNet loader; valid: {', '.join(IMAGENET_SOURCES)}"
        )
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"ImageNet checkpoint not found: {path}. Official weights: {IMAGENET_SOURCES[backbone]}"
        )
    state = load_state_file(path)
    if backbone == "simplebaseline_r50":
        skip: tuple[str, ...] = ()
    else:
        last = len(getattr(unwrap(model), "stage4", [None])) - 1
        skip = HRNET_CLS_PREFIXES + tuple(f"stage4.{last}.fuse_layers.{i}." for i in (1, 2, 3))
    try:
        return load_backbone(model, state, skip_prefixes=skip)
    except ValueError as exc:  # name the file: the key alone does not say which checkpoint was wrong
        raise CheckpointError(f"{path}: {exc} (expected {IMAGENET_SOURCES[backbone]})") from exc
