"""The typed config tree shared by both workloads and the orchestrator.

Frozen dataclasses with a docstring per field (unit, paper symbol, section). Defaults are the
paper's / the official code's values and live here only. `from_dict` builds a config from plain
data strictly: an unknown key (with the nearest valid one suggested), a wrong type or an
out-of-range value raises `ConfigError` naming the dotted key, the value and what is allowed.
`to_dict` gives the plain data used for hashing and for `config.json`.

Every config checks itself when it is made (`__post_init__` → `validate`), so no caller validates by
hand and no invalid config exists: `from_dict` passes the dotted prefix it builds under (the file and
key) to that check through `_WHERE`; a config made in code reports its section's name.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from workloads.user_errors import UserError

BACKBONES = ("hrnet_w32", "simplebaseline_r50")
INPUT_MULTIPLE = (
    32  # HRNet's four branch resolutions (stride 4..32) must tile exactly; ResNet downsamples 32×
)
HEATMAP_STRIDE = (
    4  # both backbones output heatmaps at input / 4 (224 → 56, paper §3.3; 256×192 → 64×48, §4.2)
)
PRETRAIN_METHODS = ("hsjp", "scratch", "imagenet")

EXECUTION = {"identity": "execution"}
"""Field metadata of an execution switch: it chooses where or how fast a stage runs (compiling, memory
format, where images are decoded and augmented, loader processes), not what it computes, so it is left
out of the stage id (`identity_dict`) and recorded in the stage's provenance instead (`execution_dict`).
A switch whose effect on the numbers is beyond floating-point or 8-bit rounding (bf16 autocast,
`runtime.amp`) is not one."""
CHILD_STAGES = {"identity": "children"}
"""Field metadata of a field that defines a stage's child evaluation stages (test splits and their
detections): part of those stages' ids, not of the stage's own."""


class ConfigError(UserError, ValueError):
    """A config value is wrong. The message names where (file / dotted key), the value and what is allowed."""


_WHERE: contextvars.ContextVar[str] = contextvars.ContextVar("config_where", default="")
"""The dotted key prefix `from_dict` is building a config under (`study.yaml: trial: pretrain`), read by
`check_on_init`; empty outside `from_dict`."""


_TYPES_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("config_types_only", default=False)


def check_on_init(cfg: Any, section: str) -> None:
    """`cfg.validate(where)` from a config's `__post_init__`: `where` is the prefix `from_dict` builds
    under, else the config's `section` name (a config made in code). Not within `types_only()`."""
    if not _TYPES_ONLY.get():
        cfg.validate(_WHERE.get() or section)


@contextlib.contextmanager
def types_only() -> Iterator[None]:
    """Configs made within are type-checked (`from_dict`) but not value-checked: for a part of a section
    (a study's defaults block or one override), whose cross-field rules hold only for the whole trial,
    which is checked when it is built."""
    token = _TYPES_ONLY.set(True)
    try:
        yield
    finally:
        _TYPES_ONLY.reset(token)


# --------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "hrnet_w32"
    """Backbone name, one of BACKBONES: `hrnet_w32` (HRNet paper / official pose_hrnet) or
    `simplebaseline_r50` (SimpleBaseline: torchvision ResNet-50 + 3 deconvolutions)."""
    width: int = 32
    """HRNet: channels of the highest-resolution branch (32 = W32; branches use width·(1,2,4,8)).
    Smaller values build narrow variants for CPU tests and the smoke study. Ignored by SimpleBaseline."""
    num_blocks: int = 4
    """HRNet: BasicBlocks per branch in stages 2-4 and Bottlenecks in layer1 (official W32: 4)."""
    num_modules: tuple[int, int, int] = (1, 4, 3)
    """HRNet: HighResolutionModules in stages 2, 3, 4 (official W32: 1, 4, 3)."""
    resnet_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    """SimpleBaseline: Bottleneck blocks in layer1..layer4 (ResNet-50: 3, 4, 6, 3)."""
    deconv_channels: int = 256
    """SimpleBaseline: channels of each of the three 4×4 stride-2 deconvolutions (official: 256)."""

    def __post_init__(self) -> None:
        check_on_init(self, "model")

    def validate(self, where: str = "model") -> None:
        _choice(self.backbone, BACKBONES, f"{where}.backbone")
        _at_least(self.width, 1, f"{where}.width")
        _at_least(self.num_blocks, 1, f"{where}.num_blocks")
        _at_least(self.deconv_channels, 1, f"{where}.deconv_channels")
        for i, m in enumerate(self.num_modules):
            _at_least(m, 1, f"{where}.num_modules[{i}]")
        for i, m in enumerate(self.resnet_layers):
            _at_least(m, 1, f"{where}.resnet_layers[{i}]")


