"""Load an official RCBEVDet checkpoint (mmcv/mmdet3d key names) into ``CTABModel``.

    sd = read_mmcv_state_dict("rcbevdet-256x704-r50-BEV128-9kf-depth-cbgs12e-circlelarger.pth")
    report = load_rcbevdet(model, sd)            # renames keys, loads, reports what did not match

or, for training, convert once to a .safetensors file and set ``model.init_from`` to it:

    python -m bevbridge.models.ctab.rcbevdet_weights rcbevdet.pth rcbevdet_bevbridge.safetensors

Our modules keep the public code's inner names wherever the structure is the same (timm ResNet = mmdet ResNet,
BEVDet's depth net / CustomResNet / FPN_LSS, RadarBEVNet, mmdet3d's SECOND / SECONDFPN / CenterHead,
Deformable-DETR attention), so the conversion is a table of top-level prefix renames plus two sub-module renames
inside the fusion (``RENAMES``). The heatmap channels need no permutation: our CenterHead's task lists class names in
RCBEVDet's order and maps them to DETECTION_CLASSES itself.

Known gap for exact parity with the released numbers: the public code rotates radar points by -pi/2 into its LiDAR
frame and offsets pillar x by the grid edge (``RadarBEVNet(legacy_x_offset=True)``); weights load, but the radar
input frame differs from ours, so converted radar layers see rotated inputs unless that frame is reproduced.

Checkpoints are read with ``torch.load(weights_only=True)``: nothing but tensors and plain containers is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bevbridge.weights import LoadReport, save_weights

__all__ = ["RENAMES", "convert_rcbevdet_state_dict", "read_mmcv_state_dict", "load_rcbevdet", "LoadReport",
           "convert_file"]

# (public prefix, our prefix); the first match wins, so longer prefixes come first.
RENAMES: tuple[tuple[str, str], ...] = (
    ("img_backbone.", "image_backbone.net."),
    ("img_neck.", "image_neck."),
    ("img_view_transformer.depth_net.", "lss.depth_net."),
    ("pre_process_net.", "pre_process."),
    ("img_bev_encoder_backbone.", "bev_backbone."),
    ("img_bev_encoder_neck.", "bev_neck."),
    ("radar_voxel_encoder.", "radar_encoder."),
    ("radar_middle_encoder.", "radar_scatter."),
    ("radar_bev_backbone.", "radar_backbone."),
    ("radar_bev_neck.", "radar_neck."),
    ("radar_reduc_conv.conv.", "camf.radar_reduce.0."),
    ("radar_reduc_conv.bn.", "camf.radar_reduce.1."),
    ("DeformAttn1.", "camf.radar_from_cam."),
    ("DeformAttn2.", "camf.cam_from_radar."),
    ("LearnedPositionalEncoding1.", "camf.radar_pos."),
    ("LearnedPositionalEncoding2.", "camf.cam_pos."),
    ("RadarConvFuser_fuse.", "camf.fuser."),
    ("pts_bbox_head.", "center_head.net."),
)


def rename(key: str) -> str | None:
    """Our name for a public key, or None if the key has no counterpart (e.g. the upstream's unused modules)."""
    for src, dst in RENAMES:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def convert_rcbevdet_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(renamed state dict, keys without a counterpart)``; strips a DDP ``module.`` prefix first."""
    out, unknown = {}, []
    for k, v in state_dict.items():
        k = k[len("module."):] if k.startswith("module.") else k
        new = rename(k)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    return out, unknown


def read_mmcv_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmcv checkpoint file (or a bare state dict), loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling refusal the same way
        raise ValueError(f"{path}: cannot be read with weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"re-save its 'state_dict' alone with a trusted loader") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'state_dict')")
    return sd


def load_rcbevdet(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load converted weights into ``model`` (non-strict) and report missing / unexpected / mismatched keys."""
    converted, unknown = convert_rcbevdet_state_dict(state_dict)
    ours = model.state_dict()
    report = LoadReport(unexpected=list(unknown))
    usable = {}
    for k, v in converted.items():
        if k not in ours:
            report.unexpected.append(k)
        elif tuple(ours[k].shape) != tuple(v.shape):
            report.mismatched.append(f"{k} (file {tuple(v.shape)}, model {tuple(ours[k].shape)})")
        else:
            usable[k] = v
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(set(ours) - set(usable) - {m.split(" ")[0] for m in report.mismatched})
    return report


def convert_file(src: str | Path, dst: str | Path) -> tuple[int, list[str]]:
    """Convert an official RCBEVDet checkpoint into our key names as a ``.safetensors`` file (written atomically),
    for ``model.init_from=dst``. Returns (tensors written, upstream keys without a counterpart)."""
    if Path(dst).suffix != ".safetensors":
        raise ValueError(f"{dst}: the converted weights are written as .safetensors; name the file *.safetensors")
    converted, unknown = convert_rcbevdet_state_dict(read_mmcv_state_dict(src))
    save_weights(dst, converted, {"kind": "ctab", "converted_from": Path(src).name})
    return len(converted), unknown


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m bevbridge.models.ctab.rcbevdet_weights",
        description="Convert an official RCBEVDet checkpoint (.pth, mmcv keys) to bevbridge key names "
                    "(.safetensors); then train with model.init_from=OUT.")
    p.add_argument("src", help="RCBEVDet checkpoint (.pth), read with torch.load(weights_only=True)")
    p.add_argument("dst", help="output .safetensors")
    a = p.parse_args(argv)
    try:
        n, unknown = convert_file(a.src, a.dst)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"wrote {n} tensors to {a.dst}; {len(unknown)} upstream keys have no counterpart"
          + (f" (e.g. {', '.join(unknown[:5])})" if unknown else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
