"""BEVFormer's config schema (``model: {kind: bevformer, ...}``): BEVFormer v1 and v2 are options of one model.

Defaults are BEVFormer-tiny's public config (../shared/notes/anchor-facts.md); v2 (papers/bevformer_v2.txt) is
BEVFormer with ``encoder.tsa: false``, ``encoder.can_bus: false``, ``temporal.mode: fusion`` (the v2 temporal
encoder), ``decoder.groups: 11`` (group DETR), SmoothL1 box regression, the perspective head (``perspective``) and,
as the paper's Sec. 3.4 describes, two-stage hybrid queries (``two_stage``). ``*_synth.yaml`` configs shrink sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bevbridge.models.config_common import GridConfig, ModelConfig
from bevbridge.models.contract import DataNeeds

__all__ = ["BEVFormerImageConfig", "EncoderConfig", "TemporalConfig", "DecoderConfig", "DETRHeadConfig",
           "PerspectiveHeadConfig", "TwoStageConfig", "BEVFormerConfig", "DD3D_CANONICAL_SIZES"]

# nuScenes class-mean box sizes (l, w, h) in metres, DD3D's ``canon_box_sizes`` (given there as w, l, h in its
# alphabetical class order): the perspective head regresses log(size / canonical size).
DD3D_CANONICAL_SIZES: dict[str, tuple[float, float, float]] = {
    "car": (4.641, 1.975, 1.744), "truck": (6.931, 2.499, 2.838), "bus": (10.725, 2.914, 3.283),
    "trailer": (12.820, 3.006, 4.121), "construction_vehicle": (6.565, 2.772, 3.247),
    "pedestrian": (0.718, 0.667, 1.762), "motorcycle": (2.139, 0.780, 1.444), "bicycle": (1.702, 0.614, 1.305),
    "traffic_cone": (0.403, 0.402, 1.008), "barrier": (0.506, 2.352, 1.041),
}


@dataclass
class BEVFormerImageConfig:
    """Image backbone (timm) + multi-level FPN (bevbridge/models/image/fpn.py)."""

    backbone: str = "resnet50"  # any timm name: resnet50/101, dla34, ese_vovnet99b, convnext_tiny, ...
    out_indices: tuple[int, ...] = (4,)  # timm feature indices; mmdet's out_indices (3,) = C5 = timm index 4
    pretrained_path: str | None = None  # a local ImageNet checkpoint (nothing is downloaded)
    frozen_stages: int = 1  # mmdet semantics: stem + first k stages frozen (tiny: 1; v2: -1)
    norm_eval: bool = True  # BatchNorm frozen in eval mode (tiny: true; v2 trains its BN: false)
    input_size: tuple[int, int] = (450, 800)  # (H, W) network input (tiny: 900x1600 scaled by 0.5)
    size_divisor: int = 32  # images padded to a multiple (mmdet PadMultiViewImage)
    fpn_channels: int = 256
    fpn_levels: int = 1  # FPN outputs; levels beyond the backbone's are stride-2 convs on the output (P6, P7)
    bev_levels: int = 1  # the first (finest) FPN levels that spatial cross-attention reads (v2: 4 of 5)

    def __post_init__(self) -> None:
        if not 1 <= self.bev_levels <= self.fpn_levels or self.fpn_levels < len(self.out_indices):
            raise ValueError(f"model.image: need 1 <= bev_levels ({self.bev_levels}) <= fpn_levels "
                             f"({self.fpn_levels}) and fpn_levels >= len(out_indices) ({len(self.out_indices)})")


@dataclass
class EncoderConfig:
    """BEV encoder: BEV queries, layers of [TSA ->] SCA -> FFN, each followed by LayerNorm (post-norm)."""

    layers: int = 3  # tiny 3, base / v2 6
    embed_dims: int = 256
    heads: int = 8
    ffn_channels: int = 512
    dropout: float = 0.1
    z_range: tuple[float, float] = (-5.0, 3.0)  # the pillar's height range (point_cloud_range z)
    pillar_points: int = 4  # reference heights per BEV query (num_points_in_pillar)
    sca_points: int = 8  # sampling points per head and level in SCA, split over the pillar's heights
    tsa: bool = True  # temporal self-attention in every layer (v1); v2 has none
    tsa_points: int = 4
    can_bus: bool = True  # add the MLP-embedded ego-motion signal to the BEV queries (v1); derived from ego poses
    num_cams: int = 6  # camera embeddings


@dataclass
class TemporalConfig:
    """History from the Batch's past keyframes, rebuilt for every sample (no state carried between samples).

    ``tsa`` (v1): the past frames' BEVs are computed oldest first without gradient, each attending to the previous
    one through TSA, and the last becomes the key frame's ``B_{t-1}`` (public tiny: queue_length 3 = 2 past + 1).
    ``fusion`` (v2): every past BEV (without gradient) is warped to the key frame by ego motion and concatenated
    with the key frame's, then residual blocks + Linear + LayerNorm (v2's t8: 7 past + the key frame = 8 BEVs).
    """

    mode: Literal["tsa", "fusion"] = "tsa"
    num_past_frames: int = 2
    fusion_channels: int = 512  # v2 ResNetFusion inter channels
    fusion_blocks: int = 3

    def __post_init__(self) -> None:
        if self.num_past_frames < 1:
            raise ValueError(f"model.temporal.num_past_frames must be >= 1 (or model.temporal: null), "
                             f"got {self.num_past_frames}")


@dataclass
class DecoderConfig:
    """DETR decoder on the BEV: self-attention -> deformable cross-attention (BEV) -> FFN, post-norm."""

    layers: int = 6
    num_query: int = 900  # per group
    groups: int = 1  # group DETR in training (v2: 11); inference uses the first group
    heads: int = 8
    points: int = 4
    ffn_channels: int = 512
    dropout: float = 0.1


@dataclass
class DETRHeadConfig:
    """Classification / box branches, Hungarian matching, losses and NMS-free decoding (BEVFormerHead)."""

    num_reg_fcs: int = 2
    box_refine: bool = True  # iterative box refinement (one branch per decoder layer)
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    cls_weight: float = 2.0  # focal loss weight (tiny 2.0)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    bbox_loss: Literal["l1", "smooth_l1"] = "l1"  # tiny: L1; v2: SmoothL1
    bbox_weight: float = 0.25  # tiny 0.25, v2 0.75
    smooth_l1_beta: float = 1.0
    cost_cls: float = 2.0  # matching: focal classification cost weight
    cost_reg: float = 0.25  # matching: L1 (or SmoothL1 for v2) box cost weight, on the first 8 code entries
    max_num: int = 300  # NMS-free decoding: top-k (query, class) pairs
    score_threshold: float | None = None
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


@dataclass
class PerspectiveHeadConfig:
    """BEVFormer v2's perspective supervision: a DD3D-style dense 3D head on the FPN levels (Sec. 3.2)."""

    strides: tuple[int, ...] = (8, 16, 32, 64, 128)  # one per FPN level it reads (the first len(strides) levels)
    num_convs: int = 4  # classification and 2D-box towers (each)
    num_3d_convs: int = 4  # 3D-box tower
    norm: Literal["BN", "GN"] = "BN"  # DD3D: BatchNorm per FPN level; GN(32) shared across levels
    class_agnostic: bool = False  # DD3D's nuScenes head regresses the 3D box per class
    sizes_of_interest: tuple[tuple[float, float], ...] = (
        (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1.0e8))
    center_radius: float = 1.5  # centre sampling: positives within radius x stride of the projected 3D centre
    mean_depth: tuple[float, ...] = (44.921, 20.252, 11.712, 7.166, 8.548)  # per level (DD3D nuScenes)
    std_depth: tuple[float, ...] = (24.331, 9.833, 6.223, 4.611, 8.275)
    depth_scale_init: float = 0.3
    depth_focal_norm: float = 707.1  # depth scaled by f / this (DD3D: 500 x sqrt(2) via its pixel size)
    min_depth: float = 0.1
    max_depth: float = 80.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box3d_weight: float = 2.0  # DD3D disentangled corner loss (v2 config)
    conf3d_weight: float = 1.0
    conf3d_temperature: float = 1.0
    smooth_l1_beta: float = 0.05
    max_loss_per_group: float = 20.0
    velocity_weight: float = 0.2  # NuscenesDD3D speed loss weight
    canonical_sizes: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(DD3D_CANONICAL_SIZES))

    def __post_init__(self) -> None:
        n = len(self.strides)
        for name in ("sizes_of_interest", "mean_depth", "std_depth"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"model.perspective.{name} needs one entry per stride ({n}), "
                                 f"got {len(getattr(self, name))}")