# ---------------------------------------------------------------------------------------------- data
DECODE_ON = ("auto", "loader", "device")


@dataclass(frozen=True)
class DataConfig:
    coco_root: str = ""
    """Folder laid out as the COCO 2017 release: annotations/person_keypoints_{train,val}2017.json,
    train2017/, val2017/. The orchestrator fills it with a generated synthetic set when the study
    asks for `synthetic`."""
    detection_file: str | None = None
    """Person detection results for val (HRNet's COCO_val2017_detections_AP_H_56_person.json format).
    None → evaluate with ground-truth boxes."""
    train_split: str = "train2017"
    """Split used for training (pretext: all persons; finetune: persons with keypoints)."""
    val_split: str = "val2017"
    """Split used for HSJP precision P (paper §3.5) and pose evaluation (paper §4.1)."""
    max_train_instances: int | None = None
    """Cap on training instances (first K after a seeded shuffle); None = all. For small runs only."""
    max_val_instances: int | None = None
    """Cap on validation instances / images (first K by id); None = all (the paper's setting)."""
    loader_workers: int = field(default=2, metadata=EXECUTION)
    """DataLoader worker processes per training worker (0 = load in the training process)."""
    test_detection_file: str | None = field(default=None, metadata=CHILD_STAGES)
    """Person detections of the finetunes' `test_splits` (HRNet's
    COCO_test-dev2017_detections_AP_H_609_person.json format); required when a test split is named.
    Read by the evaluate stages only: part of their id, not of a finetune's."""
    decode_on: str = field(default="auto", metadata=EXECUTION)
    """Where training JPEGs are decoded and cropped: `loader` (OpenCV in the DataLoader workers, as the
    official HRNet code), `device` (torchvision.io.decode_jpeg on the training device — nvJPEG on CUDA —
    and one batched bilinear crop: data/device_decode.py; JPEG only; for the pretext it implies
    `augment_on: device`), or `auto`: loader on CPU; on CUDA the loader until the device decoder's
    stream-safety test has passed on a device (device_decode.DEVICE_DECODE_VERIFIED), then device.
    Evaluation always decodes with OpenCV."""

    def __post_init__(self) -> None:
        check_on_init(self, "data")

    def validate(self, where: str = "data") -> None:
        if self.max_train_instances is not None:
            _at_least(self.max_train_instances, 1, f"{where}.max_train_instances")
        if self.max_val_instances is not None:
            _at_least(self.max_val_instances, 1, f"{where}.max_val_instances")
        _at_least(self.loader_workers, 0, f"{where}.loader_workers")
        _choice(self.decode_on, DECODE_ON, f"{where}.decode_on")


# ------------------------------------------------------------------------------------------- runtime
AMP_MODES = ("off", "bf16", "auto")


@dataclass(frozen=True)
class RuntimeConfig:
    amp: str = "off"
    """Training precision, recorded with every result (`provenance.numerics`): `off` = the official
    numerics (fp32 weights and activations; on CUDA convolutions in TF32, PyTorch's default
    `cudnn.allow_tf32`, as current PyTorch runs the official HRNet / SimpleBaseline code), `bf16` = bf16
    autocast of the forward pass (opt-in: faster, but a cell trained so is marked in the report), `auto`
    = bf16 on CUDA, off on CPU. Evaluation (forward, flip test, decoding, HSJP precision) always runs in
    fp32 whatever this says (docs/paper-silent-choices.md, "Numerics")."""
    channels_last: str = field(default="auto", metadata=EXECUTION)
    """Memory format: `on`, `off`, or `auto` (on for CUDA)."""
    compile: str | bool = field(default="auto", metadata=EXECUTION)
    """torch.compile of the training step (forward + loss, and with it the backward): `on`, `off`, or
    `auto` (on for CUDA, off on CPU, where compiling costs more than it saves on tiny runs); true / false
    are read as on / off. Costs ~1–2 min of start-up per stage process, then fewer kernel launches."""
    compile_mode: str = field(default="default", metadata=EXECUTION)
    """torch.compile mode: `default`, `max-autotune-no-cudagraphs`, or with CUDA graphs (static shapes:
    the training loaders drop the last partial batch) `reduce-overhead` / `max-autotune`."""

    def __post_init__(self) -> None:
        check_on_init(self, "runtime")

    def validate(self, where: str = "runtime") -> None:
        _choice(self.amp, AMP_MODES, f"{where}.amp")
        _choice(self.channels_last, ("auto", "on", "off"), f"{where}.channels_last")
        if not isinstance(self.compile, bool):
            _choice(self.compile, ("auto", "on", "off"), f"{where}.compile")
        _choice(self.compile_mode, COMPILE_MODES, f"{where}.compile_mode")

    def compiles(self, device: Any) -> bool:
        """Whether the training step is compiled on `device` (a torch.device; see `compile`)."""
        if isinstance(self.compile, bool):
            return self.compile
        return self.compile == "on" or (self.compile == "auto" and getattr(device, "type", device) == "cuda")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ------------------------------------------------------------------------------------------- pretext
