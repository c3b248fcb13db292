"""CenterHead: perfect outputs decode back to the GT boxes; their loss is minimal; shapes and mmdet3d names."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.data.batch import DETECTION_CLASSES
from bevbridge.geometry import BEVGrid
from bevbridge.models.ctab.config import CenterHeadConfig
from bevbridge.models.heads.center_head import CenterHead

GRID = BEVGrid.square(12.8, 0.8)  # 32 x 32


def head(nms="scale", tasks=CenterHeadConfig().tasks, radii=(4.0,)):
    return CenterHead(16, tasks, DETECTION_CLASSES, GRID, nms=nms, circle_radii=radii,
                      post_center_range=(-20, -20, -10, 20, 20, 10))


def gt():
    boxes = torch.tensor([[3.3, -2.1, 0.8, 4.5, 1.9, 1.6, 0.4, 5.0, -1.0],
                          [-6.0, 5.2, 0.9, 0.7, 0.6, 1.8, -2.0, 0.5, 0.2],
                          [8.1, 8.3, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 0.0]])
    labels = torch.tensor([DETECTION_CLASSES.index(c) for c in ("car", "pedestrian", "traffic_cone")])
    return boxes, labels


def perfect_outputs(h: CenterHead, boxes, labels):
    """Head outputs that encode exactly the box targets, with a confident peak at each centre only."""
    outs = []
    for ti, coder in enumerate(h.coders):
        sel = h.task_of[labels] == ti
        t = coder.encode([boxes[sel]], [h.index_in[labels[sel]]])
        heat = torch.where(t.heatmap == 1, 10.0, -10.0)  # confident at the centres only
        maps = {k: torch.zeros(1, n, GRID.H, GRID.W) for k, n in (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2),
                                                                   ("vel", 2))}
        start = 0
        for k, n in (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2)):
            vals = t.anno_box[0, t.mask[0], start:start + n]  # [m, n]
            flat = maps[k].view(n, -1)
            flat[:, t.inds[0, t.mask[0]]] = vals.T
            start += n
        outs.append({**maps, "heatmap": heat})
    return outs


@pytest.mark.parametrize("nms", ["scale", "rotate", "circle"])
def test_perfect_outputs_decode_to_the_gt(nms):
    boxes, labels = gt()
    tasks = CenterHeadConfig().tasks if nms != "circle" else (("car", "truck"), ("pedestrian", "traffic_cone"))
    h = head(nms, tasks, radii=(4.0, 0.175) if nms == "circle" else (4.0,))
    pb, ps, pl = h.predict(perfect_outputs(h, boxes, labels))[0]
    assert len(pb) == 3 and torch.equal(pl.sort().values, labels.sort().values)
    for b, lab in zip(boxes, labels):
        j = int(torch.nonzero(pl == lab)[0])
        assert torch.allclose(pb[j, :6], b[:6], atol=1e-4)
        assert math.isclose(math.remainder(float(pb[j, 6] - b[6]), 2 * math.pi), 0.0, abs_tol=1e-4)
        assert torch.allclose(pb[j, 7:], b[7:], atol=1e-4)


def test_loss_prefers_perfect_outputs_and_counts_objects():
    boxes, labels = gt()
    h = head()
    good = h.loss(perfect_outputs(h, boxes, labels), [boxes], [labels])
    assert good["bbox"].item() < 1e-5
    bad = h.net(torch.randn(1, 16, GRID.H, GRID.W))
    worse = h.loss(bad, [boxes], [labels])
    assert worse["heatmap"] > good["heatmap"] and worse["bbox"] > good["bbox"]
    empty = h.loss(bad, [boxes[:0]], [labels[:0]])  # no objects: finite, bbox term 0
    assert torch.isfinite(empty["heatmap"]) and empty["bbox"].item() == 0.0


def test_mmdet3d_parameter_names_and_heatmap_prior():
    h = head()
    names = set(dict(h.net.named_parameters()))
    assert {"shared_conv.conv.weight", "shared_conv.bn.weight", "task_heads.0.reg.0.conv.weight",
            "task_heads.0.heatmap.1.bias", "task_heads.0.vel.1.weight"} <= names
    assert torch.count_nonzero(h.net.task_heads[0].reg[1].bias) == 0  # mmcv kaiming_init zeroes the biases
    assert torch.allclose(h.net.task_heads[0].heatmap[1].bias, torch.full((10,), -2.19))


def test_six_task_preset_config_builds_six_heads_and_decodes():
    from bevbridge.config import load_config

    cfg = load_config("configs/ctab/rcbevdet_r50_det_6task.yaml").model.head
    assert [len(t) for t in cfg.tasks] == [1, 2, 2, 1, 2, 2] and len(cfg.circle_radii) == 6
    h = head(cfg.nms, cfg.tasks, radii=cfg.circle_radii)
    assert len(h.coders) == 6 and len(h.net.task_heads) == 6
    boxes, labels = gt()
    pb, _, pl = h.predict(perfect_outputs(h, boxes, labels))[0]
    assert torch.equal(pl.sort().values, labels.sort().values)
    assert torch.allclose(pb[pl.argsort()][:, :3], boxes[labels.argsort()][:, :3], atol=1e-4)
