"""CTAB's config schema (``model: {kind: ctab, ...}``): the sections of bevbridge/models/ctab/model.py.

Defaults are the paper-scale values (RCBEVDet's public config where CTAB defers to it; papers/ctab.txt Sec. IV-B);
``*_synth.yaml`` configs shrink them. The loader picks this schema by ``kind`` and rejects unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bevbridge.config.checks import check_box_range, check_range, check_size
from bevbridge.models.config_common import GridConfig, ModelConfig
from bevbridge.models.contract import DataNeeds

__all__ = [
    "ImageBranchConfig", "DepthConfig", "RadarBranchConfig", "CAMFConfig", "CenterHeadConfig",
    "SegBranchConfig", "CTABBridgeConfig", "CTABConfig", "CTAB_MAP_CLASSES",
]

# CTAB's 7 map classes (Sec. IV-A); `divider` = road_divider ∪ lane_divider, `vehicle` from 3D boxes.
CTAB_MAP_CLASSES = ("drivable_area", "carpark_area", "ped_crossing", "walkway", "stop_line", "divider", "vehicle")


@dataclass
class ImageBranchConfig:
    """Image backbone (timm) + FPN to one stride-16 level."""

    backbone: str = "resnet50"
    out_indices: tuple[int, ...] = (3, 4)  # timm feature indices: ResNet stages 3 and 4 (strides 16 and 32)
    pretrained_path: str | None = None  # a local timm/torchvision checkpoint; nothing is downloaded
    frozen: bool = False  # RCBEVDet trains with the image backbone frozen after its detection pre-training
    neck_channels: int = 512
    input_size: tuple[int, int] = (256, 704)  # (H, W) of the network input images
    downsample: int = 16

    def __post_init__(self) -> None:
        check_size("model.image.input_size", self.input_size)


@dataclass
class DepthConfig:
    """BEVDepth-style LSS view transform (RCBEVDet public config)."""

    depth_range: tuple[float, float, float] = (1.0, 60.0, 0.5)  # (min, max, step) metres -> 118 bins
    z_range: tuple[float, float] = (-5.0, 3.0)  # points outside are dropped; one z bin (collapsed)
    context_channels: int = 80
    aspp_mid_channels: int = 96
    loss_weight: float = 3.0  # BCE depth loss against LiDAR
    num_past_frames: int = 8  # BEVDepth4D: past keyframes lifted without gradient and concatenated
    pre_process_blocks: int = 2
    bev_channels: tuple[int, ...] = (160, 320, 640)  # BEV ResNet stages (x2, x4, x8 the context channels)
    bev_out_channels: int = 256

    def __post_init__(self) -> None:
        check_range("model.depth.depth_range (min, max)", self.depth_range[:2], strict=True, low=0.0)
        if self.depth_range[2] <= 0:
            raise ValueError(f"model.depth.depth_range step must be > 0, got {self.depth_range}")
        check_range("model.depth.z_range", self.z_range, strict=True)


@dataclass
class RadarBranchConfig:
    """RadarBEVNet: dual-stream pillar encoder, RCS-aware scatter, SECOND + SECOND-FPN."""

    enabled: bool = True
    features: tuple[str, ...] = ("x", "y", "z", "vx_comp", "vy_comp", "rcs", "dt")
    pillar_size: float = 0.2
    z_range: tuple[float, float] = (-5.0, 3.0)
    max_points_per_pillar: int = 10
    feat_channels: tuple[int, ...] = (32, 64)
    heads: int = 2
    max_radius: int | None = None  # cap on the RCS Gaussian radius in cells (None = as published)
    second_channels: tuple[int, ...] = (64, 128, 256)
    second_layers: tuple[int, ...] = (3, 5, 5)
    fpn_channels: tuple[int, ...] = (128, 128, 128)

    def __post_init__(self) -> None:
        check_range("model.radar.z_range", self.z_range, strict=True)
        if self.pillar_size <= 0:
            raise ValueError(f"model.radar.pillar_size must be > 0, got {self.pillar_size}")


@dataclass
class CAMFConfig:
    """Cross-attention multi-layer fusion of camera and radar BEV (RCBEVDet)."""

    dim: int = 256
    heads: int = 8
    points: int = 8
    fuser_blocks: int = 3


@dataclass
class CenterHeadConfig:
    """CenterPoint head (RCBEVDet: one task of 10 classes)."""

    tasks: tuple[tuple[str, ...], ...] = (
        ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
         "pedestrian", "traffic_cone"),
    )
    share_conv_channels: int = 64
    init_bias: float = -2.19
    heatmap_weight: float = 6.0
    bbox_weight: float = 1.5
    code_weights: tuple[float, ...] = (1.0,) * 10
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objs: int = 500
    # test time
    score_threshold: float = 0.1
    nms: Literal["rotate", "circle", "scale"] = "scale"
    nms_threshold: float = 0.2
    pre_max_size: int = 1000
    post_max_size: int = 500
    # scale-NMS size factors per class name (RCBEVDet), and circle-NMS radii per task (BEVDet 6-task grouping)
    scale_factors: dict[str, float] = field(default_factory=lambda: {
        "car": 1.0, "truck": 0.7, "construction_vehicle": 0.7, "bus": 0.4, "trailer": 0.55, "barrier": 1.1,
        "motorcycle": 1.0, "bicycle": 1.0, "pedestrian": 1.5, "traffic_cone": 3.5})
    circle_radii: tuple[float, ...] = (4.0,)
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)

    def __post_init__(self) -> None:
        check_box_range("model.head.post_center_range", self.post_center_range)


@dataclass
class SegBranchConfig:
    """CTAB's segmentation branch: SegDecoder (IN), BEV upsampling, focal + dice (Sec. III-B, C, E)."""

    classes: tuple[str, ...] = CTAB_MAP_CLASSES
    channels: int = 128
    num_blocks: int = 3
    in_affine: bool = True
    out_size: int = 200  # upsampled grid, same metric extent as the BEV features
    focal_alpha: float = 0.25
    focal_gamma: float = 3.0
    focal_weight: float = 20.0
    dice_weight: float = 20.0

    def __post_init__(self) -> None:
        check_size("model.seg.out_size", (self.out_size,))