AUGMENT_ON = ("auto", "loader", "device")


@dataclass(frozen=True)
class HSJPAugConfig:
    """Augmentations of the shuffled composite (paper §3.2). Probabilities are per sample."""

    scale: float = 0.35
    """Spatial scale range ±scale (paper §3.2: ±35 %)."""
    translate: float = 0.10
    """Spatial translation range ±translate of the input size (paper §3.2: ±10 %)."""
    rotate_deg: float = 45.0
    """Rotation range ±rotate_deg degrees (paper §3.2: ±45°)."""
    spatial_prob: float = 1.0
    """Probability of applying the spatial affine (the paper applies it to every training sample)."""
    color_jitter_prob: float = 0.8
    """Probability of the colour adjustment (brightness, contrast, saturation, hue) — BYOL/SimCLR value."""
    brightness: float = 0.4
    """Brightness jitter strength (BYOL [17]: 0.4)."""
    contrast: float = 0.4
    """Contrast jitter strength (BYOL [17]: 0.4)."""
    saturation: float = 0.2
    """Saturation jitter strength (BYOL [17]: 0.2)."""
    hue: float = 0.1
    """Hue jitter strength (BYOL [17]: 0.1)."""
    distortion_prob: float = 0.2
    """Probability of 'colour distortion' (a random channel permutation; SimCLR [6] style)."""
    grayscale_prob: float = 0.2
    """Probability of random grayscale (SimCLR [6] / BYOL [17]: 0.2)."""
    blur_prob: float = 0.5
    """Probability of Gaussian blur (BYOL [17] uses 1.0 / 0.1 for its two views; 0.5 here)."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Gaussian blur σ range in input px (SimCLR [6]: 0.1–2.0)."""
    solarize_prob: float = 0.2
    """Probability of solarisation (BYOL [17]: 0.2 on its second view)."""

    def __post_init__(self) -> None:
        check_on_init(self, "aug")

    def validate(self, where: str = "aug") -> None:
        for name in (
            "spatial_prob",
            "color_jitter_prob",
            "distortion_prob",
            "grayscale_prob",
            "blur_prob",
            "solarize_prob",
        ):
            _in_range(getattr(self, name), 0.0, 1.0, f"{where}.{name}")
        _in_range(self.scale, 0.0, 0.95, f"{where}.scale")
        _in_range(self.translate, 0.0, 0.5, f"{where}.translate")
        _in_range(self.rotate_deg, 0.0, 180.0, f"{where}.rotate_deg")
        _in_range(self.hue, 0.0, 0.5, f"{where}.hue")


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "hsjp"
    """`hsjp` (the paper's pretext), `scratch` (no pretraining: a stage with no work), or `imagenet`
    (the user's ImageNet checkpoint file, `checkpoint`: a stage with no work)."""
    checkpoint: str | None = None
    """`imagenet` only: path of the ImageNet checkpoint (official hrnet_w32-36af842e.pth or torchvision
    resnet50-19c8e357.pth / resnet50-0676ba61.pth)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone being pretrained (the head has N² channels)."""
    n: int = 6
    """N in the paper, §3.1: the crop is split into N×N patches of ceil(input/N) px (best N = 6, §5.2)."""
    input_size: int = 224
    """Side of the square person crop in px (paper §3.1: 224, as ImageNet)."""
    heatmap_size: int = 56
    """Side of the N² target heatmaps (paper §3.3: 56 = input/4)."""
    sigma_px: float | None = None
    """Gaussian σ of the targets in input px (paper eq. 1); must be < input/(6N) (paper §3.1, 3σ rule).
    None → 0.75 of that bound."""
    concat_original: bool = False
    """Paper §5.3 / Fig. 7: give the unshuffled crop beside the shuffled composite (side by side)."""
    epochs: int = 240
    """Pretext epochs (paper §3.4: 240; Table 2 also 120 and 480)."""
    lr: float = 1e-3
    """Adam learning rate (paper §3.4: 1e-3; Table 2 also 3e-4 and 2e-3)."""
    lr_steps: tuple[int, ...] = (190, 220)
    """Epochs at which lr drops by lr_factor, given for 240 epochs (paper §3.4: "dropped ... at the 190th
    and 220th epoch") and scaled proportionally when `epochs` differs (`scale_milestones`: 120 → 95, 110;
    480 → 380, 440). A step m applies from the m-th epoch, 0-based m − 1 (engine.make_lr_schedule)."""
    lr_factor: float = 0.1
    """LR drop factor (paper §3.4: 1e-3 → 1e-4 → 1e-5)."""
    batch_size: int = 64
    """Batch size PER WORKER (GPU): also the batch each BatchNorm normalises over. Paper §3.4: 256 on 4
    GPUs = 64 per GPU; the global batch is batch_size × compute.workers_per_stage."""
    eps_px: float | None = None
    """ε of paper eq. (3) in input px: a patch is located when its predicted peak is within ε of its
    true centre. None → half a patch side, ceil(input/N)/2."""
    eval_every: int = 10
    """Evaluate HSJP precision P every k epochs (and always after the last epoch)."""
    collapse_loss: float = 1.0
    """A mean epoch loss above this (or NaN/Inf) ends the stage as collapsed (divergence).
    Eq. (2) of heatmaps in [0, 1] stays well below 1 unless training diverged."""
    collapse_warmup_epochs: int = 40
    """Paper Table 2 (lr 2e-3: "0.0 (Collapse)", "Not Available"): a pretrain that failed to learn the
    puzzle at every evaluation at an epoch ≥ this (0-based epoch + 1 ≥ warm-up) is `collapsed`, as a
    diverged one is (hsjp/collapse.py: patch accuracy at chance with flat heatmaps or a loss not
    falling; P = 0 alone is not a failure, a healthy N = 8 sits there). Evaluations before it do not
    count; a run shorter than the warm-up is never judged (the warm-up length is a choice the paper
    leaves open: 1/6 of the 240-epoch schedule)."""
    collapse_patience: int | None = 3
    """End a collapsed pretrain early: after this many evaluations past the warm-up, every one a
    failure to learn (saves GPU-hours). None = train to the last epoch and judge all evaluations after
    the warm-up."""
    collapse_chance_factor: float = 2.0
    """An evaluation is at chance when its patch accuracy ≤ this × 1/N² (1/N²: a network ignoring the
    image names one cell for every channel and locates one patch of N²). Not in the paper: 2× leaves
    room for the noise of a few thousand validation puzzles while a learning run is far above it."""
    collapse_flat_contrast: float = 0.1
    """Predicted heatmaps are flat when their mean (max − mean) over channels and puzzles is below this
    share of the target peak (1, paper eq. 1). Not in the paper: a network that knows nothing regresses
    the mean target map, whose bumps are 1/N² of the peak (≤ 0.0625 for N ≥ 4)."""
    collapse_loss_fraction: float = 0.75
    """The loss is not falling when an evaluation epoch's mean loss is ≥ this × the first epoch's. Not in
    the paper: the mean target map lowers eq. (2) by only ~1/N², a learning run by far more."""
    seed: int = 0
    """Seed of model init, sampling order, shuffles and augmentations."""
    aug: HSJPAugConfig = field(default_factory=HSJPAugConfig)
    """Training augmentations (paper §3.2)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Precision / memory-format switches."""
    augment_on: str = field(default="auto", metadata=EXECUTION)
    """Where the training puzzles are augmented and composed: `loader` (per sample with OpenCV in the
    DataLoader workers, as the official HRNet pipeline does), `device` (batched on the training device
    from the uint8 crops and the same random draws: hsjp/batched.py), or `auto` (device on CUDA, loader
    on CPU, where the workers run beside the training step)."""

    @property
    def patch_px(self) -> int:
        """Patch side in px: ceil(input/N) (paper §3.1)."""
        return math.ceil(self.input_size / self.n)

    @property
    def sigma_bound_px(self) -> float:
        """Paper §3.1: σ < input/(6N)."""
        return self.input_size / (6 * self.n)

    @property
    def sigma(self) -> float:
        return self.sigma_px if self.sigma_px is not None else 0.75 * self.sigma_bound_px

    @property
    def eps(self) -> float:
        return self.eps_px if self.eps_px is not None else self.patch_px / 2

    @property
    def total_epochs(self) -> int:
        """The epochs the stage trains: `epochs` (a finetune's own `total_epochs` fills a None from its recipe)."""
        return self.epochs

    @property
    def milestones(self) -> list[int]:
        return scale_milestones(self.lr_steps, 240, self.epochs)

    def __post_init__(self) -> None:
        check_on_init(self, "pretrain")

    def validate(self, where: str = "pretrain") -> None:
        _choice(self.method, PRETRAIN_METHODS, f"{where}.method")
        _choice(self.augment_on, AUGMENT_ON, f"{where}.augment_on")
        if self.method == "imagenet" and not self.checkpoint:
            raise ConfigError(
                f"{where}.checkpoint: method 'imagenet' needs the path of an ImageNet checkpoint "
                "file (official HRNet: hrnet_w32-36af842e.pth from HRNet/HRNet-Image-Classification; "
                "SimpleBaseline: torchvision's resnet50 weights)"
            )
        _at_least(self.input_size, 8, f"{where}.input_size")
        _at_least(self.n, 1, f"{where}.n")
        if self.n > self.input_size // 4:
            raise ConfigError(
                f"{where}.n = {self.n}: too large for input_size {self.input_size} "
                f"(patches would be under 4 px); allowed 1..{self.input_size // 4}"
            )
        _at_least(self.heatmap_size, 1, f"{where}.heatmap_size")
        if self.sigma_px is not None and not (0 < self.sigma_px < self.sigma_bound_px):
            raise ConfigError(
                f"{where}.sigma_px = {self.sigma_px}: must be in (0, input_size/(6N)) = "
                f"(0, {self.sigma_bound_px:.3f}) px (paper §3.1, 3σ rule)"
            )
        _at_least(self.epochs, 1, f"{where}.epochs")
        _in_range(self.lr, 1e-8, 1.0, f"{where}.lr")
        _in_range(self.lr_factor, 0.0, 1.0, f"{where}.lr_factor")
        _at_least(self.batch_size, 1, f"{where}.batch_size")
        _at_least(self.eval_every, 1, f"{where}.eval_every")
        _at_least(self.collapse_warmup_epochs, 0, f"{where}.collapse_warmup_epochs")
        if self.collapse_patience is not None:
            _at_least(self.collapse_patience, 1, f"{where}.collapse_patience")
        _in_range(self.collapse_chance_factor, 1.0, math.inf, f"{where}.collapse_chance_factor")
        _in_range(self.collapse_flat_contrast, 0.0, 1.0, f"{where}.collapse_flat_contrast")
        _in_range(self.collapse_loss_fraction, 0.0, 1.0, f"{where}.collapse_loss_fraction")
        if self.eps_px is not None and self.eps_px <= 0:
            raise ConfigError(f"{where}.eps_px = {self.eps_px}: must be > 0 px")


