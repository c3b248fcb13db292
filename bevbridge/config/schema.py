"""The experiment config schema: what one YAML file under configs/ may contain.

Loaded by :func:`bevbridge.config.load_config`; every key below is documented where it is declared. Sections grow
with the systems that use them; an unknown key is an error, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bevbridge.config.checks import check_probability, check_range, check_run_name, check_size
from bevbridge.models.bevformer.config import BEVFormerConfig
from bevbridge.models.bevfusion.config import BEVFusionConfig
from bevbridge.models.config_common import ModelConfig
from bevbridge.models.ctab.config import CTABConfig
from bevbridge.models.tod3cap.config import TOD3CapConfig
from bevbridge.recipes.bridgeta.config import BridgeTAConfig
from bevbridge.recipes.mta.config import MTAConfig

# The model section: one schema per method, chosen by `model.kind` (each lives beside its method). Adding a method
# adds its schema here; this union is the only list of kinds, and engine/build.py the only place that builds them.
ModelSection = CTABConfig | BEVFormerConfig | BEVFusionConfig | BridgeTAConfig | TOD3CapConfig | MTAConfig

__all__ = [
    "ImageAugConfig", "BEVAugConfig", "DataConfig", "OptimConfig", "ScheduleConfig", "TrainConfig", "EvalConfig", "ModelConfig", "ModelSection", "ExperimentConfig",
]


@dataclass
class ImageAugConfig:
    """Training-time image augmentation (bevbridge/data/transforms.py; RCBEVDet's ranges by default)."""

    resize_range: tuple[float, float] = (-0.06, 0.11)  # added to the base scale (network width / image width)
    rot_range: tuple[float, float] = (-5.4, 5.4)  # degrees
    flip: bool = True
    crop_h_range: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        check_range("data.image_aug.resize_range", self.resize_range)
        check_range("data.image_aug.rot_range", self.rot_range)
        check_range("data.image_aug.crop_h_range", self.crop_h_range, low=0.0)


@dataclass
class BEVAugConfig:
    """Training-time BEV augmentation applied to points, boxes and masks alike (CTAB: ±22.5°, 0.95-1.05, flips)."""

    rot_range: tuple[float, float] = (-22.5, 22.5)  # degrees
    scale_range: tuple[float, float] = (0.95, 1.05)
    flip_x_prob: float = 0.5
    flip_y_prob: float = 0.5
    # How BEV map targets follow the augmentation. "warp": rasterise in the key frame, then the same affine by
    # nearest neighbour, as CTAB does (Sec. IV-B: "the same affine transform to pre-computed segmentation GT masks
    # via nearest-neighbor interpolation"); corners that rotate in from outside the grid are empty (0).
    # "redraw": rasterise the map and the vehicles directly in the augmented frame (no empty corners).
    masks: Literal["warp", "redraw"] = "warp"

    def __post_init__(self) -> None:
        check_range("data.bev_aug.rot_range", self.rot_range)
        check_range("data.bev_aug.scale_range", self.scale_range)
        if self.scale_range[0] <= 0:
            raise ValueError(f"data.bev_aug.scale_range must be > 0, got {self.scale_range}")
        check_probability("data.bev_aug.flip_x_prob", self.flip_x_prob)
        check_probability("data.bev_aug.flip_y_prob", self.flip_y_prob)


@dataclass
class DataConfig:
    """Where the nuScenes-format data lies, what each sample holds and how it is batched.

    The model says what it reads (``model.data_needs()``, a DataNeeds: images and their size, past frames, which
    sensors it uses and how, the box range, the map-target grid and classes, captions); the keys below choose the
    rest (where the data is, how many sweeps, augmentation, batching). A sensor the model does not use is not loaded;
    one it requires but this section disables (``lidar_sweeps: 0``, ``drop_lidar``) is an error when the dataset is
    built. ``image_size`` overrides the model's input size only when set here explicitly. See
    bevbridge/data/nuscenes.py for each option's meaning.
    """

    dataroot: str = "data/synth"  # the default synthetic world; `bevbridge synth` writes it
    version: str = "v1.0-mini"  # the table folder under dataroot: v1.0-mini, v1.0-trainval, ...
    train_split: str = "mini_train"  # a devkit split name, or a key of <dataroot>/<version>/splits.json
    val_split: str = "mini_val"
    batch_size: int = 1  # per process
    num_workers: int = 2
    cameras: tuple[str, ...] = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK",
                                "CAM_BACK_RIGHT")
    image_size: tuple[int, int] | None = None  # (H, W) network input; null = the model's image.input_size
    image_aug: ImageAugConfig | None = field(default_factory=ImageAugConfig)  # training only; null disables
    bev_aug: BEVAugConfig | None = field(default_factory=BEVAugConfig)  # training only; null disables
    radar_sweeps: int = 8  # per radar: keyframe + previous sweeps (RCBEVDet: 8)
    radar_max_points: int | None = 1200  # RCBEVDet keeps at most 1200 radar points per sample
    lidar_sweeps: int = 1  # LiDAR (keyframe + previous) for depth supervision; 0 disables
    min_points: int = 1  # GT boxes need this many lidar + radar points (the devkit's evaluation rule)
    captions: str | None = None  # TOD3Cap JSON (relative to dataroot), e.g. v1.0-mini/final_caption_bbox_token.json
    cbgs: bool = False  # class-balanced grouping and sampling of the training set
    drop_cameras: tuple[str, ...] = ()  # sensor dropout for robustness studies
    drop_radar: bool = False
    drop_lidar: bool = False
    # Faults (bevbridge/data/nuscenes.py): a training sample with a missing or corrupt sensor file stops the run with
    # one line naming the file, unless skip_bad_samples: then it is replaced by the next good sample, logged once and
    # counted, up to max_bad_fraction of the training split (beyond: an error). Validation never skips.
    skip_bad_samples: bool = False
    max_bad_fraction: float = 0.001
    allow_missing_radars: bool = False  # a sample lacking one of the 5 radars: an error at open unless true

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.radar_sweeps < 0 or self.lidar_sweeps < 0:
            raise ValueError("data.radar_sweeps and data.lidar_sweeps must be >= 0")
        check_size("data.image_size", self.image_size)


