"""BEVDepth's camera-aware depth network (RCBEVDet: ``LSSViewTransformerBEVDepth`` with ``use_dcn=False``,
``aspp_mid_channels=96``).

``x [B*N, 512, h, w]`` + camera parameters ``[B*N, 27]`` -> ``[B*N, D + C_ctx, h, w]`` (depth logits first, then
context). The 27-d camera vector (``camera_params``) is fx, fy, cx, cy; the 2x3 image-augmentation affine; five
entries of the BEV augmentation; and the 3x4 camera->ego matrix. It goes through BatchNorm1d, then two MLPs whose
outputs gate the depth and context features (squeeze-excitation). Depth: 3 BasicBlocks, ASPP, 1x1 -> D bins.
Parameter names follow BEVDet so official checkpoints map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = ["CameraAwareDepthNet", "PlainDepthNet", "camera_params", "ASPP"]


def camera_params(K: torch.Tensor, sensor2ego: torch.Tensor, ida: torch.Tensor, bda: torch.Tensor) -> torch.Tensor:
    """``K, ida [B, N, 3, 3]``, ``sensor2ego [B, N, 4, 4]``, ``bda [B, 4, 4]`` -> ``[B, N, 27]`` (BEVDepth order)."""
    B, N = K.shape[:2]
    bda3 = bda[:, None, :3, :3].expand(B, N, 3, 3)
    scalars = torch.stack([
        K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2],
        ida[..., 0, 0], ida[..., 0, 1], ida[..., 0, 2],
        ida[..., 1, 0], ida[..., 1, 1], ida[..., 1, 2],
        bda3[..., 0, 0], bda3[..., 0, 1], bda3[..., 1, 0], bda3[..., 1, 1], bda3[..., 2, 2],
    ], -1)
    return torch.cat([scalars, sensor2ego[..., :3, :].reshape(B, N, 12)], -1)


class _SELayer(nn.Module):
    """``x * sigmoid(conv(relu(conv(x_se))))`` with 1x1 convs: the camera-aware gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, channels, 1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * self.conv_expand(self.act1(self.conv_reduce(x_se))).sigmoid()


class _ASPPBranch(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        pad = 0 if kernel == 1 else dilation
        self.atrous_conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        nn.init.kaiming_normal_(self.atrous_conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3): dilations 1, 6, 12, 18 + image pooling, fused by 1x1 + BN,
    dropout 0.5. ``[B, C, h, w] -> [B, C, h, w]``."""

    def __init__(self, channels: int, mid_channels: int):
        super().__init__()
        self.aspp1 = _ASPPBranch(channels, mid_channels, 1, 1)
        self.aspp2 = _ASPPBranch(channels, mid_channels, 3, 6)
        self.aspp3 = _ASPPBranch(channels, mid_channels, 3, 12)
        self.aspp4 = _ASPPBranch(channels, mid_channels, 3, 18)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, mid_channels, 1, bias=False),
                                             nn.BatchNorm2d(mid_channels), nn.ReLU())
        self.conv1 = nn.Conv2d(mid_channels * 5, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        nn.init.kaiming_normal_(self.conv1.weight)
        nn.init.kaiming_normal_(self.global_avg_pool[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.global_avg_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        y = torch.cat([self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled], 1)
        return self.dropout(self.relu(self.bn1(self.conv1(y))))


class CameraAwareDepthNet(nn.Module):
    """BEVDepth DepthNet without DCN or stereo. ``forward(x [BN, C_in, h, w], cam [BN, 27]) -> [BN, D + C_ctx, h, w]``."""

    def __init__(self, in_channels: int = 512, mid_channels: int = 512, context_channels: int = 80,
                 depth_bins: int = 118, aspp_mid_channels: int = 96):
        super().__init__()
        self.reduce_conv = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1),
                                         nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))
        self.context_conv = nn.Conv2d(mid_channels, context_channels, 1)
        self.bn = nn.BatchNorm1d(27)
        self.depth_mlp = Mlp(27, mid_channels, mid_channels, act_layer=nn.ReLU)
        self.depth_se = _SELayer(mid_channels)
        self.context_mlp = Mlp(27, mid_channels, mid_channels, act_layer=nn.ReLU)
        self.context_se = _SELayer(mid_channels)
        self.depth_conv = nn.Sequential(
            BasicBlock(mid_channels, mid_channels), BasicBlock(mid_channels, mid_channels),
            BasicBlock(mid_channels, mid_channels), ASPP(mid_channels, aspp_mid_channels),
            nn.Conv2d(mid_channels, depth_bins, 1),
        )
        self.depth_bins = depth_bins
        self.context_channels = context_channels

    def forward(self, x: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        cam = self.bn(cam.reshape(-1, cam.shape[-1]))
        x = self.reduce_conv(x)
        context = self.context_conv(self.context_se(x, self.context_mlp(cam)[..., None, None]))
        depth = self.depth_conv(self.depth_se(x, self.depth_mlp(cam)[..., None, None]))
        return torch.cat([depth, context], 1)


class PlainDepthNet(nn.Module):
    """BEVFusion's ``LSSTransform.depthnet``: ONE 1x1 conv from the image features to D depth logits + C_ctx context
    channels; no camera parameters (``cam`` is accepted and ignored so both depth nets share one signature).

    ``forward(x [BN, C_in, h, w], cam) -> [BN, D + C_ctx, h, w]``.
    """

    def __init__(self, in_channels: int = 256, context_channels: int = 80, depth_bins: int = 118):
        super().__init__()
        self.depthnet = nn.Conv2d(in_channels, depth_bins + context_channels, 1)
        self.depth_bins = depth_bins
        self.context_channels = context_channels

    def forward(self, x: torch.Tensor, cam: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        return self.depthnet(x)