# ------------------------------------------------------------------------------------------ finetune
@dataclass(frozen=True)
class PoseAugConfig:
    """Top-down training augmentations (paper §4.2: each backbone's official recipe). A field left
    None takes the backbone's official value (BACKBONE_RECIPES) when the FinetuneConfig is built."""

    flip: bool = True
    """Horizontal flip with p = 0.5, COCO left/right pairs swapped."""
    scale_factor: float | None = None
    """s ← s·clip(randn·sf + 1, 1 − sf, 1 + sf). None → the backbone's: HRNet 0.35, SimpleBaseline 0.30."""
    rotate_deg: float | None = None
    """r = clip(randn·rf, −2rf, 2rf). None → the backbone's: HRNet 45, SimpleBaseline 40."""
    rotate_prob: float = 0.6
    """Probability of rotating (official code of both: 0.6)."""
    half_body_prob: float | None = None
    """Half-body probability. None → the backbone's: HRNet 0.3, SimpleBaseline 0 (none)."""
    half_body_min_joints: int = 8
    """Half-body needs more than this many visible joints (official NUM_JOINTS_HALF_BODY: 8)."""

    def __post_init__(self) -> None:
        check_on_init(self, "aug")

    def validate(self, where: str = "aug") -> None:
        if self.scale_factor is not None:
            _in_range(self.scale_factor, 0.0, 0.95, f"{where}.scale_factor")
        if self.rotate_deg is not None:
            _in_range(self.rotate_deg, 0.0, 90.0, f"{where}.rotate_deg")
        _in_range(self.rotate_prob, 0.0, 1.0, f"{where}.rotate_prob")
        if self.half_body_prob is not None:
            _in_range(self.half_body_prob, 0.0, 1.0, f"{where}.half_body_prob")


