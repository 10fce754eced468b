"""What a study runs on (docs/design.md §1): its data (a COCO 2017 folder, `${ENV}` expanded, or a
synthetic COCO-format set generated once into `<store>/data/synthetic-<hash>/`) and its compute (how
each stage is placed; how fast a device trains, for the plan's estimate), loaded strictly from the
study file, and the up-front checks / preparation done before anything is scheduled.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.store.format import StageKind
from workloads.config import (
    BACKBONES,
    ConfigError,
    DataConfig,
    check_on_init,
    from_dict,
    identity_dict,
    suggest,
)

if TYPE_CHECKING:
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

# Training images/s per device for the plan's estimate at the finetune input 256×192 (other sizes scale
# by pixel count). GPU: fp32 on one H100 (runtime.amp off, the studies' default: TF32 convolutions,
# channels_last), ASSUMED: the bf16 targets / the TF32 → mixed precision training speed-up that
# NVIDIA/DeepLearningExamples reports for ResNet-50 v1.5 in PyTorch on one A100-80GB (938 vs 2,470 img/s,
# PyTorch/Classification/ConvNets/resnet50v1.5/README.md); benchmarks/throughput.py on a GPU measures the
# real figure, for a study's compute.throughput. CPU: one fp32 worker, an order of magnitude.
BF16_GPU_TARGETS = {"hrnet_w32": 2000.0, "simplebaseline_r50": 3000.0}
TF32_TO_BF16_SPEEDUP = 2470.0 / 938.0
GPU_THROUGHPUT = {b: float(round(v / TF32_TO_BF16_SPEEDUP, -1)) for b, v in BF16_GPU_TARGETS.items()}
CPU_THROUGHPUT = {"hrnet_w32": 12.0, "simplebaseline_r50": 16.0}
_ENV = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class ComputeConfig:
    """Resources of every stage (a Ray Train run) and of the study (Ray Tune), docs/design.md §3."""

    workers_per_stage: int = 1  # Ray Train workers (DDP processes); the global batch is split between them
    use_gpu: bool = False  # train on GPUs (NCCL) instead of CPUs (gloo)
    gpus_per_worker: float = 1.0  # a fraction (0.25) packs several small stages on one GPU
    cpus_per_worker: float = 1.0  # reserved per worker (its DataLoader processes run on them)
    max_concurrent_trials: int | None = None  # trials Ray Tune runs at once; None: from the cluster
    # Retries of a failed stage (a raised error, a lost worker or node) before it is recorded as failed
    # (orchestrator.schedule.failures); the same error twice in a row fails it at once. The waits before
    # a retry: retry_backoff_s, then each retry_backoff_factor (≥ 1) times longer, at most retry_backoff_max_s.
    max_failures: int = 3
    retry_backoff_s: float = 10.0
    retry_backoff_factor: float = 2.0
    retry_backoff_max_s: float = 300.0
    keep_last_checkpoint: bool = False  # keep a finished stage's last epoch checkpoint, not only its outputs
    trial_limit: int = 10_000  # a study making more trials is refused before it is expanded (a typo guard)
    # Backbone → training images/s per device (a GPU, or a CPU worker) at 256×192, for the plan's estimate
    # only: GPU_THROUGHPUT / CPU_THROUGHPUT, overridden by the study's entries (named in throughput_given).
    throughput: dict[str, float] = field(default_factory=dict, hash=False)
    throughput_given: tuple[str, ...] = field(default=(), hash=False)

    def __post_init__(self) -> None:
        check_on_init(self, "compute")

    def validate(self, where: str = "compute") -> None:
        g, workers, trials = self.gpus_per_worker, self.workers_per_stage, self.max_concurrent_trials
        if workers < 1:
            raise ConfigError(f"{where}.workers_per_stage = {workers!r}: must be ≥ 1")
        if not (g > 0 and (g <= 1 or float(g).is_integer())):
            raise ConfigError(
                f"{where}.gpus_per_worker = {g!r}: must be a fraction in (0, 1] or a whole number"
            )
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"{where}.cpus_per_worker = {self.cpus_per_worker!r}: must be > 0")
        if trials is not None and trials < 1:
            raise ConfigError(
                f"{where}.max_concurrent_trials = {trials!r}: must be ≥ 1 or null (derived from the cluster)"
            )
        backoff = (
            f"{where}.retry_backoff_s = {self.retry_backoff_s:g}, retry_backoff_factor = "
            f"{self.retry_backoff_factor:g}, retry_backoff_max_s = {self.retry_backoff_max_s:g}"
        )
        if self.max_failures < 0:
            raise ConfigError(
                f"{where}.max_failures = {self.max_failures!r}: give a retry budget ≥ 0 (unlimited "
                f"retries repeat a deterministic error forever); a failed stage is retried at most "
                f"max_failures times, after a backoff ({backoff}), and fails at once when the same error "
                "comes twice in a row; a node lost without notice uses the budget (a planned drain "
                "does not), so give spot nodes a generous one (e.g. 10)"
            )
        if self.retry_backoff_s < 0 or self.retry_backoff_max_s < 0:
            raise ConfigError(f"{backoff}: waits must be ≥ 0 seconds")
        if self.retry_backoff_factor < 1:
            raise ConfigError(f"{where}.retry_backoff_factor = {self.retry_backoff_factor:g}: must be ≥ 1")
        if self.use_gpu and g < 1 and workers > 1:
            raise ConfigError(
                f"{where}.gpus_per_worker = {g!r} with {where}.workers_per_stage = {workers}: a fraction "
                "of a GPU per worker lets two ranks of one stage share a GPU, which NCCL refuses ('Duplicate "
                "GPU detected'); use whole GPUs (gpus_per_worker: 1) or one worker"
            )
        if self.trial_limit < 1:
            raise ConfigError(f"{where}.trial_limit = {self.trial_limit!r}: must be ≥ 1")


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic COCO-format set made by `workloads.data.synthetic.generate` (1–3 persons per image):
    `train` / `val` images, generated from `seed` (same seed → byte-identical files)."""

    train: int = 48
    val: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        check_on_init(self, "synthetic")

    def validate(self, where: str = "synthetic") -> None:
        for key in ("train", "val"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} = {getattr(self, key)!r}: must be ≥ 1 images")


