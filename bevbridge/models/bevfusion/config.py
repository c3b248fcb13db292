"""BEVFusion's map-segmentation schema (``model: {kind: bevfusion, ...}``): one schema for the camera-only model
(BEVFusion-C, BridgeTA's student: ``lidar: null``) and the LiDAR-camera fusion model (its teacher: ``lidar: {...}``).

Defaults are the paper-scale values: BEVFusion's public camera-only segmentation config (``camera-bev256d2.yaml``:
Swin-T, GeneralizedLSSFPN -> 256, LSS on 0.4 m cells downsampled to 0.8 m, depth 1-60 m at 0.5 m, GeneralizedResNet
80 -> [160, 320, 640] strides 2/2/1 + LSSFPN -> 256, a 2x(conv3x3-BN-ReLU) + 1x1 head on the 200x200 grid at 0.5 m,
sigmoid focal loss gamma 2) and, for the teacher, BridgeTA's alignment (papers/bridgeta.txt, "Teacher and
Student"): the fuser outputs the student's camera-BEV channels and the teacher decodes with the student's decoder, so
the feature, decoded and logit tensors of the two have the same shapes. BEVFusion's own fusion model (ConvFuser ->
256, SECOND + SECONDFPN -> 512) is ``fuser.out_channels: 256`` with ``decoder: {type: second, ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bevbridge.models.config_common import GridConfig, ModelConfig
from bevbridge.models.contract import DataNeeds

__all__ = ["BEVFUSION_MAP_CLASSES", "LIDAR_COLUMNS", "CameraConfig", "LidarConfig", "FuserConfig", "DecoderConfig",
           "SegHeadConfig", "BEVFusionConfig"]

# BEVFusion's 6 map classes (its nuScenes segmentation configs); divider = road_divider ∪ lane_divider.
BEVFUSION_MAP_CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")
# The columns of Batch.lidar (bevbridge/data/batch.py), in order.
LIDAR_COLUMNS = ("x", "y", "z", "intensity", "dt")


@dataclass
class CameraConfig:
    """Image backbone (timm) + GeneralizedLSSFPN + LSS with a plain depth net (BEVFusion's LSSTransform)."""

    backbone: str = "swin_tiny_patch4_window7_224"
    out_indices: tuple[int, ...] = (1, 2, 3)  # timm feature indices: Swin-T stages 2-4 (192/384/768 ch, strides 8-32)
    # Passed to timm.create_model. A Swin Transformer builds its windows for one input size: img_size must equal
    # input_size (checked); ``dynamic_img_size: true`` is the alternative for varying sizes.
    timm_kwargs: dict[str, Any] = field(default_factory=lambda: {"img_size": [256, 704]})
    pretrained_path: str | None = None  # a local timm checkpoint (nothing is downloaded)
    neck_channels: int = 256  # GeneralizedLSSFPN output; LSS reads its finest level (stride 8: 32x88 at 256x704)
    input_size: tuple[int, int] = (256, 704)  # (H, W) of the network input images
    context_channels: int = 80  # LSS output channels (the camera BEV, F_cam)
    depth_range: tuple[float, float, float] = (1.0, 60.0, 0.5)  # (min, max, step) m -> 118 bins
    z_range: tuple[float, float] = (-10.0, 10.0)  # BEVFusion's zbound: one 20 m bin
    # The splat grid is the feature grid (model.grid) with cells this many times smaller: BEVFusion splats on 0.4 m
    # (256x256) and downsamples by 2 to 0.8 m (128x128) with conv-BN-ReLU x3 (the middle one strided).
    bev_downsample: int = 2

    def __post_init__(self) -> None:
        size = self.timm_kwargs.get("img_size")
        if size is not None and tuple(size) != tuple(self.input_size):
            raise ValueError(f"camera.timm_kwargs.img_size {list(size)} must equal camera.input_size "
                             f"{list(self.input_size)} (the backbone is built for the network input)")


@dataclass
class LidarConfig:
    """The LiDAR BEV branch: PointPillars' pillar feature net + SECOND + SECOND-FPN, pure PyTorch.

    Deviation (documented): BEVFusion encodes 0.1 x 0.1 x 0.2 m voxels with a sparse 3D convolutional SparseEncoder
    (spconv; 256 channels at 0.8 m). Sparse convolutions are compiled ops, which bevbridge does not use; pillars
    (``bevbridge.ops.voxelize``) with a dense 2D SECOND backbone stand in for it, ending on the same feature grid.
    """

    features: tuple[str, ...] = LIDAR_COLUMNS  # Batch.lidar columns the encoder reads (BEVFusion: all five)
    pillar_size: float = 0.2  # metres: 512x512 pillars over +-51.2 m
    z_range: tuple[float, float] = (-5.0, 3.0)
    max_points_per_pillar: int = 20
    max_pillars: int | None = None  # per sample; None keeps every pillar
    pfn_channels: int = 64
    backbone_channels: tuple[int, ...] = (64, 128, 256)
    backbone_layers: tuple[int, ...] = (3, 5, 5)
    backbone_strides: tuple[int, ...] = (2, 2, 2)  # each stage's output is resampled onto the feature grid
    fpn_channels: tuple[int, ...] = (128, 128, 128)  # SECOND-FPN per stage; the LiDAR BEV has their sum (384)
    # BatchNorm momentum of the branch (mmdet3d's SECOND and PFN: 0.01). With 0.01 the running statistics of a run
    # of a few hundred steps lag far behind the weights: the synthetic teacher evaluated 0.17 mIoU with them and
    # 0.32 once they were re-estimated (benchmarks/RESULTS.md); short runs use 0.1.
    bn_momentum: float = 0.01

    def __post_init__(self) -> None:
        bad = [f for f in self.features if f not in LIDAR_COLUMNS]
        if bad or tuple(self.features[:3]) != ("x", "y", "z"):
            raise ValueError(f"lidar.features must start with x, y, z and name columns of {LIDAR_COLUMNS}, got "
                             f"{list(self.features)}")
        n = len(self.backbone_channels)
        if not (len(self.backbone_layers) == len(self.backbone_strides) == len(self.fpn_channels) == n):
            raise ValueError("lidar.backbone_channels, backbone_layers, backbone_strides and fpn_channels must have "
                             "the same length")


@dataclass
class FuserConfig:
    """ConvFuser: concat(F_cam, F_lidar) -> conv3x3-BN-ReLU. BridgeTA aligns its output to the camera BEV's 80
    channels (F_fus and F_cam are compared by the feature-level distillation); BEVFusion's own fusion model: 256."""

    out_channels: int = 80


@dataclass
class DecoderConfig:
    """The BEV decoder.

    ``resnet_fpn`` (BEVFusion-C's, and BridgeTA's teacher): GeneralizedResNet (BasicBlocks, 1x1 conv + BN shortcuts)
    with ``channels``/``blocks``/``strides`` per stage, then LSSFPN (last + first stage, concat, conv, upsample back
    to the input grid) to ``out_channels[0]``. ``second`` (BEVFusion's fusion model): SECOND with ``channels``/
    ``blocks`` (conv layers per stage)/``strides``, then SECONDFPN to ``out_channels`` per stage at
    ``upsample_strides``, concatenated.
    """

    type: Literal["resnet_fpn", "second"] = "resnet_fpn"
    channels: tuple[int, ...] = (160, 320, 640)
    blocks: tuple[int, ...] = (2, 2, 2)
    strides: tuple[int, ...] = (2, 2, 1)
    out_channels: tuple[int, ...] = (256,)
    upsample_strides: tuple[float, ...] = ()  # second only (BEVFusion: [1, 2])

    def __post_init__(self) -> None:
        if not (len(self.channels) == len(self.blocks) == len(self.strides)) or not self.channels:
            raise ValueError("decoder.channels, blocks and strides must be non-empty and of the same length")
        if self.type == "resnet_fpn" and (len(self.out_channels) != 1 or len(self.channels) < 2):
            raise ValueError("decoder.type resnet_fpn needs two or more stages and one out_channels value")
        if self.type == "second" and not (len(self.out_channels) == len(self.upsample_strides) == len(self.channels)):
            raise ValueError("decoder.type second needs out_channels and upsample_strides per stage")


@dataclass
class SegHeadConfig:
    """BEVFusion's BEVSegmentationHead: BEVGridTransform onto the target grid, 2x(conv3x3-BN-ReLU) + 1x1, and a
    sigmoid focal loss per class (gamma 2, no alpha weighting: BEVFusion's ``alpha=-1``), summed over classes."""

    classes: tuple[str, ...] = BEVFUSION_MAP_CLASSES
    grid: GridConfig = field(default_factory=lambda: GridConfig(-50.0, 50.0, -50.0, 50.0, 0.5))  # 200x200 targets
    focal_gamma: float = 2.0
    focal_alpha: float = -1.0  # < 0: no class-balance weighting (BEVFusion)


@dataclass(kw_only=True)
class BEVFusionConfig(ModelConfig):
    """BEVFusion map segmentation, camera-only (``lidar: null``) or LiDAR-camera (``lidar: {...}``).

    ``grid`` is the BEV feature grid (BEVFusion: +-51.2 m at 0.8 m, 128x128) every branch ends on; the head
    resamples onto ``head.grid`` (+-50 m at 0.5 m, 200x200), where the targets are rasterised.
    """

    kind: Literal["bevfusion"]  # required: it chooses this schema
    grid: GridConfig = field(default_factory=GridConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig | None = None
    fuser: FuserConfig = field(default_factory=FuserConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: SegHeadConfig = field(default_factory=SegHeadConfig)

    def decoder_in_channels(self) -> int:
        """The channels the decoder reads: F_cam (camera-only) or F_fus (the fuser's output)."""
        return self.camera.context_channels if self.lidar is None else self.fuser.out_channels

    def data_needs(self) -> DataNeeds:
        """Camera images; LiDAR when the model has a LiDAR branch (required: the fusion model cannot run without
        it); the map targets on the head's grid. No boxes are needed."""
        return DataNeeds(images=True, image_size=tuple(self.camera.input_size),
                         lidar="no" if self.lidar is None else "required",
                         map_grid=self.head.grid.to_grid(), map_classes=tuple(self.head.classes),
                         tasks=("segmentation",))