@dataclass(frozen=True)
class BackboneRecipe:
    """The official finetune recipe of one backbone (its released 256×192 config)."""

    epochs: int
    lr_steps: tuple[int, ...]
    scale_factor: float
    rotate_deg: float
    half_body_prob: float
    batch_per_gpu: int
    source: str


BACKBONE_RECIPES: dict[str, BackboneRecipe] = {
    # leoxiaobin/deep-high-resolution-net.pytorch experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml:
    # END_EPOCH 210, LR_STEP [170, 200], SCALE_FACTOR 0.35, ROT_FACTOR 45, PROB_HALF_BODY 0.3,
    # BATCH_SIZE_PER_GPU 32 on GPUS (0,1,2,3).
    "hrnet_w32": BackboneRecipe(210, (170, 200), 0.35, 45.0, 0.3, 32, "HRNet w32_256x192_adam_lr1e-3.yaml"),
    # microsoft/human-pose-estimation.pytorch experiments/coco/resnet50/256x192_d256x3_adam_lr1e-3.yaml
    # (= HRNet repo experiments/coco/resnet/res50_256x192_d256x3_adam_lr1e-3.yaml): END_EPOCH 140,
    # LR_STEP [90, 120], SCALE_FACTOR 0.3, ROT_FACTOR 40, no half-body (PROB_HALF_BODY default 0.0),
    # BATCH_SIZE 32 per GPU.
    "simplebaseline_r50": BackboneRecipe(
        140, (90, 120), 0.30, 40.0, 0.0, 32, "SimpleBaseline 256x192_d256x3_adam_lr1e-3.yaml"
    ),
}
BACKBONE_SCHEDULES: dict[str, tuple[int, tuple[int, ...]]] = {
    name: (r.epochs, r.lr_steps) for name, r in BACKBONE_RECIPES.items()
}