@dataclass
class TwoStageConfig:
    """Hybrid object queries from perspective proposals (papers/bevformer_v2.txt Sec. 3.4; no released code).

    Per sample: every camera location's best class score x centerness x 3D confidence; the top ``pre_nms`` of all
    cameras are decoded to 3D boxes, suppressed by BEV NMS across cameras, and the top ``num_proposals`` give the
    reference points (their 3D centres, normalised over the BEV range) of as many proposal queries, placed before
    the learned queries of every group. Slots that NMS and ``score_threshold`` leave empty take the best remaining
    candidates, so the count is fixed. Query content and positional embedding come from a Linear + LayerNorm of the
    centre's sine embedding (Deformable DETR's two-stage recipe). Proposals carry no gradient to the perspective head.
    """

    num_proposals: int = 100
    pre_nms: int = 1000
    score_threshold: float = 0.05
    nms_threshold: float = 0.3  # rotated BEV IoU
    use_conf3d: bool = True  # multiply the proposal score by the 3D confidence


@dataclass(kw_only=True)
class BEVFormerConfig(ModelConfig):
    """BEVFormer (v1: tiny by default) and BEVFormer v2, by options; see the module docstring.

    Table 2 of papers/bevformer_v2.txt: ``perspective: null`` is "BEV only"; ``aux_bev_head: true`` (with no
    perspective head) the "BEV & BEV" control (a second decoder + DETR head on the same BEV, trained, never used for
    predictions); ``perspective: {...}`` "perspective & BEV". Loss: lambda_bev * L_bev + lambda_pers * L_pers, where
    L_pers is the perspective loss or, for the control, the second BEV head's loss.
    """

    kind: Literal["bevformer"]  # required: it chooses this schema
    grid: GridConfig = field(default_factory=lambda: GridConfig(res=2.048))  # 50 x 50 over +-51.2 m (tiny)
    image: BEVFormerImageConfig = field(default_factory=BEVFormerImageConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temporal: TemporalConfig | None = field(default_factory=TemporalConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: DETRHeadConfig = field(default_factory=DETRHeadConfig)
    perspective: PerspectiveHeadConfig | None = None
    two_stage: TwoStageConfig | None = None
    aux_bev_head: bool = False
    lambda_bev: float = 1.0
    lambda_pers: float = 1.0

    def __post_init__(self) -> None:
        if self.two_stage is not None and self.perspective is None:
            raise ValueError("model.two_stage needs the perspective head's proposals: set model.perspective")
        if self.aux_bev_head and self.perspective is not None:
            raise ValueError("model.aux_bev_head is Table 2's 'BEV & BEV' control: it replaces the perspective "
                             "head (set model.perspective: null)")
        if self.perspective is not None and len(self.perspective.strides) > self.image.fpn_levels:
            raise ValueError(f"model.perspective.strides has {len(self.perspective.strides)} levels but the FPN "
                             f"gives {self.image.fpn_levels} (model.image.fpn_levels)")
        t = self.temporal
        if t is not None and t.mode == "tsa" and not self.encoder.tsa:
            raise ValueError("model.temporal.mode 'tsa' needs temporal self-attention (model.encoder.tsa: true)")

    def data_needs(self) -> DataNeeds:
        """Images (+ the past keyframes the temporal part uses) and the boxes on the BEV range."""
        g = self.grid.to_grid()
        return DataNeeds(images=True, image_size=tuple(self.image.input_size),
                         num_past_frames=0 if self.temporal is None else self.temporal.num_past_frames,
                         box_range=(g.xmin, g.ymin, g.xmax, g.ymax), tasks=("detection",))
