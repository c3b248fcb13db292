"""BEVFormer v2's perspective head (papers/bevformer_v2.txt Sec. "Perspective Supervision"): a DD3D-style dense 3D
detection head on the image features, ``NuscenesDD3D`` in the public v2 config.

Shared over the FPN levels (strides 8..128 at paper scale), per location of every camera:

    cls tower   (4 x conv3x3-norm-ReLU) -> cls_logits [num_classes]              (prior 0.01)
    box2d tower (4 x conv3x3-norm-ReLU) -> box2d_reg [4] = relu(scale_l * x) (l, t, r, b) / stride,  centerness [1]
    box3d tower (4 x conv3x3-norm-ReLU) -> per class (or class-agnostic):
        box3d_ctr [2]   projected-centre offset, pixels = scale_ctr_l * x * stride
        box3d_depth [1] depth = (mean_l + std_l * scale_depth_l * x) * f / depth_focal_norm   (f: focal length of
                        the network input, ``|det(ida[:2, :2] K[:2, :2])|^0.5``; DD3D's scaling by focal length)
        box3d_size [3]  (l, w, h) = canonical size of the class x exp(x)
        box3d_yaw [2]   (sin, cos) of the allocentric yaw (perspective_targets.py)
        box3d_vel [2]   (v_r, v_t), allocentric velocity
        box3d_conf [1]  3D confidence logit

Norms: BatchNorm per FPN level (DD3D's per-level norms; ``norm="BN"``) or GroupNorm(32) shared. Init: 2D-branch
convs N(0, 0.01), 3D-branch convs Kaiming-normal (fan out), biases 0, per-level scales 1 (depth: 0.3), as DD3D.
Outputs are flattened over levels: ``[M, Lt, ch]`` with M = B * N cameras and Lt = sum h_l * w_l locations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevbridge.models.bevformer.config import PerspectiveHeadConfig
from bevbridge.models.bevformer.perspective_targets import feature_locations

__all__ = ["PerspectiveHead", "BOX3D_CHANNELS"]

# per-class (or class-agnostic) 3D outputs and their channel counts
BOX3D_CHANNELS = {"ctr": 2, "depth": 1, "size": 3, "yaw": 2, "vel": 2, "conf": 1}


class _Tower(nn.Module):
    """``num_convs`` x (conv3x3 -> norm -> ReLU), convs shared across levels, BatchNorms per level (or one GN)."""

    def __init__(self, channels: int, num_convs: int, norm: str, num_levels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(num_convs))
        if norm == "BN":
            self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(num_levels))
                                       for _ in range(num_convs))
        else:
            self.norms = nn.ModuleList(nn.ModuleList([nn.GroupNorm(32, channels)]) for _ in range(num_convs))

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for conv, norms in zip(self.convs, self.norms):
            x = torch.relu(norms[level if len(norms) > 1 else 0](conv(x)))
        return x


class PerspectiveHead(nn.Module):
    """``forward(feats: list of [M, C, h_l, w_l]) -> dict`` of flattened predictions (see the module docstring):
    ``cls [M, Lt, num_classes]``, ``ctrness [M, Lt]``, ``box2d [M, Lt, 4]`` (l, t, r, b in strides), ``ctr``,
    ``depth_raw``, ``size_raw``, ``yaw``, ``vel``, ``conf`` ``[M, Lt, K, ch]`` (K = 1 class-agnostic or
    num_classes), and ``locations [Lt, 2]``, ``strides [Lt]``, ``levels [Lt]``, ``shapes`` (h_l, w_l)."""

    def __init__(self, cfg: PerspectiveHeadConfig, in_channels: int = 256, num_classes: int = 10):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        L = len(cfg.strides)
        C = in_channels
        self.cls_tower = _Tower(C, cfg.num_convs, cfg.norm, L)
        self.box2d_tower = _Tower(C, cfg.num_convs, cfg.norm, L)
        self.box3d_tower = _Tower(C, cfg.num_3d_convs, cfg.norm, L)
        self.cls_logits = nn.Conv2d(C, num_classes, 3, padding=1)
        self.box2d_reg = nn.Conv2d(C, 4, 3, padding=1)
        self.centerness = nn.Conv2d(C, 1, 3, padding=1)
        self.K = 1 if cfg.class_agnostic else num_classes
        self.box3d = nn.ModuleDict({k: nn.Conv2d(C, ch * self.K, 3, padding=1) for k, ch in BOX3D_CHANNELS.items()})
        self.scales_box2d = nn.Parameter(torch.ones(L))
        self.scales_ctr = nn.Parameter(torch.ones(L))
        self.scales_depth = nn.Parameter(torch.full((L,), cfg.depth_scale_init))
        for m in [*self.cls_tower.modules(), *self.box2d_tower.modules(), self.cls_logits, self.box2d_reg,
                  self.centerness]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in [*self.box3d_tower.modules(), *self.box3d.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, feats: list[torch.Tensor]) -> dict:
        cfg = self.cfg
        if len(feats) != len(cfg.strides):
            raise ValueError(f"perspective head built for {len(cfg.strides)} levels got {len(feats)}")
        M = feats[0].shape[0]
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("cls", "ctrness", "box2d", *BOX3D_CHANNELS)}

        def flat(x: torch.Tensor) -> torch.Tensor:  # [M, c, h, w] -> [M, h*w, c]
            return x.flatten(2).transpose(1, 2)

        for lvl, x in enumerate(feats):
            c = self.cls_tower(x, lvl)
            b = self.box2d_tower(x, lvl)
            t = self.box3d_tower(x, lvl)
            parts["cls"].append(flat(self.cls_logits(c)))
            parts["box2d"].append(flat(torch.relu(self.box2d_reg(b) * self.scales_box2d[lvl])))
            parts["ctrness"].append(flat(self.centerness(b))[..., 0])
            for k, ch in BOX3D_CHANNELS.items():
                y = flat(self.box3d[k](t)).reshape(M, -1, self.K, ch)
                if k == "ctr":
                    y = y * self.scales_ctr[lvl]
                elif k == "depth":
                    y = y * self.scales_depth[lvl]
                parts[k].append(y)
        out: dict = {k: torch.cat(v, 1) for k, v in parts.items()}
        out["depth_raw"], out["size_raw"] = out.pop("depth")[..., 0], out.pop("size")
        out["conf"] = out["conf"][..., 0]
        shapes = [tuple(f.shape[-2:]) for f in feats]
        out["locations"], out["strides"], out["levels"] = feature_locations(shapes, cfg.strides, feats[0].device)
        out["shapes"] = shapes
        return out