@dataclass
class CTABBridgeConfig:
    """The Cross-Task Attention Bridge (Sec. III-D)."""

    dim: int = 128
    heads: int = 8
    points: int = 4
    gate_init: float = -2.0
    gn_groups: int = 32  # the paper does not state GN's group count; 32 is GN's standard choice


@dataclass(kw_only=True)
class CTABConfig(ModelConfig):
    """RCBEVDet-style radar-camera detector with optional segmentation branch, CTAB and HUW (papers/ctab.txt).

    Rows of Table II: detection only (``seg: null``), (A) MTL baseline (``bridge: null``), (B) MTL + CTAB.
    """

    kind: Literal["ctab"]  # required: it chooses this schema
    grid: GridConfig = field(default_factory=GridConfig)
    image: ImageBranchConfig = field(default_factory=ImageBranchConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    radar: RadarBranchConfig = field(default_factory=RadarBranchConfig)
    camf: CAMFConfig = field(default_factory=CAMFConfig)
    head: CenterHeadConfig = field(default_factory=CenterHeadConfig)
    seg: SegBranchConfig | None = None
    bridge: CTABBridgeConfig | None = None
    huw: bool = True  # homoscedastic uncertainty weighting (Eq. 8) when both tasks are on
    huw_max_log_sigma: float = 1.5

    def __post_init__(self) -> None:
        if self.bridge is not None and self.seg is None:
            raise ValueError("model.bridge (CTAB) needs the segmentation branch: set model.seg")

    def data_needs(self) -> DataNeeds:
        """Images (+ past frames), radar (optional: a dropped radar is an empty point set), LiDAR for the depth
        supervision (optional: without it the depth loss is off), boxes on the BEV grid, and the map targets on the
        upsampled grid (the features' extent at ``seg.out_size`` cells, DESIGN.md)."""
        g = self.grid.to_grid()
        seg = self.seg
        return DataNeeds(
            images=True, image_size=tuple(self.image.input_size), num_past_frames=self.depth.num_past_frames,
            radar="optional" if self.radar.enabled else "no", radar_features=tuple(self.radar.features),
            lidar="optional" if self.depth.loss_weight > 0 else "no", box_range=(g.xmin, g.ymin, g.xmax, g.ymax),
            map_grid=None if seg is None else g.with_shape(seg.out_size, seg.out_size),
            map_classes=() if seg is None else tuple(seg.classes),
            tasks=("detection",) if seg is None else ("detection", "segmentation"))
