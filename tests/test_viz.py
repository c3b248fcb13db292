"""viz: BEV renders put things where the grid says (x up, y left), camera projection inverts the camera model."""

from __future__ import annotations

import numpy as np
import pytest

from bevbridge.geometry import BEVGrid, make_transform, rotation_z
from bevbridge.viz.bev import MAP_COLOURS, render_bev, render_masks
from bevbridge.viz.camera import draw_boxes_on_image, project_points
from bevbridge.viz.plots import plot_gate_evolution, plot_per_class_iou
from bevbridge.viz.report import write_report

GRID = BEVGrid.square(10.0, 0.5)  # 40 x 40


def test_mask_render_orientation_x_up_y_left():
    m = np.zeros((1, 40, 40))
    ix, iy, _ = GRID.xy_to_index(np.array([[8.0, 3.0]]))  # 8 m ahead, 3 m to the left
    m[0, iy[0], ix[0]] = 1
    img = render_masks(m, ["drivable_area"])
    rows, cols = np.nonzero((img == MAP_COLOURS["drivable_area"]).all(-1))
    assert rows[0] < 20 and cols[0] < 20  # upper half (ahead) and left half (left)


def test_render_bev_draws_box_and_points():
    boxes = np.array([[5.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    img = render_bev(None, (), GRID, boxes, np.array([0]), ("car",), radar_xy=np.array([[0.0, -5.0]]), min_score=0)
    assert img.shape == (120, 120, 3)
    assert (img != 255).any(-1).sum() > 20


def test_projection_round_trip_and_box_drawing():
    # a front camera 1.5 m up looking along +x (camera z = ego x, camera x = -ego y, camera y = -ego z)
    R = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    s2e = make_transform(R, np.array([1.0, 0.0, 1.5]))
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    uv, depth = project_points(np.array([[11.0, 0.0, 1.5]]), K, s2e)
    assert np.allclose(uv, [[64, 48]]) and np.isclose(depth[0], 10.0)
    uv2, _ = project_points(np.array([[11.0, 1.0, 1.5]]), K, s2e)  # 1 m to the left -> smaller u
    assert uv2[0, 0] < 64
    ida = np.array([[0.5, 0, 3], [0, 0.5, 2], [0, 0, 1]])
    uv3, _ = project_points(np.array([[11.0, 0.0, 1.5]]), K, s2e, ida)
    assert np.allclose(uv3, [[35, 26]])
    img = np.zeros((96, 128, 3), np.uint8)
    draw_boxes_on_image(img, np.array([[15.0, 0, 1.0, 4, 2, 1.5, 0.3]]), np.array([0]), ("car",), K, s2e)
    assert img.any()


def test_plots_and_report(tmp_path):
    plot_gate_evolution([0, 10, 20], [0.12, 0.15, 0.2], [0.12, 0.13, 0.14], tmp_path / "gates.png", init=0.12)
    plot_per_class_iou({"CTAB": {"a": 0.5, "b": 0.2}}, tmp_path / "iou.png", means={"CTAB": 0.35})
    out = write_report(tmp_path, "demo", [("seg", {"mIoU": 0.35})], [("gates.png", "gates"), ("iou.png", "iou")])
    text = out.read_text()
    assert "gates.png" in text and "0.3500" in text
    with pytest.raises(FileNotFoundError, match="missing"):
        write_report(tmp_path, "x", [], [("nope.png", "")])
