"""BEVFormer's encoder attentions and geometry against independent float64 computations.

SCA's projection against ops/frustum (the LSS unprojection we trust), SCA and TSA against a per-query loop that
samples bilinearly by hand, the ego-motion warp against exact cell permutations, the CAN-bus signal against a known
motion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevbridge.data.synth.rig import make_rig
from bevbridge.geometry import BEVGrid, make_transform, rotation_z
from bevbridge.models.bevformer.can_bus import can_bus_from_poses
from bevbridge.models.bevformer.sca import SpatialCrossAttention, pillar_points, project_pillars
from bevbridge.models.bevformer.temporal_align import past_to_current, warp_bev
from bevbridge.models.bevformer.tsa import TemporalSelfAttention
from bevbridge.ops.frustum import frustum_points

HW = (144, 256)


def rig_tensors(flip_cam: int | None = None, scale: float = 1.0):
    """K, sensor2ego [1, 6, ...] of the synthetic rig at 144x256 and an ida that resizes (x scale) and flips one camera."""
    rig = make_rig(HW)
    K = torch.from_numpy(np.stack([c.K for c in rig.cameras]))[None]
    s2e = torch.from_numpy(np.stack([c.sensor2ego for c in rig.cameras]))[None]
    ida = torch.eye(3, dtype=torch.float64).repeat(1, 6, 1, 1)
    ida[..., 0, 0] = ida[..., 1, 1] = scale
    if flip_cam is not None:
        ida[0, flip_cam] = torch.tensor([[-1.0, 0, HW[1]], [0, 1, 0], [0, 0, 1]], dtype=torch.float64) @ ida[0, flip_cam]
    return K, s2e, ida, [c.channel for c in rig.cameras]


def bda_matrix() -> torch.Tensor:
    A = np.diag([1.0, -1.0, 1.0]) @ (1.03 * rotation_z(np.array(0.3)))
    return torch.from_numpy(make_transform(A, np.zeros(3)))[None]


# ------------------------------------------------------------------------------------------------- SCA projection
def test_sca_projection_inverts_the_lss_frustum_through_ida_and_bda():
    """A pixel unprojected at depth d by ops/frustum (ida flip + resize, bda rotation + flip + scale) projects back to
    the same pixel of the same camera, in front of it, and is seen there. Catches a missing bda inverse, ida applied
    the wrong way round, a transposed sensor2ego, or u/v swapped."""
    K, s2e, ida, _ = rig_tensors(flip_cam=1, scale=0.9)
    bda = bda_matrix()
    pix = torch.tensor([[[30.0, 40.0], [200.0, 100.0]]], dtype=torch.float64)  # [fH=1, fW=2, 2] of the input
    depths = torch.tensor([4.0, 25.0], dtype=torch.float64)
    pts = frustum_points(K, s2e, ida, depths, pix, bda)  # [1, 6, 2, 1, 2, 3]
    for cam in range(6):
        p = pts[0, cam].reshape(1, -1, 3)  # D = 1 height, Q = 4 points
        uv, hit, back = project_pillars(p, K, s2e, ida, bda, HW, (160, 256))
        torch.testing.assert_close(back[0, cam, :, 0], pix.reshape(-1, 2).repeat(2, 1), rtol=0, atol=1e-8)
        assert hit[0, cam].all()
        torch.testing.assert_close(uv[0, cam, :, 0], (pix.reshape(-1, 2).repeat(2, 1) + 0.5) /
                                   torch.tensor([256.0, 160.0], dtype=torch.float64), rtol=0, atol=1e-10)


def test_point_behind_or_outside_or_dropped_is_not_seen():
    K, s2e, ida, names = rig_tensors()
    front = names.index("CAM_FRONT")
    pts = torch.tensor([[[-20.0, 0.0, 1.0], [20.0, 0.0, 1.0], [20.0, 30.0, 1.0]]], dtype=torch.float64)
    _, hit, _ = project_pillars(pts, K, s2e, ida, None, HW, HW)
    assert hit[0, front, :, 0].tolist() == [False, True, False]  # behind / ahead / far to the left
    mask = torch.ones(1, 6, dtype=torch.bool)
    mask[0, front] = False
    _, hit, _ = project_pillars(pts, K, s2e, ida, None, HW, HW, cam_mask=mask)
    assert not hit[0, front].any()


def _sca_with_identity_projections(C: int) -> SpatialCrossAttention:
    """An SCA whose deformable attention samples exactly the reference points (zero offsets, uniform weights) and
    whose value and output projections are identities: its output is residual + mean over seen cameras of the
    sampled feature."""
    sca = SpatialCrossAttention(C, num_heads=1, num_levels=1, num_points=1, num_z=1, dropout=0.0).double()
    d = sca.deformable_attention
    with torch.no_grad():
        d.sampling_offsets.bias.zero_()
        for lin in (d.value_proj, sca.output_proj):
            lin.weight.copy_(torch.eye(C))
            lin.bias.zero_()
    return sca


def test_a_point_seen_by_two_cameras_is_normalised_by_two():
    """|V_hit| normalisation: a point in the overlap of CAM_FRONT and CAM_FRONT_LEFT gets the mean of their features,
    a point seen only by CAM_FRONT gets CAM_FRONT's (a sum without the division, or a division by N = 6, fails)."""
    K, s2e, ida, names = rig_tensors()
    f, fl = names.index("CAM_FRONT"), names.index("CAM_FRONT_LEFT")
    pts = torch.tensor([[[12.0, 6.0, 1.0], [20.0, 0.0, 1.0]]], dtype=torch.float64)  # overlap; front only
    uv, hit, _ = project_pillars(pts, K, s2e, ida, None, HW, HW)
    assert hit[0, :, 0, 0].nonzero()[:, 0].tolist() == sorted([f, fl])
    assert hit[0, :, 1, 0].nonzero()[:, 0].tolist() == [f]
    C = 3
    sca = _sca_with_identity_projections(C)
    # camera i's features are i + 1 everywhere, at stride 4 (the points are > 2 px inside both images, so bilinear
    # sampling never reaches the zero padding)
    feat = torch.arange(1.0, 7.0, dtype=torch.float64).view(1, 6, 1, 1).expand(1, 6, 36 * 64, C).contiguous()
    shapes, starts = torch.tensor([[36, 64]]), torch.tensor([0])
    query = torch.zeros(1, 2, C, dtype=torch.float64)
    out = sca(query, feat, shapes, starts, uv, hit)
    torch.testing.assert_close(out[0, 0], torch.full((C,), (f + 1 + fl + 1) / 2, dtype=torch.float64))
    torch.testing.assert_close(out[0, 1], torch.full((C,), float(f + 1), dtype=torch.float64))


def bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``img [H, W, d]`` at normalised (x, y), pixel centres at (i + 0.5) / size, zeros outside."""
    H, W, _ = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[-1], dtype=img.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xi < W and 0 <= yi < H:
                out += wy * wx * img[yi, xi]
    return out


def test_sca_equals_a_per_query_loop_in_float64():
    """SCA = 1/|V_hit| sum over seen cameras of deformable attention with the P points split over the D pillar
    heights (point k = j * D + z), through value/output projections and the residual. Catches points attached to the
    wrong height, levels or heads mixed up, unseen cameras counted, or the rebatching scatter landing on the wrong
    query."""
    torch.manual_seed(0)
    C, h, L, P, D = 8, 2, 2, 4, 2
    sca = SpatialCrossAttention(C, h, L, P, D, dropout=0.0).double()
    for p in sca.parameters():
        torch.nn.init.normal_(p, std=0.3)
    B, N, Q = 2, 3, 7
    shapes = torch.tensor([[3, 4], [2, 2]])
    starts = torch.tensor([0, 12])
    value = torch.randn(B, N, 16, C, dtype=torch.float64)
    uv = torch.rand(B, N, Q, D, 2, dtype=torch.float64) * 1.4 - 0.2
    hit = torch.rand(B, N, Q, D) > 0.5
    hit[0, :, 0] = False  # a query no camera sees
    query, pos = torch.randn(B, Q, C, dtype=torch.float64), torch.randn(B, Q, C, dtype=torch.float64)
    sca.requires_grad_(False)  # the loop below reads the module's weights as plain numbers
    out = sca(query, value, shapes, starts, uv, hit, pos)

    d = sca.deformable_attention
    expect = torch.zeros(B, Q, C, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            qp = query[b, q] + pos[b, q]
            off = d.sampling_offsets(qp).view(h, L, P, 2)
            w = d.attention_weights(qp).view(h, L * P).softmax(-1).view(h, L, P)
            acc, n = torch.zeros(C, dtype=torch.float64), 0
            for i in range(N):
                if not hit[b, i, q].any():
                    continue
                n += 1
                v = d.value_proj(value[b, i])
                for m in range(h):
                    for lvl in range(L):
                        Hl, Wl = (int(s) for s in shapes[lvl])
                        img = v[int(starts[lvl]): int(starts[lvl]) + Hl * Wl, m * (C // h):(m + 1) * (C // h)]
                        for k in range(P):
                            z = k % D
                            x = uv[b, i, q, z, 0] + off[m, lvl, k, 0] / Wl
                            y = uv[b, i, q, z, 1] + off[m, lvl, k, 1] / Hl
                            acc[m * (C // h):(m + 1) * (C // h)] += w[m, lvl, k] * bilinear(
                                img.reshape(Hl, Wl, -1), float(x), float(y))
            expect[b, q] = sca.output_proj(acc / max(n, 1)) + query[b, q]
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-10)


def test_tsa_equals_a_per_query_loop_in_float64():
    """TSA: offsets/weights from [B'_{t-1} ; Q + pos] of the same sample, softmax per queue member, mean of the two
    members, output projection and residual; without history the queue is {Q, Q}. Batch 2 with one sample having
    history catches the released code's value[:bs] batch mix-up, a softmax over both members, or swapped members."""
    torch.manual_seed(1)
    C, h, P, H, W = 8, 2, 3, 3, 4
    tsa = TemporalSelfAttention(C, h, P, (H, W), dropout=0.0).double()
    for p in tsa.parameters():
        torch.nn.init.normal_(p, std=0.3)
    B, Q = 2, H * W
    query, pos = torch.randn(B, Q, C, dtype=torch.float64), torch.randn(B, Q, C, dtype=torch.float64)
    hist, bev_q = torch.randn(B, Q, C, dtype=torch.float64), torch.randn(B, Q, C, dtype=torch.float64)
    has = torch.tensor([True, False])
    tsa.requires_grad_(False)
    out = tsa(query, hist, has, pos, bev_q)
    expect = torch.zeros_like(out)
    for b in range(B):
        members = [hist[b], bev_q[b]] if has[b] else [query[b], query[b]]
        for q in range(Q):
            iy, ix = divmod(q, W)
            ref = ((ix + 0.5) / W, (iy + 0.5) / H)
            mix = torch.cat([members[0][q], query[b, q] + pos[b, q]])
            off = tsa.sampling_offsets(mix).view(h, 2, P, 2)
            w = tsa.attention_weights(mix).view(h, 2, P).softmax(-1)
            acc = torch.zeros(C, dtype=torch.float64)
            for j, mem in enumerate(members):
                v = tsa.value_proj(mem).view(H, W, C)
                for m in range(h):
                    sl = slice(m * (C // h), (m + 1) * (C // h))
                    for k in range(P):
                        x, y = ref[0] + off[m, j, k, 0] / W, ref[1] + off[m, j, k, 1] / H
                        acc[sl] += w[m, j, k] * bilinear(v[:, :, sl], float(x), float(y))
            expect[b, q] = tsa.output_proj(acc / 2) + query[b, q]
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-10)


def test_pillar_heights_and_cell_order():
    """Four heights at zmin + linspace(0.5, 7.5, 4) as released, cells row-major with y along rows."""
    g = BEVGrid(-2, 2, -1, 1, 1.0)  # H = 2, W = 4
    pts = pillar_points(g, (-5.0, 3.0), 4).double()
    torch.testing.assert_close(pts[:, 0, 2], torch.tensor([-4.5, -5 + 17 / 6, -5 + 31 / 6, 2.5], dtype=torch.float64))
    torch.testing.assert_close(pts[0, :, :2], g.cell_centres(dtype=torch.float64).reshape(-1, 2))
    assert pts[0, 1, 0] > pts[0, 0, 0] and pts[0, 4, 1] > pts[0, 0, 1]


# ------------------------------------------------------------------------------------------------- warping
GRID = BEVGrid.square(4.0, 1.0)  # 8 x 8 cells, centred on the origin


def test_warp_by_whole_cells_is_an_exact_shift():
    """A past frame 2 m behind (the ego drove 2 m forward along +x, one cell = 1 m): what was 2 cells ahead is now
    at the current column - 2 (0-filled where the past BEV did not reach). A sign error shifts the wrong way."""
    bev = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    ego2key = torch.from_numpy(make_transform(np.eye(3), np.array([-2.0, 0.0, 0.0])))[None]
    out = warp_bev(bev, past_to_current(ego2key), GRID)
    torch.testing.assert_close(out[..., :6], bev[..., 2:], rtol=0, atol=1e-12)
    assert (out[..., 6:] == 0).all()
    # the past ego 1 m to the right (-y) of the key ego: a point at row iy now was at row iy + 1 (rows are +y)
    ego2key = torch.from_numpy(make_transform(np.eye(3), np.array([0.0, -1.0, 0.0])))[None]
    out = warp_bev(bev, ego2key, GRID)
    torch.testing.assert_close(out[:, :, :-1], bev[:, :, 1:], rtol=0, atol=1e-12)
    assert (out[:, :, -1] == 0).all()


def test_warp_by_a_quarter_turn_is_an_exact_rotation():
    """The past ego was turned +90 degrees relative to the key ego: a past cell (ix, iy) at (x, y) lies at
    (-y, x) now, i.e. the BEV rotated counter-clockwise (torch.rot90 over (W, H) axes). float32 within 1e-6."""
    bev = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ego2key = torch.from_numpy(make_transform(rotation_z(np.array(math.pi / 2)), np.zeros(3)))[None].repeat(2, 1, 1)
    out = warp_bev(bev, ego2key, GRID)
    expect = torch.rot90(bev, 1, dims=(-1, -2))
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(warp_bev(bev.float(), ego2key, GRID), expect.float(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- CAN bus
def test_can_bus_from_poses_recovers_a_known_motion():
    """The ego drives a circle at 8 m/s turning 0.1 rad/s, keyframes 0.5 s apart: velocity (8, 0, 0) in each frame's
    ego frame, yaw rate 0.1, acceleration (0, 0.8, 0) (centripetal, to the left), deltas of the released layout. A
    velocity left in the global frame or a wrong-signed yaw difference fails here."""
    v, w, dt, yaw0 = 8.0, 0.1, 0.5, 2.0

    def pose(t: float) -> np.ndarray:
        r = v / w
        yaw = yaw0 + w * t
        xy = np.array([100 + r * math.sin(yaw), 50 - r * math.cos(yaw)])
        return make_transform(rotation_z(np.array(yaw)), np.array([xy[0], xy[1], 0.0]))

    e2g = torch.from_numpy(pose(0.0))[None]
    past = np.stack([np.linalg.inv(pose(0.0)) @ pose(-dt * (k + 1)) for k in range(3)])
    ts = torch.tensor([[-500_000, -1_000_000, -1_500_000]])
    out = can_bus_from_poses(e2g, torch.tensor([0]), torch.from_numpy(past)[None], ts,
                             torch.tensor([[True, True, False]])).double()
    chord = 2 * v / w * math.sin(w * dt / 2) / dt  # finite differences see the chord, not the arc
    for f in (0, 1):  # frames with a predecessor
        torch.testing.assert_close(out[0, f, 13:16], torch.tensor([chord * math.cos(w * dt / 2),
                                   -chord * math.sin(w * dt / 2), 0.0], dtype=torch.float64), rtol=0, atol=1e-4)
        assert abs(out[0, f, 12] - w) < 1e-5 and abs(out[0, f, 17] - math.degrees(w * dt)) < 1e-4
    assert abs(out[0, 0, 8] - v * w) < 0.02 and abs(out[0, 0, 7]) < 0.05  # centripetal, (m/s^2)
    assert out[0, 2, 0:3].abs().max() == 0 and out[0, 2, 17] == 0  # the chain's first frame: zero deltas
    # ... and its successor's velocity (a forward difference), seen from its own heading
    torch.testing.assert_close(out[0, 2, 13:16], torch.tensor([chord * math.cos(w * dt / 2),
                               chord * math.sin(w * dt / 2), 0.0], dtype=torch.float64), rtol=0, atol=1e-4)
    assert abs(out[0, 0, 16] - yaw0) < 1e-6  # absolute yaw


def test_can_bus_without_past_frames_is_static():
    out = can_bus_from_poses(torch.eye(4, dtype=torch.float64)[None], torch.tensor([0]))
    assert out.shape == (1, 1, 18) and out[0, 0, 7:16].abs().max() == 0 and out[0, 0, 3] == 1.0
