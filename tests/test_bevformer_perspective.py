"""BEVFormer v2's perspective head: target geometry round trips, FCOS assignment, the loss at a perfect prediction,
two-stage proposals on the BEV grid, and the v2 temporal encoder's shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevbridge.data.batch import DETECTION_CLASSES
from bevbridge.data.synth.rig import make_rig
from bevbridge.geometry import BEVGrid, box_corners, make_transform, rotation_z, unit_cell_centres
from bevbridge.models.bevformer.config import PerspectiveHeadConfig, TwoStageConfig
from bevbridge.models.bevformer.perspective_head import PerspectiveHead
from bevbridge.models.bevformer.perspective_loss import PerspectiveLoss, focal_length, giou_loss_ltrb
from bevbridge.models.bevformer.perspective_targets import (assign_locations, decode_boxes, feature_locations,
                                                            project_boxes)
from bevbridge.models.bevformer.proposals import ProposalQueries, centres_to_reference
from bevbridge.models.bevformer.temporal_encoder import TemporalFusion
from bevbridge.ops.msda import ms_deform_attn

HW = (144, 256)
F64 = torch.float64


def cameras(flip: bool = True, scale: float = 0.8):
    """The synthetic rig at 180x320 seen through ida = resize x0.8 (-> 144x256) and, for odd cameras, a flip."""
    rig = make_rig((180, 320))
    K = torch.from_numpy(np.stack([c.K for c in rig.cameras]))
    s2e = torch.from_numpy(np.stack([c.sensor2ego for c in rig.cameras]))
    ida = torch.tensor([[scale, 0, 0], [0, scale, 0], [0, 0, 1.0]], dtype=F64).repeat(6, 1, 1)
    if flip:
        ida[1::2] = torch.tensor([[-1.0, 0, HW[1]], [0, 1, 0], [0, 0, 1]], dtype=F64) @ ida[1::2]
    return K, s2e, ida, [c.channel for c in rig.cameras]


def bda() -> torch.Tensor:
    A = np.diag([-1.0, 1.0, 1.0]) @ (1.04 * rotation_z(np.array(-0.4)))
    return torch.from_numpy(make_transform(A, np.zeros(3)))


BOXES = torch.tensor([[14.0, 3.0, 0.4, 4.6, 1.9, 1.7, 0.7, 3.0, -1.0],
                      [-12.0, -2.0, 0.9, 0.7, 0.7, 1.8, -2.5, 0.5, 0.5],
                      [6.0, -9.0, 0.2, 10.0, 2.9, 3.3, 2.0, 0.0, 0.0]], dtype=F64)


def test_box_to_camera_and_back_is_exact_through_flip_resize_and_bda():
    """Augmented-frame box -> (projected centre, depth, size, allocentric yaw and velocity) per camera -> the same box,
    for cameras whose image is resized and mirrored and a BEV that is rotated, scaled and mirrored. A flip sign
    dropped on either side, ida inverted the wrong way or bda left out breaks the round trip."""
    K, s2e, ida, _ = cameras()
    T = bda()[None].expand(6, 4, 4)
    boxes = BOXES[None].expand(6, -1, -1)
    p = project_boxes(boxes, K, s2e, ida, T, HW)
    back = decode_boxes(p["centre_pix"], p["depth"], p["size"], p["alpha"], p["vel"], K, s2e, ida, T)
    front = p["depth"] > 0.1  # a centre behind the camera has no pixel to come back from
    assert front.sum() >= 6 and front[1::2].any()  # flipped cameras included
    torch.testing.assert_close(back[front][:, :6], boxes[front][:, :6], rtol=0, atol=1e-9)
    dyaw = torch.remainder(back[..., 6] - boxes[..., 6] + math.pi, 2 * math.pi) - math.pi
    assert dyaw[front].abs().max() < 1e-9
    torch.testing.assert_close(back[front][:, 7:], boxes[front][:, 7:], rtol=0, atol=1e-9)


def test_projection_matches_a_plain_pinhole_and_mirrors_the_allocentric_yaw():
    """The projected centre equals ida @ K @ R^T (c - t) computed by hand; a mirrored image flips the sign of the
    allocentric yaw and of the tangential velocity (what the flipped image shows), a resize leaves them alone."""
    K, s2e, ida, names = cameras(flip=False)
    _, _, ida_f, _ = cameras(flip=True)
    f = names.index("CAM_FRONT_RIGHT")  # an odd index: flipped in ida_f
    box = torch.tensor([[12.0, -8.0, 0.5, 4.0, 2.0, 1.5, 1.0, 2.0, 1.0]], dtype=F64)[None].expand(6, -1, -1)
    p, pf = project_boxes(box, K, s2e, ida, None, HW), project_boxes(box, K, s2e, ida_f, None, HW)
    c = np.linalg.inv(s2e[f].numpy()) @ np.array([12.0, -8.0, 0.5, 1.0])
    uv = (K[f].numpy() @ c[:3])[:2] / c[2] * 0.8
    np.testing.assert_allclose(p["centre_pix"][f, 0].numpy(), uv, atol=1e-9)
    assert abs(float(p["depth"][f, 0]) - c[2]) < 1e-9 and p["valid"][f, 0]
    assert abs(float(pf["centre_pix"][f, 0, 0]) - (HW[1] - uv[0])) < 1e-9
    assert abs(float(pf["alpha"][f, 0]) + float(p["alpha"][f, 0])) < 1e-12
    assert abs(float(pf["vel"][f, 0, 1]) + float(p["vel"][f, 0, 1])) < 1e-12
    assert float(pf["vel"][f, 0, 0]) == pytest.approx(float(p["vel"][f, 0, 0]))
    lo, hi = p["box2d"][f, 0, :2], p["box2d"][f, 0, 2:]
    assert (lo <= p["centre_pix"][f, 0]).all() and (p["centre_pix"][f, 0] <= hi).all()


def test_fcos_assignment_with_centre_sampling_levels_and_smallest_box():
    """Positives lie inside the 2D box, within 1.5 strides of the projected centre and on the level whose size range
    holds their largest side distance; where two boxes claim a location the smaller 2D box wins."""
    shapes, strides = [(18, 32), (9, 16), (5, 8)], (8, 16, 32)
    locs, strd, lvl = feature_locations(shapes, strides, dtype=F64)
    proj = {"box2d": torch.tensor([[[40.0, 30.0, 120.0, 100.0], [60.0, 50.0, 80.0, 70.0]]], dtype=F64),
            "centre_pix": torch.tensor([[[80.0, 65.0], [70.0, 60.0]]], dtype=F64),
            "valid": torch.tensor([[True, True]])}
    soi = ((-1.0, 16.0), (16.0, 32.0), (32.0, 1e8))
    idx, ltrb = assign_locations(locs, strd, lvl, proj, soi, 1.5, HW)
    big, small = (idx[0] == 0), (idx[0] == 1)
    assert small.any() and big.any()
    x, y = locs[:, 0], locs[:, 1]
    for j, sel in ((0, big), (1, small)):
        b, c = proj["box2d"][0, j], proj["centre_pix"][0, j]
        assert ((x[sel] > b[0]) & (x[sel] < b[2]) & (y[sel] > b[1]) & (y[sel] < b[3])).all()
        assert ((x[sel] - c[0]).abs() < 1.5 * strd[sel]).all() and ((y[sel] - c[1]).abs() < 1.5 * strd[sel]).all()
        reach = ltrb[0, sel].amax(-1)
        lo = torch.tensor([s[0] for s in soi], dtype=F64)[lvl[sel]]
        hi = torch.tensor([s[1] for s in soi], dtype=F64)[lvl[sel]]
        assert ((reach >= lo) & (reach <= hi)).all()
    # the small box sits inside the big one: its locations on its level went to it, not to the big box
    assert (lvl[small] == 0).all()


def perfect_outputs(loss: PerspectiveLoss, head_out: dict, m, loc, cls, gt: dict, K, ida) -> dict:
    """Head outputs whose raw values decode to ``gt`` at locations (m, loc) for classes ``cls``."""
    out = {k: (v.clone().double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in head_out.items()}
    stride, level = out["strides"][loc], out["levels"][loc]
    out["ctr"][m, loc, cls] = (gt["pix"] - out["locations"][loc]) / stride[:, None]
    focal = focal_length(K[m], ida[m])
    mean, std = loss.mean_depth.double()[level], loss.std_depth.double()[level]
    out["depth_raw"][m, loc, cls] = (gt["depth"] * loss.cfg.depth_focal_norm / focal - mean) / std
    out["size_raw"][m, loc, cls] = (gt["size"] / loss.canonical.double()[cls]).log()
    out["yaw"][m, loc, cls] = torch.stack([gt["alpha"].sin(), gt["alpha"].cos()], -1)
    out["vel"][m, loc, cls] = gt["vel"]
    return out


def test_perfect_predictions_decode_to_the_boxes_and_cost_no_3d_loss():
    """Raw head values built from the targets decode, through the per-level depth prior and focal-length scaling,
    the class's canonical size, the per-class channel and the camera matrices, to the GT boxes, and the disentangled
    corner loss and the velocity loss are then zero. Catches a wrong class channel, depth scaled by the wrong focal
    length, an offset in pixels instead of strides, or a GT/pred swap in any group."""
    torch.manual_seed(0)
    cfg = PerspectiveHeadConfig(strides=(8, 16, 32), num_convs=1, num_3d_convs=1, norm="GN",
                                sizes_of_interest=((-1.0, 16.0), (16.0, 32.0), (32.0, 1e8)),
                                mean_depth=(40.0, 20.0, 10.0), std_depth=(20.0, 10.0, 5.0), depth_focal_norm=113.1)
    head = PerspectiveHead(cfg, 32).double()
    loss = PerspectiveLoss(cfg, DETECTION_CLASSES, HW).double()
    K, s2e, ida, _ = cameras()
    B, N = 1, 6
    feats = [torch.randn(N, 32, h, w, dtype=F64) for h, w in [(18, 32), (9, 16), (5, 8)]]
    out = head(feats)
    labels = torch.tensor([0, 5, 3])
    T = bda()
    proj = project_boxes(BOXES[None].expand(6, -1, -1), K, s2e, ida, T[None].expand(6, 4, 4), HW)
    idx, _ = assign_locations(out["locations"].double(), out["strides"].double(), out["levels"], proj,
                              cfg.sizes_of_interest, cfg.center_radius, HW)
    m, loc = (idx >= 0).nonzero(as_tuple=True)
    j = idx[m, loc]
    assert len(set(j.tolist())) == 3  # every box has positives
    gt = {"pix": proj["centre_pix"][m, j], "depth": proj["depth"][m, j], "size": proj["size"][m, j],
          "alpha": proj["alpha"][m, j], "vel": proj["vel"][m, j]}
    out = perfect_outputs(loss, out, m, loc, labels[j], gt, K, ida)
    parts = loss.parts(out, m, loc, labels[j], K, ida)
    boxes = loss.boxes(parts, m, K, s2e, ida, T[None].expand(6, 4, 4))
    torch.testing.assert_close(boxes[:, :6], BOXES[j, :6], rtol=0, atol=1e-8)
    torch.testing.assert_close(boxes[:, 7:], BOXES[j, 7:], rtol=0, atol=1e-8)
    terms = loss(out, [BOXES], [labels], K[None], s2e[None], ida[None], T[None], None)
    assert terms["box3d"] < 1e-12 and terms["vel"] < 1e-12 and terms["num_pos"] == len(m)
    # a wrong depth is penalised through the depth group only
    out["depth_raw"][m, loc, labels[j]] += 0.5
    assert loss(out, [BOXES], [labels], K[None], s2e[None], ida[None], T[None], None)["box3d"] > 0.01


def test_giou_loss_from_side_distances():
    """GIoU of two boxes given as (l, t, r, b) from one point: identical -> 0; a box twice as wide -> 1 - 1/2."""
    t = torch.tensor([[2.0, 1.0, 3.0, 2.0]], dtype=F64)
    assert giou_loss_ltrb(t, t).abs().max() < 1e-12
    wide = torch.tensor([[4.0, 1.0, 6.0, 2.0]], dtype=F64)
    assert abs(float(giou_loss_ltrb(wide, t)) - 0.5) < 1e-12


def test_proposal_centre_lands_on_the_grid_reference_point_and_its_bev_cell():
    """A proposal centred on BEV cell (ix, iy) gets exactly that cell's reference point (unit_cell_centres), and the
    decoder's deformable cross-attention with zero offsets there reads exactly that cell's BEV feature (x/y swapped
    or the grid's extent misused reads another cell)."""
    grid = BEVGrid.square(51.2, 2.048)
    cells = torch.tensor([[3, 40], [25, 7], [49, 0]])  # (ix, iy)
    centres = torch.cat([grid.index_to_xy(cells[:, 0].double(), cells[:, 1].double()),
                         torch.tensor([[0.5], [-1.0], [2.0]], dtype=F64)], -1)
    ref = centres_to_reference(centres, grid, (-5.0, 3.0))
    expect = unit_cell_centres(50, 50, dtype=F64)[cells[:, 1] * 50 + cells[:, 0]]
    torch.testing.assert_close(ref[:, :2], expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(ref[:, 2], torch.tensor([5.5 / 8, 4 / 8, 7 / 8], dtype=F64))
    bev = torch.randn(1, 2500, 1, 4, dtype=F64)
    loc = ref[None, :, None, None, None, :2]  # [1, 3, heads, L, P, 2]
    out = ms_deform_attn(bev, torch.tensor([[50, 50]]), torch.tensor([0]), loc, torch.ones(1, 3, 1, 1, 1, dtype=F64))
    torch.testing.assert_close(out[0], bev[0, cells[:, 1] * 50 + cells[:, 0], 0], rtol=0, atol=1e-12)


def test_proposals_keep_one_box_per_object_across_cameras_and_fill_every_slot():
    """Two cameras both predict the same object (confidently) and one camera a second object: NMS across cameras
    keeps one of the duplicates, the two objects take the first two slots, the remaining slots are filled with the
    best of the rest; the selected boxes are the head's decoded boxes."""
    cfg = PerspectiveHeadConfig(strides=(8, 16, 32), num_convs=1, num_3d_convs=1, norm="GN",
                                sizes_of_interest=((-1.0, 16.0), (16.0, 32.0), (32.0, 1e8)),
                                mean_depth=(40.0, 20.0, 10.0), std_depth=(20.0, 10.0, 5.0))
    head = PerspectiveHead(cfg, 32).double()
    loss = PerspectiveLoss(cfg, DETECTION_CLASSES, HW).double()
    K, s2e, ida, names = cameras(flip=False)
    out = head([torch.zeros(6, 32, h, w, dtype=F64) for h, w in [(18, 32), (9, 16), (5, 8)]])
    out = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in out.items()}
    out["cls"][:] = -10.0
    obj = torch.tensor([[14.0, 6.5, 0.5, 4.6, 1.9, 1.7, 0.3, 0.0, 0.0]], dtype=F64)  # in both cameras
    f, fl = names.index("CAM_FRONT"), names.index("CAM_FRONT_LEFT")
    proj = project_boxes(obj[None].expand(6, -1, -1), K, s2e, ida, None, HW)
    assert proj["valid"][f, 0] and proj["valid"][fl, 0]
    chosen = []
    for cam, score in ((f, 6.0), (fl, 5.0)):
        loc = int(((out["locations"] - proj["centre_pix"][cam, 0]).norm(dim=-1)).argmin())
        gt = {k: proj[src][cam:cam + 1, 0] for k, src in (("pix", "centre_pix"), ("depth", "depth"), ("size", "size"),
                                                          ("alpha", "alpha"), ("vel", "vel"))}
        m, l, c = torch.tensor([cam]), torch.tensor([loc]), torch.tensor([0])
        out = perfect_outputs(loss, out, m, l, c, gt, K, ida)
        out["cls"][cam, loc, 0] = score
        out["ctrness"][cam, loc] = 10.0
        out["conf"][cam, loc, 0] = 10.0
        chosen.append((cam, loc))
    out["cls"][f, 100, 5] = 3.0  # a second object elsewhere in CAM_FRONT
    out["ctrness"][f, 100] = 10.0
    out["conf"][f, 100, 5] = 10.0
    prop = ProposalQueries(TwoStageConfig(num_proposals=5, pre_nms=50), BEVGrid.square(51.2, 2.048), (-5.0, 3.0), 32)
    boxes, scores = prop.select(out, loss, K[None], s2e[None], ida[None], torch.eye(4, dtype=F64)[None], None)
    assert boxes.shape == (1, 5, 9) and scores.shape == (1, 5)
    torch.testing.assert_close(boxes[0, 0, :3].double(), obj[0, :3], rtol=0, atol=1e-4)
    assert (boxes[0, 1, :2].double() - obj[0, :2]).norm() > 1.0  # the other object, not the duplicate
    assert (boxes[0, 2:, :2].double() - obj[0, :2]).norm(dim=-1).min() < 1e-3  # the duplicate only afterwards
    q_pos, q = prop.embed(centres_to_reference(boxes, prop.grid, prop.z_range))
    assert q_pos.shape == q.shape == (1, 5, 32)


def test_temporal_fusion_shapes_and_parameters():
    """v2's t8 fusion at C = 256: 8 x 256 -> 512 through three basic blocks (first with a 3x3 conv + BN shortcut),
    Linear + LayerNorm -> 256: 30,806,784 + 131,840 parameters; output [B, H*W, 256]."""
    with torch.device("meta"):
        m = TemporalFusion(256, 8, 512, 3)
    assert sum(p.numel() for p in m.layers.parameters()) == 2 * (2048 * 512 * 9 + 1024) + 512 * 512 * 9 + 1024 \
        + 2 * (2 * 512 * 512 * 9 + 2 * 1024)
    assert sum(p.numel() for p in m.layer_norm.parameters()) == 512 * 256 + 256 + 512
    small = TemporalFusion(8, 3, 16, 2)
    out = small([torch.randn(2, 8, 5, 6) for _ in range(3)])
    assert out.shape == (2, 30, 8)
