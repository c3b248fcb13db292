"""A random but well-formed Batch for any model's DataNeeds: for tests over every config and ``bevbridge summary``.

    batch = random_batch(model.data_needs(), batch_size=2, seed=0)

The camera rig is the synthetic world's (nuScenes' intrinsics and extrinsics scaled to the network input, so
``ida`` is the identity); images, points, boxes, masks and captions are random but consistent with the needs: boxes
lie inside ``box_range`` with sizes of their class, masks cover ``map_grid``, every sensor the model uses is present.
No data is read from disk, so building it is instant and needs no dataset.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bevbridge.data.batch import DETECTION_CLASSES, Batch, PastFrames, Sample, collate
from bevbridge.data.synth.rig import CAMERAS, make_rig
from bevbridge.geometry import make_transform, rotation_z

__all__ = ["random_batch", "random_sample"]

_CAPTION_WORDS = ("a", "white", "black", "red", "parked", "moving", "car", "truck", "pedestrian", "on", "the",
                  "left", "right", "ahead", "of", "ego", "slowly")


def _ego_motion(step: int, rng: np.random.Generator) -> torch.Tensor:
    """A past frame's ego -> key ego: about 4 m behind per 0.5 s keyframe, a small turn."""
    R = rotation_z(np.array(rng.normal(0, 0.05) * step))
    return torch.from_numpy(make_transform(R, np.array([-4.0 * step, rng.normal(0, 0.3), 0.0]))).float()


def random_sample(needs, seed: int = 0, index: int = 0, num_boxes: int = 6, num_points: int = 400) -> Sample:
    """One random :class:`Sample` holding what ``needs`` (a DataNeeds) asks for."""
    rng = np.random.default_rng([seed, index])
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    kw: dict = {}
    if needs.images:
        H, W = needs.image_size
        rig = make_rig((H, W))
        N = len(CAMERAS)
        K = torch.from_numpy(np.stack([c.K for c in rig.cameras])).float()
        s2e = torch.from_numpy(np.stack([c.sensor2ego for c in rig.cameras])).float()
        ida = torch.eye(3).expand(N, 3, 3).clone()
        kw.update(cam_names=tuple(c.channel for c in rig.cameras),
                  images=torch.randint(0, 256, (N, 3, H, W), dtype=torch.uint8, generator=g), K=K, sensor2ego=s2e,
                  ida=ida, cam_mask=torch.ones(N, dtype=torch.bool))
        T = needs.num_past_frames
        if T:
            kw["past"] = PastFrames(
                images=torch.randint(0, 256, (T, N, 3, H, W), dtype=torch.uint8, generator=g),
                K=K.expand(T, -1, -1, -1).clone(), sensor2ego=s2e.expand(T, -1, -1, -1).clone(),
                ida=ida.expand(T, -1, -1, -1).clone(),
                ego2key=torch.stack([_ego_motion(t + 1, rng) for t in range(T)]),
                valid=torch.ones(T, dtype=torch.bool),
                timestamps=torch.tensor([(index - t - 1) * 500_000 for t in range(T)], dtype=torch.int64))
    xmin, ymin, xmax, ymax = needs.box_range or (-50.0, -50.0, 50.0, 50.0)
    if needs.radar != "no":
        F = len(needs.radar_features)
        pts = torch.zeros(num_points, F)
        for j, name in enumerate(needs.radar_features):
            lo, hi = {"x": (xmin, xmax), "y": (ymin, ymax), "z": (-1.0, 2.0), "rcs": (-10.0, 30.0),
                      "dt": (-0.5, 0.0)}.get(name, (-5.0, 5.0))
            pts[:, j] = torch.rand(num_points, generator=g) * (hi - lo) + lo
        kw.update(radar=pts, radar_features=tuple(needs.radar_features))
    if needs.lidar != "no":
        n = num_points * 4
        r = torch.rand(n, generator=g) * 50 + 1
        a = torch.rand(n, generator=g) * 2 * math.pi
        kw["lidar"] = torch.stack([r * a.cos(), r * a.sin(), torch.rand(n, generator=g) * 3 - 1.8,
                                   torch.rand(n, generator=g) * 255, torch.zeros(n)], 1)
    labels = torch.randint(0, len(DETECTION_CLASSES), (num_boxes,), generator=g)
    sizes = torch.tensor([[4.6, 1.9, 1.7], [6.5, 2.5, 2.8], [6.0, 2.8, 3.2], [11.0, 2.9, 3.5], [12.0, 2.9, 3.9],
                          [0.5, 2.5, 1.0], [2.1, 0.8, 1.5], [1.7, 0.6, 1.3], [0.7, 0.7, 1.8], [0.4, 0.4, 1.0]])
    boxes = torch.zeros(num_boxes, 9)
    boxes[:, 0] = torch.rand(num_boxes, generator=g) * (xmax - xmin) * 0.8 + xmin * 0.8
    boxes[:, 1] = torch.rand(num_boxes, generator=g) * (ymax - ymin) * 0.8 + ymin * 0.8
    boxes[:, 2] = torch.rand(num_boxes, generator=g) - 0.5
    boxes[:, 3:6] = sizes[labels]
    boxes[:, 6] = (torch.rand(num_boxes, generator=g) * 2 - 1) * math.pi
    boxes[:, 7:9] = torch.randn(num_boxes, 2, generator=g)
    kw.update(gt_boxes=boxes, gt_labels=labels, gt_attrs=torch.zeros(num_boxes, dtype=torch.int64),
              gt_num_pts=torch.full((num_boxes, 2), 10, dtype=torch.int64),
              gt_instance_tokens=tuple(f"ann{index}_{i}" for i in range(num_boxes)))
    if needs.map_grid is not None:
        Hm, Wm = needs.map_grid.shape
        kw.update(gt_masks=(torch.rand(len(needs.map_classes), Hm, Wm, generator=g) > 0.7).to(torch.uint8),
                  mask_classes=tuple(needs.map_classes))
    if needs.captions:
        kw["captions"] = [" ".join(rng.choice(_CAPTION_WORDS, 8)) + "." for _ in range(num_boxes)]
    return Sample(token=f"random{seed}_{index}", scene_token="random-scene", location="singapore-onenorth",
                  timestamp=index * 500_000, ego2global=torch.eye(4, dtype=torch.float64), bda=torch.eye(4), **kw)


def random_batch(needs, batch_size: int = 1, seed: int = 0, **kwargs) -> Batch:
    """A collated batch of :func:`random_sample`s."""
    return collate([random_sample(needs, seed, i, **kwargs) for i in range(batch_size)])
