"""Image backbones from timm, as multi-scale feature extractors.

``ImageBackbone("resnet50", out_indices=(3, 4))`` gives the stride-16 and stride-32 maps with 1024 and 2048
channels (RCBEVDet: mmdet ResNet out_indices (2, 3) == timm feature indices 3, 4). Images arrive as uint8
``[B, N, 3, H, W]`` (DESIGN.md) and are normalised here with the backbone's own mean/std, so the data layer never
needs to know which backbone runs. Pretrained weights load from a local file the user names (nothing downloads).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from bevbridge.models.meta import on_meta_device

__all__ = ["ImageBackbone"]


def _num_feature_levels(name: str) -> int:
    """How many feature levels timm's ``features_only`` model ``name`` has (built on the meta device: no weights)."""
    with torch.device("meta"):
        return len(timm.create_model(name, features_only=True).feature_info.info)


class ImageBackbone(nn.Module):
    """``forward(images uint8|float [B, N, 3, H, W]) -> list of [B*N, C_i, H/s_i, W/s_i]`` (cameras folded into B).

    Args:
        name: a timm model name (resnet50, convnext_tiny, ese_vovnet99b, vit_small_patch14_dinov2, ...).
        out_indices: timm feature indices to return.
        pretrained_path: optional local checkpoint (timm/torchvision state dict, .pth or .safetensors).
        frozen: freeze all weights and keep BatchNorm in eval mode (RCBEVDet trains with ``freeze_img=True``).
        frozen_stages: mmdet's ``frozen_stages``: -1 trains everything; k >= 0 freezes the stem and the first k
            stages (eval mode, no gradient). Stages are timm's feature stages (ResNet: k=1 is conv1/bn1 + layer1).
        norm_eval: every BatchNorm stays in eval mode and is not trained (mmdet's ``norm_cfg.requires_grad=False``
            with ``norm_eval=True``, BEVFormer's image backbones).
        size_divisor: pad the normalised images with zeros at the bottom/right to a multiple of this (mmdet's
            ``PadMultiViewImage(size_divisor=32)`` pads after normalisation, so the padding is 0); 1 = no padding.
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=(256, 704)`` for a Swin Transformer, whose
            window partition is built for one input size).

    Backbones whose features timm returns channel-last (Swin: ``output_fmt`` NHWC) are permuted to ``[B, C, H, W]``.
    """

    def __init__(self, name: str = "resnet50", out_indices: tuple[int, ...] = (3, 4),
                 pretrained_path: str | None = None, frozen: bool = False, *, frozen_stages: int = -1,
                 norm_eval: bool = False, size_divisor: int = 1, **timm_kwargs):
        super().__init__()
        if on_meta_device():
            pretrained_path = None  # a weightless build (bevbridge summary): nothing to load
        if pretrained_path is not None and not Path(pretrained_path).is_file():
            raise FileNotFoundError(f"image backbone weights not found: {pretrained_path} "
                                    f"(model.image.pretrained_path must name a local file; nothing is downloaded)")
        overlay = {"file": str(pretrained_path)} if pretrained_path else None
        try:
            self.net = timm.create_model(name, pretrained=pretrained_path is not None, pretrained_cfg_overlay=overlay,
                                         features_only=True, out_indices=out_indices, **timm_kwargs)
        except IndexError as err:  # timm's own message is a bare "list index out of range"
            raise ValueError(f"image backbone {name!r}: out_indices {tuple(out_indices)} asks for a feature level it "
                             f"does not have; its timm feature indices are 0..{_num_feature_levels(name) - 1} "
                             f"(model.image.out_indices; BEVFusion: model.camera.out_indices)") from err
        self.channels: list[int] = list(self.net.feature_info.channels())
        self.strides: list[int] = list(self.net.feature_info.reduction())
        cfg = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.channels_last_out = str(getattr(self.net, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.frozen = frozen
        self.norm_eval = norm_eval
        self.size_divisor = max(1, size_divisor)
        if frozen:
            self.net.requires_grad_(False)
        self._frozen_children = self._stem_and_stages(frozen_stages)
        for name in self._frozen_children:
            getattr(self.net, name).requires_grad_(False)
        if norm_eval:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)

    def _stem_and_stages(self, k: int) -> list[str]:
        """Top-level children of the timm net that ``frozen_stages=k`` freezes: all before stage k + 1."""
        if k < 0:
            return []
        children = [n for n, _ in self.net.named_children()]
        stop = next((i["module"] for i in self.net.feature_info.info if i["reduction"] == 2 ** (k + 2)), None)
        if stop is None:  # k covers every stage
            return children
        top = stop.split(".")[0]
        return children[: children.index(top)] if top in children else []

    def train(self, mode: bool = True) -> ImageBackbone:
        super().train(mode)
        if self.frozen:
            self.net.eval()
        for name in self._frozen_children:
            getattr(self.net, name).eval()
        if self.norm_eval:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.flatten(0, 1).float()
        x = (x - self.mean) / self.std
        d = self.size_divisor
        if d > 1 and (x.shape[-2] % d or x.shape[-1] % d):
            x = nn.functional.pad(x, (0, -x.shape[-1] % d, 0, -x.shape[-2] % d))
        feats = self.net(x)
        if self.channels_last_out:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return feats
