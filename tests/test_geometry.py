"""geometry.py: the one place for metres <-> cells, frames, quaternions and boxes. Property tests + known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bevbridge.geometry import (
    BEVGrid,
    box_bev_corners,
    box_corners,
    invert_transform,
    make_transform,
    matrix_to_quaternion,
    pose_matrix,
    quaternion_to_matrix,
    quaternion_to_yaw,
    rotation_z,
    transform_boxes,
    transform_points,
    wrap_angle,
    yaw_to_quaternion,
)

finite = dict(allow_nan=False, allow_infinity=False)
quats = arrays(np.float64, 4, elements=st.floats(-1, 1, **finite)).filter(lambda q: np.linalg.norm(q) > 0.1)
vec3 = arrays(np.float64, 3, elements=st.floats(-100, 100, **finite))
angles = st.floats(-4 * math.pi, 4 * math.pi, **finite)
points = arrays(np.float64, (5, 3), elements=st.floats(-100, 100, **finite))


@st.composite
def boxes9(draw, n=4):
    centre = draw(arrays(np.float64, (n, 3), elements=st.floats(-60, 60, **finite)))
    size = draw(arrays(np.float64, (n, 3), elements=st.floats(0.2, 12, **finite)))
    yaw = draw(arrays(np.float64, (n, 1), elements=st.floats(-math.pi, math.pi, **finite)))
    vel = draw(arrays(np.float64, (n, 2), elements=st.floats(-20, 20, **finite)))
    return np.concatenate([centre, size, yaw, vel], -1)


@st.composite
def rigid(draw):
    """A pose as nuScenes has them: any yaw, small roll/pitch-free rotation about z, any translation."""
    return make_transform(rotation_z(np.array(draw(angles))), draw(vec3))


@st.composite
def bda(draw):
    """A BEV augmentation: rotation about z, uniform scale, optional x/y flips (CTAB: ±22.5°, 0.95-1.05)."""
    rot = rotation_z(np.array(draw(st.floats(-math.pi / 8, math.pi / 8))))
    scale = draw(st.floats(0.95, 1.05))
    flip = np.diag([draw(st.sampled_from([1.0, -1.0])), draw(st.sampled_from([1.0, -1.0])), 1.0])
    return make_transform(flip @ (scale * rot), np.zeros(3))


def assert_same_angle(a, b, atol=1e-7):
    d = np.abs(wrap_angle(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
    assert np.all(np.minimum(d, 2 * math.pi - d) < atol), (a, b)


# ---------------------------------------------------------------------------------------------------- quaternions
@given(quats)
def test_quaternion_matrix_round_trip(q):
    R = quaternion_to_matrix(q)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
    q2 = matrix_to_quaternion(R)
    qn = q / np.linalg.norm(q)
    assert np.allclose(q2, qn, atol=1e-8) or np.allclose(q2, -qn, atol=1e-8)
    assert np.allclose(quaternion_to_matrix(q2), R, atol=1e-9)


def test_matrix_to_quaternion_at_180_degrees():
    for axis in np.eye(3):
        R = 2 * np.outer(axis, axis) - np.eye(3)  # rotation by pi about `axis`
        assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12)


@given(angles)
def test_yaw_quaternion_round_trip(yaw):
    q = yaw_to_quaternion(np.array(yaw))
    assert_same_angle(quaternion_to_yaw(q), yaw)
    assert np.allclose(quaternion_to_matrix(q), rotation_z(np.array(yaw)), atol=1e-12)


def test_known_rotation_is_counter_clockwise():
    R = quaternion_to_matrix(yaw_to_quaternion(np.array(math.pi / 2)))
    assert np.allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # +x turns to +y: counter-clockwise seen from above


# ---------------------------------------------------------------------------------------------------- transforms
@given(rigid(), rigid(), points)
def test_transform_composition_and_inverse(T1, T2, p):
    assert np.allclose(T1 @ invert_transform(T1), np.eye(4), atol=1e-9)
    assert np.allclose(transform_points(invert_transform(T1), transform_points(T1, p)), p, atol=1e-8)
    assert np.allclose(transform_points(T2 @ T1, p), transform_points(T2, transform_points(T1, p)), atol=1e-8)


def test_transform_points_passes_extra_columns_and_batches():
    p = np.array([[1.0, 2.0, 3.0, 7.0, 8.0]])
    T = make_transform(rotation_z(np.array(math.pi / 2)), np.array([10.0, 0, 0]))
    out = transform_points(T, p)
    assert np.allclose(out, [[8.0, 1.0, 3.0, 7.0, 8.0]])
    Tb = torch.stack([torch.eye(4, dtype=torch.float64), torch.from_numpy(T)])  # [2, 4, 4] with [2, N, 3]
    pb = torch.from_numpy(np.stack([p, p]))
    outb = transform_points(Tb, pb)
    assert torch.allclose(outb[0], pb[0]) and np.allclose(outb[1].numpy(), out)


def test_pose_matrix_matches_devkit_pyquaternion():
    from pyquaternion import Quaternion

    q = np.array([0.8, 0.1, -0.3, 0.5])
    q /= np.linalg.norm(q)
    t = np.array([1.0, -2.0, 0.5])
    T = pose_matrix(t, q)
    ref = Quaternion(q).transformation_matrix
    ref[:3, 3] = t
    assert np.allclose(T, ref, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------- boxes
@given(boxes9(), st.one_of(rigid(), bda()), st.one_of(rigid(), bda()))
@settings(max_examples=60)
def test_transform_boxes_composes(b, T1, T2):
    direct = transform_boxes(T2 @ T1, b)
    chained = transform_boxes(T2, transform_boxes(T1, b))
    assert np.allclose(direct[:, [0, 1, 2, 3, 4, 5, 7, 8]], chained[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-7)
    assert_same_angle(direct[:, 6], chained[:, 6])


@given(boxes9(), st.one_of(rigid(), bda()))
@settings(max_examples=60)
def test_box_corners_are_equivariant(b, T):
    """Corners of the transformed box == transformed corners of the box (as point sets)."""
    got = box_corners(transform_boxes(T, b))  # [n, 8, 3]
    want = transform_points(T, box_corners(b))
    for g, w in zip(got, want):
        d = np.linalg.norm(g[:, None] - w[None], axis=-1)
        assert d.min(1).max() < 1e-6 and d.min(0).max() < 1e-6


@given(boxes9(), rigid())
def test_rigid_transform_keeps_size_and_rotates_velocity(b, T):
    out = transform_boxes(T, b)
    assert np.allclose(out[:, 3:6], b[:, 3:6])
    assert np.allclose(np.linalg.norm(out[:, 7:9], axis=-1), np.linalg.norm(b[:, 7:9], axis=-1))
    # yaw shifts by the pose's heading
    dyaw = math.atan2(T[1, 0], T[0, 0])
    assert_same_angle(out[:, 6], b[:, 6] + dyaw, atol=1e-9)


def test_box_corners_known_values():
    b = np.array([1.0, 2.0, 3.0, 4.0, 2.0, 1.0, math.pi / 2])
    c = box_corners(b)
    assert c.shape == (8, 3)
    assert np.allclose(c.mean(0), b[:3])
    assert np.allclose(c[4:, :2].mean(0), [1.0, 4.0])  # front half lies along the heading (+y here)
    bev = box_bev_corners(b)
    assert np.allclose(bev, [[2, 0], [2, 4], [0, 4], [0, 0]])  # counter-clockwise from rear-right
    area = 0.5 * abs(np.dot(bev[:, 0], np.roll(bev[:, 1], 1)) - np.dot(bev[:, 1], np.roll(bev[:, 0], 1)))
    assert np.isclose(area, 8.0)


def test_flip_bda_mirrors_box():
    flip_y = make_transform(np.diag([1.0, -1.0, 1.0]), np.zeros(3))  # mirror across the x axis
    b = np.array([[10.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 2.0]])
    out = transform_boxes(flip_y, b)
    assert np.allclose(out[0, [0, 1, 2, 3, 4, 5]], [10, -5, 0, 4, 2, 1.5])
    assert np.isclose(out[0, 6], -0.3) and np.allclose(out[0, 7:], [1.0, -2.0])


def test_torch_and_numpy_agree_and_keep_dtype():
    b = np.random.default_rng(0).normal(size=(3, 9)).astype(np.float32)
    b[:, 3:6] = np.abs(b[:, 3:6]) + 0.5
    T = make_transform(rotation_z(np.array(0.7)), np.array([1.0, 2.0, 0.0])).astype(np.float32)
    out_np = transform_boxes(T, b)
    out_t = transform_boxes(torch.from_numpy(T), torch.from_numpy(b))
    assert out_np.dtype == np.float32 and out_t.dtype == torch.float32
    assert np.allclose(out_np, out_t.numpy(), atol=1e-5)
    assert quaternion_to_matrix(np.ones(4, dtype=np.float32)).dtype == np.float32


# --------------------------------------------------------------------------------------------------------- BEVGrid
CTAB = BEVGrid.square(51.2, 0.8)
MAP = BEVGrid.square(50.0, 0.5)


def test_grid_shapes_and_cell_centres():
    assert CTAB.shape == (128, 128) and MAP.shape == (200, 200)
    g = BEVGrid(-10, 30, -5, 5, 0.5)
    assert g.shape == (20, 80)  # (H along y, W along x)
    c = g.cell_centres(dtype=torch.float64)
    assert c.shape == (20, 80, 2)
    assert torch.allclose(c[0, 0], torch.tensor([-9.75, -4.75], dtype=torch.float64))
    assert torch.allclose(c[3, 7], torch.tensor([-10 + 7.5 * 0.5, -5 + 3.5 * 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="whole number"):
        BEVGrid(-10, 10, -10, 10, 0.3)
    with pytest.raises(ValueError, match="xmax > xmin"):
        BEVGrid(10, -10, -10, 10, 0.5)


@given(arrays(np.float64, (16, 2), elements=st.floats(-51.19, 51.19, **finite)))
def test_metres_cells_round_trip(xy):
    ix, iy, inside = CTAB.xy_to_index(xy)
    assert inside.all()
    centres = CTAB.index_to_xy(ix, iy)
    assert np.all(np.abs(centres - xy) <= CTAB.res / 2 + 1e-9)
    cont = CTAB.xy_to_cell(xy)
    assert np.allclose(np.floor(cont + 0.5), np.stack([ix, iy], -1))
    ix2, iy2, _ = CTAB.xy_to_index(centres)
    assert (ix2 == ix).all() and (iy2 == iy).all()


def test_outside_points_are_flagged():
    _, _, inside = CTAB.xy_to_index(np.array([[51.2, 0.0], [-51.3, 0.0], [0.0, 60.0], [51.19, -51.2]]))
    assert inside.tolist() == [False, False, False, True]


def test_grid_sample_coordinates_hit_cells_exactly():
    g = BEVGrid(-4, 4, -2, 2, 1.0)  # H=4, W=8
    feat = torch.arange(32, dtype=torch.float64).reshape(1, 1, 4, 8)
    ix, iy = torch.tensor([3, 0, 7]), torch.tensor([2, 0, 3])
    xy = g.index_to_xy(ix.double(), iy.double())[None]
    vals = g.sample(feat, xy)[0, 0]
    assert torch.equal(vals, feat[0, 0, iy, ix])  # row index = y, column = x
    unit = g.xy_to_unit(xy)
    assert torch.allclose(unit, torch.stack([(ix + 0.5) / 8, (iy + 0.5) / 4], -1).double()[None])
    # unit_to_xy inverts it (a swapped extent on the non-square grid would map y onto the x range)
    assert torch.allclose(g.unit_to_xy(unit), xy) and np.allclose(g.unit_to_xy(np.array([[0.0, 1.0]])), [[-4, 2]])


def test_resample_identity_window_and_upsample():
    feat = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    assert torch.allclose(CTAB.resample(feat, CTAB), feat)
    window = BEVGrid(-51.2 + 0.8 * 10, -51.2 + 0.8 * 50, -51.2 + 0.8 * 20, -51.2 + 0.8 * 30, 0.8)
    assert torch.allclose(CTAB.resample(feat, window), feat[:, :, 20:30, 10:50])
    fine = BEVGrid.square(51.2, 0.4)
    up = CTAB.resample(feat, fine, mode="nearest")
    assert torch.equal(up, feat.repeat_interleave(2, -1).repeat_interleave(2, -2))
    # 128 @ 0.8 m onto the BEVFusion 200 @ 0.5 m: the outer ring beyond ±51.2 is absent, everything inside defined
    out = CTAB.resample(torch.ones(1, 1, 128, 128, dtype=torch.float64), MAP)
    assert out.shape == (1, 1, 200, 200) and torch.allclose(out, torch.ones_like(out))


@settings(max_examples=30, deadline=None)
@given(boxes9(n=3), arrays(np.float64, (40, 3), elements=st.floats(-70, 70, **finite)))
def test_points_in_boxes_matches_the_box_frame(boxes, pts):
    from bevbridge.geometry import points_in_boxes

    inside = points_in_boxes(pts, boxes)
    for m, b in enumerate(boxes):
        local = transform_points(invert_transform(make_transform(rotation_z(np.array(b[6])), b[:3])), pts)
        expect = (np.abs(local) <= b[3:6] / 2 + 1e-9).all(-1)
        near_face = (np.abs(np.abs(local) - b[3:6] / 2) < 1e-6).any(-1)  # rounding on a face may go either way
        assert (inside[:, m] == expect)[~near_face].all()
    torch_inside = points_in_boxes(torch.from_numpy(pts), torch.from_numpy(boxes))
    assert (torch_inside.numpy() == inside).all()
    # corners are inside (on the surface), a margin grows the box
    corners = box_corners(boxes).reshape(-1, 3)
    assert points_in_boxes(corners, boxes, margin=1e-6).reshape(3, 8, 3)[np.arange(3), :, np.arange(3)].all()
def test_z_to_index_bins_heights():
    from bevbridge.geometry import z_to_index

    z = torch.tensor([-5.0, -4.99, 2.99, 3.0, -5.01])
    iz, inside = z_to_index(z, -5.0, 3.0, 40)  # BEVFusion's 0.2 m voxels
    assert iz.tolist() == [0, 0, 39, 40, -1] and inside.tolist() == [True, True, True, False, False]
    iz, inside = z_to_index(np.array([0.5]), -5.0, 3.0)
    assert iz.tolist() == [0] and inside.tolist() == [True]
    with pytest.raises(ValueError, match="zmax"):
        z_to_index(z, 3.0, -5.0)
