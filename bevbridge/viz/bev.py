"""BEV renders in the style of CTAB's Fig. 4: map-class masks as colours, 3D boxes as oriented footprints coloured
by class, radar points as orange dots.

Everything is drawn in the ego frame (x forward = up in the image, y left = left in the image), through
``bevbridge.geometry.BEVGrid`` so the pixel mapping is the one every model uses. Output: RGB uint8 ``[H, W, 3]``.
"""

from __future__ import annotations

import numpy as np

from bevbridge.geometry import BEVGrid, box_bev_corners

__all__ = ["MAP_COLOURS", "CLASS_COLOURS", "render_masks", "draw_boxes", "draw_points", "render_bev"]

# RGB per map class (any class not listed gets a grey).
MAP_COLOURS: dict[str, tuple[int, int, int]] = {
    "drivable_area": (166, 206, 227), "carpark_area": (255, 255, 153), "ped_crossing": (251, 154, 153),
    "walkway": (178, 223, 138), "stop_line": (227, 26, 28), "divider": (106, 61, 154), "vehicle": (31, 120, 180),
    "road_segment": (190, 190, 230), "lane": (200, 230, 250),
}
# RGB per detection class.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "car": (0, 90, 255), "truck": (0, 160, 160), "bus": (120, 0, 200), "trailer": (150, 100, 40),
    "construction_vehicle": (200, 160, 0), "pedestrian": (220, 0, 120), "motorcycle": (255, 80, 0),
    "bicycle": (0, 200, 60), "traffic_cone": (255, 140, 0), "barrier": (90, 90, 90),
}
RADAR_COLOUR = (255, 140, 0)


def _to_image(grid: BEVGrid, xy: np.ndarray) -> np.ndarray:
    """Metres ``[..., 2]`` -> image pixel coordinates ``[..., 2] = (col, row)`` with +x up and +y left."""
    cell = grid.xy_to_cell(np.asarray(xy, dtype=np.float64))  # (ix, iy) continuous, centres on integers
    return np.stack([grid.H - 1 - cell[..., 1], grid.W - 1 - cell[..., 0]], -1)  # col from y (flipped), row from x


def render_masks(masks: np.ndarray, classes: tuple[str, ...] | list[str], threshold: float = 0.5) -> np.ndarray:
    """``masks [C, H, W]`` (probabilities or {0, 1}) on a BEVGrid -> RGB ``[W, H, 3]`` image, x up / y left.

    Classes are painted in order, so later classes (dividers, vehicles) stay visible over area classes.
    """
    C, H, W = masks.shape
    img = np.full((H, W, 3), 255, dtype=np.uint8)
    for c, name in enumerate(classes):
        on = masks[c] >= threshold
        img[on] = MAP_COLOURS.get(name, (160, 160, 160))
    # array rows are y, columns x; the image wants rows = -x, columns = -y
    return np.ascontiguousarray(img.transpose(1, 0, 2)[::-1, ::-1])


def draw_boxes(img: np.ndarray, grid: BEVGrid, boxes: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
               thickness: int = 1, scores: np.ndarray | None = None, min_score: float = 0.0) -> np.ndarray:
    """Draw oriented BEV footprints of ``boxes [n, >=7]`` (heading edge marked) onto ``img`` in place."""
    import cv2

    if len(boxes) == 0:
        return img
    corners = _to_image(grid, box_bev_corners(np.asarray(boxes, dtype=np.float64)))  # [n, 4, 2]
    for i, poly in enumerate(corners):
        if scores is not None and scores[i] < min_score:
            continue
        colour = CLASS_COLOURS.get(class_names[int(labels[i])], (0, 0, 0))
        pts = np.round(poly).astype(np.int32)
        cv2.polylines(img, [pts], True, colour, thickness, lineType=cv2.LINE_AA)
        cv2.line(img, tuple(pts[1]), tuple(pts[2]), colour, thickness + 1, lineType=cv2.LINE_AA)  # front edge
    return img


def draw_points(img: np.ndarray, grid: BEVGrid, xy: np.ndarray, colour=RADAR_COLOUR, radius: int = 1) -> np.ndarray:
    """Draw points ``[n, >=2]`` (metres) as dots onto ``img`` in place."""
    import cv2

    for col, row in np.round(_to_image(grid, np.asarray(xy)[:, :2])).astype(int):
        if 0 <= row < img.shape[0] and 0 <= col < img.shape[1]:
            cv2.circle(img, (int(col), int(row)), radius, colour, -1, lineType=cv2.LINE_AA)
    return img


def render_bev(masks: np.ndarray | None, mask_classes, grid: BEVGrid, boxes=None, labels=None, class_names=(),
               radar_xy=None, scores=None, min_score: float = 0.3, scale: int = 3) -> np.ndarray:
    """Masks + boxes + radar points on one BEV canvas, upscaled ``scale`` times for legibility."""
    import cv2

    if masks is None:
        masks = np.zeros((0, grid.H, grid.W))
    img = render_masks(masks, mask_classes) if len(masks) else np.full((grid.W, grid.H, 3), 255, np.uint8)
    big = BEVGrid(grid.xmin, grid.xmax, grid.ymin, grid.ymax, grid.res / scale)
    img = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    if radar_xy is not None and len(radar_xy):
        draw_points(img, big, radar_xy, radius=max(1, scale // 2))
    if boxes is not None and len(boxes):
        draw_boxes(img, big, boxes, labels, class_names, thickness=max(1, scale // 2), scores=scores,
                   min_score=min_score)
    # ego marker at the origin
    ego = np.round(_to_image(big, np.zeros((1, 2)))[0]).astype(int)
    cv2.drawMarker(img, (int(ego[0]), int(ego[1])), (0, 0, 0), cv2.MARKER_TRIANGLE_UP, 4 * scale, 1)
    return img