@dataclass
class OptimConfig:
    """AdamW and its parameter groups (bevbridge/engine/optim.py).

    Learning-rate scaling rule: ``lr`` is used as given, whatever the number of processes, unless ``base_batch`` is
    set; then ``lr`` is scaled linearly by (actual global batch / base_batch), where the global batch is
    data.batch_size x processes x train.grad_accum (the linear rule of Goyal et al. 2017, as mmdet's auto_scale_lr).
    """

    lr: float = 2e-4  # peak learning rate for the global batch this config was written for
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    # Parameter groups by name prefix (engine/optim.py): {prefix: multiplier} of the lr and of the weight decay,
    # e.g. lr_mult: {image_backbone.: 0.1} (BEVFormer's backbone x0.1). The longest matching prefix wins; a prefix
    # that matches no trainable parameter is an error naming it.
    lr_mult: dict[str, float] = field(default_factory=dict)
    wd_mult: dict[str, float] = field(default_factory=dict)
    grad_clip: float | None = 35.0  # max global grad norm; null disables clipping
    decay_1d_params: bool = False  # weight decay on 1-D params (biases, norm scales, scalar gates); mmcv's AdamW: true
    base_batch: int | None = None  # global batch that `lr` was tuned for; set -> linear lr scaling; null -> lr as is
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        for name in ("lr_mult", "wd_mult"):
            for prefix, mult in getattr(self, name).items():
                if not prefix or mult < 0:
                    raise ValueError(f"optim.{name}: {{{prefix!r}: {mult}}}: prefixes must be non-empty and "
                                     f"multipliers >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.base_batch is not None and self.base_batch < 1:
            raise ValueError(f"optim.base_batch must be >= 1 or null, got {self.base_batch}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, per optimizer step over train.max_steps (bevbridge/engine/schedule.py).

    cosine: cosine decay from the peak lr to min_lr_ratio x peak (CTAB: peak 4e-4, 500 warmup steps).
    cyclic: the one-cycle policy of BEVDet/RCBEVDet (mmcv 'cyclic'): lr rises by cosine from lr to
    cyclic_lr_ratio[0] x lr over the first cyclic_step_ratio_up of each cycle, then falls by cosine to
    cyclic_lr_ratio[1] x lr; AdamW's beta1 follows cyclic_momentum_ratio the same way. Usually with warmup_steps: 0.
    constant: the peak lr throughout.
    Warmup (all kinds): the factor rises linearly from warmup_ratio to 1 over warmup_steps and multiplies the schedule.
    """

    kind: Literal["cosine", "cyclic", "constant"] = "cosine"
    warmup_steps: int = 500  # linear warmup from warmup_ratio * lr
    warmup_ratio: float = 1.0 / 3.0
    min_lr_ratio: float = 1e-3  # cosine floor as a fraction of the peak
    cyclic_lr_ratio: tuple[float, float] = (10.0, 1e-4)  # (top, end) as multiples of lr
    cyclic_momentum_ratio: tuple[float, float] = (0.85 / 0.95, 1.0)  # (bottom, end) as multiples of beta1
    cyclic_step_ratio_up: float = 0.4  # fraction of each cycle spent rising
    cyclic_times: int = 1  # number of cycles over train.max_steps

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"schedule.warmup_ratio must lie in [0, 1], got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.cyclic_step_ratio_up < 1.0:
            raise ValueError(f"schedule.cyclic_step_ratio_up must lie in [0, 1), got {self.cyclic_step_ratio_up}")
        if self.cyclic_times < 1:
            raise ValueError(f"schedule.cyclic_times must be >= 1, got {self.cyclic_times}")


@dataclass
class TrainConfig:
    """The training loop (bevbridge/engine/trainer.py). A step is one optimizer step of grad_accum micro-batches."""

    max_steps: int = 1000  # the schedule's length; `--max-steps N` stops earlier without changing the schedule
    # If set, the length in epochs instead: max_steps = max_epochs x optimizer steps per epoch (the training
    # loader's batches, after CBGS and the distributed split, // grad_accum), computed when training starts and
    # written into the run's config.yaml. The papers state epochs (CTAB: 12), which depend on batch and GPUs.
    max_epochs: int | None = None
    seed: int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"  # fp16 (with GradScaler) needs CUDA; on CPU it falls back to bf16
    # bf16 on a CPU without native bfloat16 (AVX512-BF16/AMX) is ~20x slower, so there it runs float32 (logged and
    # recorded in metrics.json) unless this is true (bevbridge/engine/amp.py)
    amp_allow_emulated: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if available, else cpu
    grad_accum: int = 1  # micro-batches per optimizer step
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3  # checkpoints kept besides the best one
    out_dir: str = "runs"  # runs go to <out_dir>/<name>/
    max_bad_steps: int = 5  # abort after this many consecutive steps with a non-finite loss or gradient
    # fp16 only: abort after this many consecutive steps the GradScaler skipped (overflow). A few in a row are normal
    # while its scale comes down from 2^16; after 30 halvings it is ~6e-5, and gradients that still overflow are
    # not finite at all. Kept apart from max_bad_steps, which would stop a healthy fp16 start.
    max_overflow_steps: int = 30
    ema: bool = False  # keep an exponential moving average of the weights (MEGVII ramp, engine/ema.py)
    ema_decay: float = 0.999  # BEVDet/RCBEVDet MEGVIIEMAHook: 0.999
    ema_ramp: float = 2000.0  # decay(u) = ema_decay * (1 - exp(-u / ema_ramp)), u = number of updates
    ema_init_updates: int = 0  # starting u (RCBEVDet: 10560, i.e. the ramp is already over)
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; exact reruns on CUDA)

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every", "ckpt_every", "max_bad_steps", "max_overflow_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ValueError(f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"train.max_epochs must be >= 1 (or null), got {self.max_epochs}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.ema_ramp <= 0 or self.ema_init_updates < 0:
            raise ValueError("train.ema_ramp must be > 0 and train.ema_init_updates >= 0")


@dataclass
class EvalConfig:
    """Evaluation during training and by `bevbridge eval` (bevbridge/engine/eval_loop.py)."""

    every_steps: int = 0  # evaluate every N training steps; 0 = only at the end of training
    use_ema: bool = True  # evaluate the EMA weights when train.ema is on (and the checkpoint has them)
    # Evaluator slots, one per task the papers report (bevbridge/eval/evaluators.py); each must be a task the model
    # predicts (its DataNeeds.tasks). Metrics are logged as <evaluator>/<metric>.
    evaluators: list[Literal["detection", "segmentation", "captioning"]] = field(default_factory=list)
    # e.g. "detection/NDS": the checkpoint with the best value is kept as best; checked against the names the
    # evaluators can produce before training starts (engine/best.py)
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    batch_size: int | None = None  # per process; null = data.batch_size
    # Before each evaluation, recompute BatchNorm running statistics with the current weights over this many
    # training batches (detectron2's PreciseBN; bevbridge/engine/precise_bn.py); 0 = off. The recomputed statistics
    # are saved with the checkpoint written after the evaluation, so `bevbridge eval --ckpt` reproduces the numbers.
    recompute_bn_batches: int = 0
    # Map segmentation protocol (bevbridge/eval/seg_protocol.py), recorded in metrics.json under "protocols":
    # native = the model's own map grid at BEVFusion's thresholds 0.35..0.65 (CTAB: 102.4 m, 200x200);
    # bevcar = BEVCar's 100 m x 100 m at 0.5 m (200x200) and thresholds 0.25..0.80, predictions resampled onto it
    seg_protocol: Literal["native", "bevcar"] = "native"

    def __post_init__(self) -> None:
        if self.recompute_bn_batches < 0:
            raise ValueError(f"eval.recompute_bn_batches must be >= 0, got {self.recompute_bn_batches}")
        if self.every_steps < 0:
            raise ValueError(f"eval.every_steps must be >= 0, got {self.every_steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1 or null, got {self.batch_size}")
        if self.best_metric is not None and "/" not in self.best_metric.strip("/"):
            raise ValueError(f"eval.best_metric must be <evaluator>/<metric> (e.g. detection/NDS), got "
                             f"{self.best_metric!r}")


@dataclass
class ExperimentConfig:
    """One experiment: a name and its sections."""

    name: str = "experiment"  # the run folder's name (<train.out_dir>/<name>/): no '/', '..' or leading '.'
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # One schema per method, chosen by `kind` (see ModelSection above).
    model: ModelSection | None = None

    def __post_init__(self) -> None:
        check_run_name(self.name)