SELECT_BOXES = ("gt", "detections")


@dataclass(frozen=True)
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The pose network; its backbone must equal the pretrain's."""
    input_hw: tuple[int, int] = (256, 192)
    """Input (height, width) in px (paper §4.2: 256×192)."""
    heatmap_hw: tuple[int, int] = (64, 48)
    """Heatmap (height, width) (official: input/4)."""
    sigma: float = 2.0
    """Gaussian σ of keypoint targets in heatmap px (official config: 2 at 64×48)."""
    epochs: int | None = None
    """Finetune epochs; None → the backbone's official schedule (HRNet 210, SimpleBaseline 140;
    Table 3 also has a 450-epoch scratch run)."""
    lr: float = 1e-3
    """Adam learning rate (official configs: 1e-3, no weight decay)."""
    lr_steps: tuple[int, ...] | None = None
    """LR drop epochs for the official schedule length; None → backbone's (HRNet 170, 200; SB 90, 120).
    Scaled proportionally when `epochs` differs from the official length (`scale_milestones`: HRNet
    450 epochs → 364, 429). A step m applies from 0-based epoch m − 1, as the official code's
    `lr_scheduler.step()` at the start of each epoch (engine.make_lr_schedule)."""
    lr_factor: float = 0.1
    """LR drop factor (official: 0.1)."""
    batch_size: int = 32
    """Batch size PER WORKER (GPU), also each BatchNorm's batch: official BATCH_SIZE_PER_GPU 32 of both
    backbones, on 4 GPUs in HRNet's config. The global batch is batch_size × compute.workers_per_stage."""
    freeze: int | None = None
    """Paper Fig. 5: keep backbone block groups 0..freeze fixed (weights and BN statistics); None = train all.
    Groups: 0 stem, 1 layer1, 2 (transition1+)stage2 / layer2, 3 stage3 / layer3, 4 stage4 / layer4."""
    label_fraction: float = 1.0
    """Paper Fig. 6: train on a seeded random subset of this share of the training persons, 0 < f ≤ 1."""
    eval_every: int = 10
    """Evaluate AP every k epochs (and always after the last epoch) to select the output model."""
    select_boxes: str = "gt"
    """Boxes of the per-epoch (model-selection) evaluations: `gt` = the val persons' ground-truth boxes
    (the official configs' TEST.USE_GT_BBOX: true during training: 6,352 persons on val2017) or
    `detections` = `data.detection_file` (104,125 boxes). The selected weights are then evaluated once
    with the final boxes (`use_gt_boxes`), the stage's reported AP."""
    use_gt_boxes: bool = False
    """Final (reported) evaluation of the selected weights with ground-truth boxes instead of
    `data.detection_file` (without a detection file both use GT boxes)."""
    flip_test: bool = True
    """Average with the flipped image's heatmaps (official TEST.FLIP_TEST)."""
    shift_heatmap: bool = True
    """Shift the flipped heatmap 1 px right (official TEST.SHIFT_HEATMAP)."""
    image_thre: float = 0.0
    """Detection boxes kept with score ≥ this (HRNet config TEST.IMAGE_THRE: 0.0)."""
    in_vis_thre: float = 0.2
    """Joints with score above this count in rescoring (HRNet config TEST.IN_VIS_THRE: 0.2)."""
    oks_thre: float = 0.9
    """OKS-NMS threshold (HRNet config TEST.OKS_THRE: 0.9)."""
    collapse_loss: float = 1.0
    """A mean epoch loss above this (or NaN/Inf) ends the stage as collapsed."""
    seed: int = 0
    """Seed of head init, sampling order, label subset and augmentations."""
    aug: PoseAugConfig = field(default_factory=PoseAugConfig)
    """Training augmentations (official top-down pipeline; None fields → the backbone's recipe)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Precision / memory-format switches."""
    test_splits: tuple[str, ...] = field(default=(), metadata=CHILD_STAGES)
    """Extra evaluation splits without keypoint annotations (e.g. `test-dev2017`): each is an evaluate
    stage of its own (orchestrator/plan.py), a child of the finetune: the finetune's best-AP weights
    predict the split's persons (`data.test_detection_file`) and that stage's folder gets the evaluation
    server's results file + zip (pose/testdev.py). Not part of the finetune's id; never used for model
    selection."""

    def __post_init__(self) -> None:
        """Fill `epochs`, `lr_steps` and the aug fields left None with the backbone's official recipe
        (BACKBONE_RECIPES), so
        that `to_dict` (the plan, hashes, config.json) shows the values a run uses; then check the
        whole config (`validate`). `dataclasses.replace(cfg, model=...)` keeps the resolved
        values of the old backbone: build a new FinetuneConfig to change the backbone."""
        recipe = BACKBONE_RECIPES.get(self.model.backbone)
        if recipe is not None:
            self._fill_recipe(recipe)
        check_on_init(self, "finetune")

    def _fill_recipe(self, recipe: BackboneRecipe) -> None:
        if self.epochs is None:
            object.__setattr__(self, "epochs", recipe.epochs)
        if self.lr_steps is None:
            object.__setattr__(self, "lr_steps", recipe.lr_steps)
        fill = {
            k: getattr(recipe, k)
            for k in ("scale_factor", "rotate_deg", "half_body_prob")
            if getattr(self.aug, k) is None
        }
        if fill:
            object.__setattr__(self, "aug", dataclasses.replace(self.aug, **fill))

    @property
    def recipe(self) -> BackboneRecipe:
        """The backbone's official recipe (what None settings stand for)."""
        return BACKBONE_RECIPES[self.model.backbone]

    @property
    def total_epochs(self) -> int:
        return self.epochs if self.epochs is not None else BACKBONE_SCHEDULES[self.model.backbone][0]

    @property
    def milestones(self) -> list[int]:
        base_epochs, base_steps = BACKBONE_SCHEDULES[self.model.backbone]
        steps = self.lr_steps if self.lr_steps is not None else base_steps
        return scale_milestones(steps, base_epochs, self.total_epochs)

    def validate(self, where: str = "finetune") -> None:
        if self.epochs is not None:
            _at_least(self.epochs, 1, f"{where}.epochs")
        _in_range(self.lr, 1e-8, 1.0, f"{where}.lr")
        _at_least(self.batch_size, 1, f"{where}.batch_size")
        _at_least(self.eval_every, 1, f"{where}.eval_every")
        _choice(self.select_boxes, SELECT_BOXES, f"{where}.select_boxes")
        if not (0.0 < self.label_fraction <= 1.0):
            raise ConfigError(
                f"{where}.label_fraction = {self.label_fraction!r}: must be in (0, 1] "
                "(share of the training persons, paper Fig. 6: 0.1 .. 0.9)"
            )
        if self.freeze is not None and not (0 <= self.freeze <= 4):
            raise ConfigError(
                f"{where}.freeze = {self.freeze!r}: must be a backbone stage index 0..4 "
                "(0 stem, 1 layer1, 2 stage2, 3 stage3, 4 stage4) or null"
            )
        _at_least(self.sigma, 1e-3, f"{where}.sigma")
        for i, split in enumerate(self.test_splits):
            if not split or "/" in split or split in ("train2017", "val2017"):
                raise ConfigError(
                    f"{where}.test_splits[{i}] = {split!r}: must name a split without public keypoint "
                    "annotations, e.g. test-dev2017 (annotations/image_info_<split>.json)"
                )
        for v, name in ((self.input_hw, "input_hw"), (self.heatmap_hw, "heatmap_hw")):
            if len(v) != 2 or min(v) < 1:
                raise ConfigError(f"{where}.{name} = {v!r}: must be [height, width] of positive ints")


