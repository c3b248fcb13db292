"""CenterPoint targets and decoding: Gaussian helpers against CenterNet's scalar code, encode/decode round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevbridge.geometry import BEVGrid
from bevbridge.ops.box_coder import CenterPointCoder
from bevbridge.ops.gaussian import draw_gaussians, gaussian_radius


def scalar_radius(h: float, w: float, o: float) -> float:
    """CenterNet's gaussian_radius, one box at a time."""
    r1 = ((h + w) + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + math.sqrt((2 * (h + w)) ** 2 - 16 * (1 - o) * w * h)) / 2
    b3, c3 = -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 16 * o * c3)) / 2
    return min(r1, r2, r3)


def scalar_draw(heatmap: np.ndarray, cx: int, cy: int, r: int) -> None:
    """CenterNet's draw_heatmap_gaussian with numpy slicing (k = 1)."""
    d = 2 * r + 1
    sigma = d / 6
    m, n = [(s - 1.0) / 2.0 for s in (d, d)]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    H, W = heatmap.shape
    left, right = min(cx, r), min(W - cx, r + 1)
    top, bottom = min(cy, r), min(H - cy, r + 1)
    hm = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    gg = g[r - top:r + bottom, r - left:r + right]
    np.maximum(hm, gg, out=hm)


def test_gaussian_radius_matches_scalar_formula():
    g = torch.Generator().manual_seed(0)
    h, w = torch.rand(50, generator=g, dtype=torch.float64) * 20 + 0.1, torch.rand(50, generator=g, dtype=torch.float64) * 20 + 0.1
    for o in (0.1, 0.7):
        ref = torch.tensor([scalar_radius(a, b, o) for a, b in zip(h.tolist(), w.tolist())], dtype=torch.float64)
        torch.testing.assert_close(gaussian_radius(h, w, o), ref)


def test_draw_gaussians_matches_centernet_including_clipping_and_overlap():
    hm = torch.zeros(2, 9, 11, dtype=torch.float64)
    centres = torch.tensor([[0, 0], [5, 4], [6, 4], [10, 8], [3, 7]])
    radii = torch.tensor([2, 3, 1, 2, 0])
    classes = torch.tensor([0, 0, 0, 1, 1])
    draw_gaussians(hm, centres, radii, classes)
    ref = np.zeros((2, 9, 11))
    for (cx, cy), r, c in zip(centres.tolist(), radii.tolist(), classes.tolist()):
        scalar_draw(ref[c], cx, cy, r)
    torch.testing.assert_close(hm, torch.from_numpy(ref))
    assert hm[0, 4, 5] == 1.0 and hm[1, 7, 3] == 1.0


def _scene(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(n, 9, dtype=torch.float64)
    b[:, :2] = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * 50
    b[:, 2] = torch.rand(n, generator=g, dtype=torch.float64) * 3 - 1
    b[:, 3:6] = 0.4 + torch.rand(n, 3, generator=g, dtype=torch.float64) * 6
    b[:, 6] = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi * 0.999
    b[:, 7:9] = torch.randn(n, 2, generator=g, dtype=torch.float64) * 5
    labels = torch.randint(0, 10, (n,), generator=g)
    return b, labels


def test_rcbevdet_defaults():
    c = CenterPointCoder()
    assert c.grid.shape == (128, 128) and c.grid.res == pytest.approx(0.8)
    assert (c.gaussian_overlap, c.min_radius, c.max_objs, c.max_num, c.score_threshold) == (0.1, 2, 500, 500, 0.1)


@pytest.mark.parametrize("z_origin", ["centre", "bottom"])
def test_encode_then_decode_recovers_the_boxes(z_origin):
    coder = CenterPointCoder(z_origin=z_origin)
    boxes, labels = _scene()
    boxes[0, :2] = torch.tensor([70.0, 0.0], dtype=torch.float64)  # outside the grid: no target
    t = coder.encode([boxes], [labels])
    assert t.heatmap.shape == (1, 10, 128, 128) and t.anno_box.shape == (1, 500, 10)
    assert not t.mask[0, 0] and t.mask[0, 1:30].all() and not t.mask[0, 30:].any()
    # the dense maps a perfect head would output: the targets written at their cells
    maps = torch.zeros(1, 10, 128 * 128, dtype=torch.float64)
    idx = t.inds[0][t.mask[0]]
    maps[0, :, idx] = t.anno_box[0][t.mask[0]].T
    maps = maps.view(1, 10, 128, 128)
    heat = t.heatmap.clone()
    heat[heat < 1] *= 0.05  # peaks stay 1, the rest of each Gaussian drops below the 0.1 score threshold
    out_boxes, scores, out_labels = coder.decode(heat, maps[:, 0:2], maps[:, 2:3], maps[:, 3:6], maps[:, 6:8],
                                                 maps[:, 8:10])[0]
    assert scores.numel() == 29 and (scores == 1).all()
    order = torch.argsort(out_boxes[:, 0])
    ref_order = torch.argsort(boxes[1:, 0])
    torch.testing.assert_close(out_boxes[order], boxes[1:][ref_order], rtol=0, atol=1e-9)
    assert torch.equal(out_labels[order], labels[1:][ref_order])


def test_heatmap_peak_and_radius():
    coder = CenterPointCoder()
    box = torch.tensor([[0.3, -0.5, 0.0, 4.5, 1.9, 1.6, 0.0, 0.0, 0.0]], dtype=torch.float64)
    t = coder.encode([box], [torch.tensor([0])])
    # x = 0.3 -> cell 64 (64 cells of 0.8 m span [-51.2, 0)), y = -0.5 -> cell 63
    assert t.inds[0, 0] == 63 * 128 + 64 and t.heatmap[0, 0, 63, 64] == 1.0
    torch.testing.assert_close(t.anno_box[0, 0, :2], torch.tensor([0.375, 0.375], dtype=torch.float64))
    r = max(2, int(scalar_radius(1.9 / 0.8, 4.5 / 0.8, 0.1)))
    row = t.heatmap[0, 0, 63]
    assert (row[64 - r:64 + r + 1] > 0).all() and row[64 - r - 1] == 0 and row[64 + r + 1] == 0


def test_decode_topk_and_filters():
    coder = CenterPointCoder(max_num=5, grid=BEVGrid.square(4.0, 0.8))
    g = torch.Generator().manual_seed(1)
    heat = torch.rand(2, 10, 10, 10, generator=g)
    zeros = lambda c: torch.zeros(2, c, 10, 10)  # noqa: E731
    outs = coder.decode(heat, zeros(2), zeros(1), zeros(3), zeros(2), zeros(2))
    for b, (boxes, scores, labels) in enumerate(outs):
        ref_scores, ref_idx = heat[b].flatten().topk(5)
        torch.testing.assert_close(scores, ref_scores)
        assert torch.equal(labels, ref_idx // 100)
    far = CenterPointCoder(max_num=5, grid=BEVGrid.square(4.0, 0.8), post_center_range=(-1, -1, -1, 1, 1, 1))
    boxes = far.decode(heat, zeros(2), zeros(1), zeros(3), zeros(2), zeros(2))[0][0]
    assert (boxes[:, :2].abs() <= 1).all()


def test_bad_inputs():
    coder = CenterPointCoder()
    boxes, labels = _scene(3)
    with pytest.raises(ValueError, match="labels"):
        coder.encode([boxes], [labels + 20])
    with pytest.raises(ValueError, match="grid"):
        coder.decode(torch.zeros(1, 10, 64, 64), *(torch.zeros(1, c, 64, 64) for c in (2, 1, 3, 2, 2)))