@dataclass(frozen=True)
class DataSpec:
    """The study's data: a COCO root (paths expanded) or a synthetic set still to be generated (its
    `config.coco_root` is filled by `data_config`)."""

    config: DataConfig
    synthetic: SyntheticSpec | None = None

    def identity(self, kind: str) -> dict[str, Any]:
        """What of the data a stage's id hashes: `identity_dict` of the config, less what the stage never
        reads: a synthetic set's store path (its generator spec stands in), the val detection file for a
        pretrain (HSJP precision uses GT persons). Test-split detections: the evaluate stages hash them."""
        ident: dict[str, Any] = identity_dict(self.config)
        if kind == StageKind.PRETRAIN:
            ident.pop("detection_file", None)
        if self.synthetic is not None:
            ident.pop("coco_root", None)
            ident["synthetic"] = dataclasses.asdict(self.synthetic)
        return ident


# ------------------------------------------------------------------------------------------- loading
def load_data(raw: Any, path: Path) -> DataSpec:
    """`data:` of a study file → DataSpec (ConfigError naming file / key / value)."""
    where = f"{path}: data"
    if not isinstance(raw, dict):
        coco = "{coco_root: PATH, detection_file: PATH|null, max_train_instances, ...}"
        raise expected(where, raw, "a mapping, either {synthetic: {train, val, seed}} or " + coco)
    raw = dict(raw)
    synthetic_raw = raw.pop("synthetic", None)
    if synthetic_raw is not None and ("coco_root" in raw or "detection_file" in raw):
        raise ConfigError(f"{where}: give either `synthetic` or `coco_root` (+ detection_file), not both")
    if synthetic_raw is None and "coco_root" not in raw:
        raise ConfigError(
            f"{where}: missing `coco_root` (a COCO 2017 folder) or `synthetic` "
            "({train: N, val: M, seed: S})"
        )
    for key in ("coco_root", "detection_file", "test_detection_file"):
        if isinstance(raw.get(key), str):
            raw[key] = resolve_path(raw[key], f"{where}.{key}", path)
    cfg = from_dict(DataConfig, raw, where)
    if synthetic_raw is None and not cfg.coco_root:
        raise ConfigError(f"{where}.coco_root = {cfg.coco_root!r}: must be a non-empty path")
    syn = None if synthetic_raw is None else from_dict(SyntheticSpec, synthetic_raw, f"{where}.synthetic")
    return DataSpec(config=cfg, synthetic=syn)


