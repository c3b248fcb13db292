"""Batch/collate: images stacked, points padded with masks, boxes as lists, missing sensors stay None."""

import pytest
import torch

from bevbridge.data.batch import PastFrames, Sample, collate


def sample(i, n_radar=None, n_box=2, past=False):
    N, H, W = 2, 8, 16
    return Sample(
        token=f"t{i}", scene_token="s", location="boston-seaport", timestamp=i,
        ego2global=torch.eye(4, dtype=torch.float64), bda=torch.eye(4),
        cam_names=("CAM_FRONT", "CAM_BACK"),
        images=torch.full((N, 3, H, W), i, dtype=torch.uint8), K=torch.eye(3).expand(N, 3, 3),
        sensor2ego=torch.eye(4).expand(N, 4, 4), ida=torch.eye(3).expand(N, 3, 3),
        cam_mask=torch.ones(N, dtype=torch.bool),
        past=PastFrames(images=torch.zeros(1, N, 3, H, W, dtype=torch.uint8), K=torch.eye(3).expand(1, N, 3, 3),
                        sensor2ego=torch.eye(4).expand(1, N, 4, 4), ida=torch.eye(3).expand(1, N, 3, 3),
                        ego2key=torch.eye(4)[None], valid=torch.ones(1, dtype=torch.bool)) if past else None,
        radar=None if n_radar is None else torch.arange(n_radar * 7, dtype=torch.float32).reshape(n_radar, 7) + 1,
        radar_features=("x", "y", "z", "vx_comp", "vy_comp", "rcs", "dt"),
        gt_boxes=torch.ones(n_box, 9), gt_labels=torch.zeros(n_box, dtype=torch.int64),
    )


def test_collate_pads_points_and_keeps_boxes_as_lists():
    b = collate([sample(0, n_radar=3, n_box=1, past=True), sample(1, n_radar=5, n_box=4, past=True)])
    assert len(b) == 2 and b.images.shape == (2, 2, 3, 8, 16) and b.images.dtype == torch.uint8
    assert b.radar.shape == (2, 5, 7) and b.radar_mask.sum(1).tolist() == [3, 5]
    assert (b.radar[0, 3:] == 0).all() and (b.radar[0, :3] > 0).all()
    assert [t.shape[0] for t in b.gt_boxes] == [1, 4]
    assert b.past.images.shape == (2, 1, 2, 3, 8, 16) and b.past.ego2key.shape == (2, 1, 4, 4)
    assert b.lidar is None and b.lidar_mask is None and b.gt_masks is None


def test_missing_sensor_stays_none_and_mixed_presence_is_refused():
    b = collate([sample(0), sample(1)])
    assert b.radar is None and b.radar_mask is None
    with pytest.raises(ValueError, match="'radar' is present in some samples"):
        collate([sample(0, n_radar=2), sample(1)])


def test_to_moves_every_tensor():
    b = collate([sample(0, n_radar=1, past=True)]).to("meta")
    assert b.images.device.type == "meta" and b.gt_boxes[0].device.type == "meta"
    assert b.past.images.device.type == "meta" and b.radar_mask.device.type == "meta"