@dataclass(frozen=True)
class EvaluationConfig:
    """An evaluation-only stage (orchestrator/plan.py, kind `evaluate`): its finetune's best weights
    predict one split without public annotations (`finetune.test_splits`, e.g. test-dev2017) from a
    detection file, and the stage folder gets the evaluation server's results file + zip
    (pose/testdev.py `run_evaluation`). Nothing is trained."""

    finetune: FinetuneConfig
    """The parent finetune's config: the network and the evaluation settings (flip test, thresholds,
    input and heatmap sizes)."""
    split: str = "test-dev2017"
    """The split predicted (annotations/image_info_<split>.json)."""
    detection_file: str | None = None
    """Its person detections (`data.test_detection_file`)."""
    alg: str = ""
    """`<alg>` of the server's file name (no underscores: the server's name uses them as separators)."""

    @property
    def model(self) -> ModelConfig:
        return self.finetune.model


def scale_milestones(steps: tuple[int, ...] | list[int], base_epochs: int, epochs: int) -> list[int]:
    """LR drop epochs given for `base_epochs`, scaled to `epochs` and rounded to the nearest epoch
    (Python's round, halves to even), at least 1 (e.g. 190/220 of 240 → 95/110 of 120)."""
    return [max(1, round(s * epochs / base_epochs)) for s in steps]