def load_compute(raw: Any, path: Path) -> ComputeConfig:
    """`compute:` of a study file → ComputeConfig with the throughput table filled in."""
    where = f"{path}: compute"
    raw = dict(raw) if isinstance(raw, dict) else raw
    given = raw.pop("throughput", None) if isinstance(raw, dict) else None
    cfg: ComputeConfig = from_dict(ComputeConfig, raw, where)
    if given is not None and not isinstance(given, dict):
        raise expected(f"{where}.throughput", given, "a mapping backbone → images/s")
    throughput = dict(GPU_THROUGHPUT if cfg.use_gpu else CPU_THROUGHPUT)
    for backbone, value in (given or {}).items():
        key = f"{where}.throughput.{backbone}"
        if backbone not in BACKBONES:
            raise ConfigError(
                f"{key}: unknown backbone{suggest(backbone, BACKBONES)}; allowed: {', '.join(BACKBONES)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{key} = {value!r}: expected images/s, a number > 0")
        throughput[backbone] = float(value)
    return dataclasses.replace(cfg, throughput=throughput, throughput_given=tuple(sorted(given or {})))


def throughput_source(compute: ComputeConfig, backbone: str) -> str:
    """Where a throughput figure of the estimate comes from: given by the study, or assumed (default)."""
    if backbone in compute.throughput_given:
        return "given by the study (compute.throughput; measure it with benchmarks/throughput.py)"
    if not compute.use_gpu:
        return "assumed: one fp32 CPU worker of a few cores, an order of magnitude"
    return (
        "assumed: an fp32 (TF32 convolutions, runtime.amp off) target for one H100 = the bf16 target / "
        f"{TF32_TO_BF16_SPEEDUP:.2f} (ResNet-50 TF32 → AMP speed-up, NVIDIA DeepLearningExamples), not "
        "measured — benchmarks/throughput.py on a GPU measures it; put the figure in the study's "
        "compute.throughput"
    )


def resolve_path(value: str, where: str, path: Path) -> str:
    """${VAR} expanded (an unset variable is an error), ~ expanded, relative to the study file's folder.
    In a dry run (`dry_run_inputs`) an unset variable stays as written, `${COCO_ROOT}/...`."""
    value = os.path.expanduser(expand_env(value, where))
    if "://" in value or os.path.isabs(value) or _ENV.search(value):
        return value
    return os.path.normpath(str(path.parent.resolve() / value))


_DRY_RUN: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "dry_run_inputs", default=None
)


@contextlib.contextmanager
def dry_run_inputs() -> Iterator[list[tuple[str, str]]]:
    """Within it, an unset `${VAR}` is kept as written instead of raising, and noted in the yielded list
    as (VAR, where): a dry run (`plan`) needs neither the data nor the checkpoints."""
    unset: list[tuple[str, str]] = []
    token = _DRY_RUN.set(unset)
    try:
        yield unset
    finally:
        _DRY_RUN.reset(token)


def expand_env(value: str, where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            unset = _DRY_RUN.get()
            if unset is not None:
                unset.append((name, where.split(": ", 1)[-1]))
                return str(m.group(0))
            raise ConfigError(
                f"{where} = {value!r}: environment variable {name} is not set (export {name}=... first)"
            )
        return os.environ[name]

    return _ENV.sub(sub, value)


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def expected(where: str, value: Any, what: str) -> ConfigError:
    """The error for a study key whose value has the wrong shape."""
    return ConfigError(f"{where} = {short(value)}: expected {what}")


# ------------------------------------------------------------------------------ checks, preparation
def data_config(spec: DataSpec, storage_root: str) -> DataConfig:
    """The DataConfig the stages get (no I/O): COCO as given; a synthetic set at
    `<store>/data/synthetic-<hash of its spec>` (where prepare_data generates it)."""
    if spec.synthetic is None:
        return spec.config
    from workloads.data.synthetic import DETECTION_FILE

    spec_json = json.dumps(dataclasses.asdict(spec.synthetic), sort_keys=True)
    root = f"{storage_root.rstrip('/')}/data/synthetic-{hashlib.sha1(spec_json.encode()).hexdigest()[:12]}"
    return dataclasses.replace(spec.config, coco_root=root, detection_file=f"{root}/{DETECTION_FILE}")


class StudyInputs(Protocol):
    """What the input checks read of a study (a `spec.study.Study`, which this module cannot import)."""

    @property
    def path(self) -> Path: ...
    @property
    def data(self) -> DataSpec: ...
    @property
    def trials(self) -> Sequence[Any]: ...
    @property
    def unset_env(self) -> Sequence[tuple[str, str]]: ...


def check_inputs(study: StudyInputs) -> None:
    """Cheap up-front checks before anything is written: the COCO layout and the test splits
    (CocoDataError naming the missing path) and every ImageNet checkpoint file (ConfigError naming the
    study key): the first of `_missing`."""
    for error, _ in _missing(study):
        raise error


def missing_inputs(study: StudyInputs) -> list[str]:
    """What a real run of `study` needs that is not here, one line each, nothing raised (for dry runs:
    `plan` needs none of it): unset environment variables, then `_missing`. Empty when `run` would
    find everything."""
    users: dict[str, list[str]] = {}
    for name, where in study.unset_env:
        users.setdefault(name, []).append(where)
    unset = [f"${{{name}}} is not set (used by {', '.join(dict.fromkeys(w))})" for name, w in users.items()]
    return unset + [line for _, line in _missing(study)]


def _missing(study: StudyInputs) -> Iterator[tuple[Exception, str]]:
    """Each missing input as (the error `check_inputs` raises, the line `missing_inputs` gives); what
    an unset `${VAR}` of a dry run hides is not checked."""
    from workloads.data.coco import CocoDataError

    cfg = study.data.config
    if study.data.synthetic is None and not _ENV.search(cfg.coco_root):
        try:
            check_coco_layout(cfg)
        except CocoDataError as exc:
            yield CocoDataError(f"{study.path}: {exc}"), str(exc)
    if not _ENV.search(cfg.coco_root + (cfg.test_detection_file or "")):
        try:
            check_test_splits(study)
        except (ConfigError, RuntimeError) as exc:
            yield exc, str(exc)
    first: dict[str, Any] = {}  # checkpoint → the first trial naming it
    for t in study.trials:
        if t.pretrain.method == "imagenet" and t.pretrain.checkpoint:
            first.setdefault(t.pretrain.checkpoint, t)
    for ckpt, t in first.items():
        if not _ENV.search(ckpt) and "://" not in ckpt and not os.path.isfile(ckpt):
            error = ConfigError(
                f"{t.file}: {t.origin}: pretrain.checkpoint = {ckpt!r}: file not found "
                "(an ImageNet checkpoint: hrnet_w32-36af842e.pth / torchvision resnet50)"
            )
            yield error, f"ImageNet checkpoint {ckpt} not found"


def check_test_splits(study: StudyInputs) -> None:
    """Every `finetune.test_splits` entry has its image info file and image folder, and the study gives
    the detection file they need (CocoDataError / ConfigError naming the path or key)."""
    splits = {s: t for t in reversed(study.trials) for s in t.finetune.test_splits}
    if not splits:
        return
    from workloads.data.coco import CocoDataError
    from workloads.pose.testdev import image_info_path, test_image_dir

    cfg = study.data.config
    if study.data.synthetic is not None:
        raise ConfigError(
            f"{study.path}: finetune.test_splits {sorted(splits)}: a synthetic data set has no test split; "
            "give data.coco_root"
        )
    for split, t in splits.items():
        where = f"{t.file}: {t.origin}: finetune.test_splits"
        info = image_info_path(cfg.coco_root, split)
        if not info.is_file():
            raise CocoDataError(f"{where}: {split!r} needs the image info file {info}, not found")
        if not test_image_dir(cfg.coco_root, split).is_dir():
            raise CocoDataError(
                f"{where}: {split!r} needs its images in {test_image_dir(cfg.coco_root, split)}, not found"
            )
    if not cfg.test_detection_file:
        raise ConfigError(
            f"{study.path}: data.test_detection_file: not given, but finetune.test_splits names "
            f"{sorted(splits)}; a test split has no boxes of its own (HRNet's "
            "COCO_test-dev2017_detections_AP_H_609_person.json)"
        )
    if "://" not in cfg.test_detection_file and not Path(cfg.test_detection_file).is_file():
        raise CocoDataError(f"data.test_detection_file = {cfg.test_detection_file!r}: file not found")


def check_coco_layout(cfg: DataConfig) -> None:
    """The COCO 2017 folder layout (annotation files, image folders, detection file) without loading it."""
    from workloads.data.coco import EXPECTED_LAYOUT, CocoDataError, annotation_path, image_dir

    root = Path(cfg.coco_root)
    if "://" in cfg.coco_root:
        raise CocoDataError(
            f"data.coco_root = {cfg.coco_root!r}: must be a folder every node can read, not a URI"
        )
    if not root.is_dir():
        splits = f"{{{cfg.train_split},{cfg.val_split}}}"
        raise CocoDataError(
            f"data.coco_root = {str(root)!r}: folder not found; expected {EXPECTED_LAYOUT.format(split=splits)}"
        )
    for split in (cfg.train_split, cfg.val_split):
        for p in (annotation_path(root, split), image_dir(root, split)):
            if not p.exists():
                raise CocoDataError(
                    f"{p} not found under data.coco_root {str(root)!r}; expected "
                    f"{EXPECTED_LAYOUT.format(split=split)}"
                )
    if cfg.detection_file is not None and not Path(cfg.detection_file).is_file():
        raise CocoDataError(
            f"data.detection_file = {cfg.detection_file!r}: file not found (HRNet's "
            "COCO_val2017_detections_AP_H_56_person.json; null = evaluate on GT boxes)"
        )


def prepare_data(study: StudyInputs, store: Store) -> DataConfig:
    """The stages' DataConfig. COCO: the layout checked. Synthetic: generated once into the store
    (skipped when its files exist; a file lock and an atomic rename keep concurrent runs safe)."""
    spec = study.data
    if spec.synthetic is None:
        check_coco_layout(spec.config)
        return spec.config
    if not store.is_local:
        raise ConfigError(
            f"{study.path}: data.synthetic: generating into the store needs a local or shared "
            f"filesystem path, not {store.uri}; run `hsjp-study make-data --out DIR` and give "
            "data.coco_root: DIR instead"
        )
    cfg = data_config(spec, store.base)
    if _synthetic_complete(cfg):
        return cfg
    import filelock

    from workloads.data.synthetic import generate

    root = Path(cfg.coco_root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{root}.lock"):
        if _synthetic_complete(cfg):
            return cfg
        tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            summary = generate(
                tmp, n_train=spec.synthetic.train, n_val=spec.synthetic.val, seed=spec.synthetic.seed
            )
            if root.exists():  # an incomplete earlier attempt
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("synthetic data set generated at %s: %s", root, summary["splits"])
    return cfg


def _synthetic_complete(cfg: DataConfig) -> bool:
    from workloads.data.coco import annotation_path

    paths = [annotation_path(cfg.coco_root, s) for s in (cfg.train_split, cfg.val_split)]
    return all(p.is_file() for p in paths) and Path(cfg.detection_file or "").is_file()