def lr_drop_epochs(milestones: tuple[int, ...] | list[int]) -> list[int]:
    """The 0-based epochs from which each lr drop m applies: m − 1, the official placement (HRNet /
    SimpleBaseline tools/train.py step the lr scheduler at the start of each epoch; engine.make_lr_schedule)."""
    return [max(0, int(m) - 1) for m in milestones]


# ------------------------------------------------------------------------------------- strict loader
def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain data, rejecting unknown keys and wrong types.

    `where` is the dotted key prefix (optionally `file.yaml: key`) used in error messages.
    """
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where or cls.__name__}: expected a mapping of {cls.__name__} fields, "
            f"got {type(data).__name__} {data!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(_unknown_key_message(key, list(fields), where))
        kwargs[key] = _coerce(hints[key], value, _join(where, key))
    token = _WHERE.set(where)  # the config's __post_init__ check names this prefix
    try:
        return cls(**kwargs)
    finally:
        _WHERE.reset(token)


def to_dict(cfg: Any) -> Any:
    """Plain JSON-able data (tuples → lists) of a config tree."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def identity_dict(cfg: Any) -> Any:
    """`to_dict` of what changes a stage's numbers: every field but the execution switches (`EXECUTION`)
    and the fields that define child stages (`CHILD_STAGES`). What a stage id hashes."""
    if dataclasses.is_dataclass(cfg):
        return {
            f.name: identity_dict(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if "identity" not in f.metadata
        }
    return to_dict(cfg)


def execution_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of the execution switches of a config tree (`EXECUTION`), as a run used them:
    recorded in the stage's provenance, never hashed."""
    out: dict[str, Any] = {}
    if not dataclasses.is_dataclass(cfg):
        return out
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("identity") == "execution":
            out[prefix + f.name] = to_dict(value)
        elif dataclasses.is_dataclass(value):
            out.update(execution_dict(value, f"{prefix}{f.name}."))
    return out


def heatmap_hw_of_input(h: int, w: int) -> tuple[int, int]:
    """(H, W) of the heatmaps a backbone outputs for an input of h × w: input / HEATMAP_STRIDE."""
    return h // HEATMAP_STRIDE, w // HEATMAP_STRIDE


def suggest(word: Any, options: Any) -> str:
    """ " (did you mean 'x'?)" for the valid option nearest to `word` (or one it is a prefix of), else ""."""
    valid = [str(o) for o in options]
    close = (
        difflib.get_close_matches(str(word), valid, n=1)
        or sorted(v for v in valid if v.startswith(str(word)) or str(word).startswith(v))[:1]
    )
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    hint = suggest(key, valid)
    return f"{_join(where, str(key))}: unknown key{hint}; valid keys: {', '.join(sorted(valid))}"


def _join(where: str, key: str) -> str:
    if not where:
        return key
    return f"{where}{key}" if where.endswith(": ") else f"{where}.{key}"


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} = {value!r}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} = {value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: expected true or false, got {type(value).__name__}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected an integer, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number, got {type(value).__name__}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string, got {type(value).__name__}")
        return value
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{where} = {value!r}: unknown{suggest(value, allowed)}; allowed: {', '.join(allowed)}"
        )


def _at_least(value: float, low: float, where: str) -> None:
    if value < low:
        raise ConfigError(f"{where} = {value!r}: must be ≥ {low}")


def _in_range(value: float, low: float, high: float, where: str) -> None:
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{where} = {value!r}: must be in [{low}, {high}]")
