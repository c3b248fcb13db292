"""BEVFormer v2 at paper scale (Table 2's ResNet-101 "perspective & BEV": 6 x 640 x 1600 images, FPN P3..P7,
200 x 200 BEV, 6 encoder layers over 4 levels, 900 queries, the perspective head on 5 levels) runs on the CPU."""

from __future__ import annotations

import pytest
import torch

from bevbridge.config import load_config
from bevbridge.data.batch import collate
from bevbridge.engine import build


@pytest.mark.slow
def test_v2_paper_scale_forward_pass_runs_on_this_cpu(synth_world):
    overrides = [f"data.dataroot={synth_world.dataroot}", f"data.version={synth_world.version}",
                 f"data.train_split={synth_world.train_split}", f"data.val_split={synth_world.val_split}"]
    cfg = load_config("configs/bevformer/bevformer_v2_r101_pers_bev.yaml", overrides)
    assert tuple(cfg.model.image.input_size) == (640, 1600) and cfg.model.grid.to_grid().shape == (200, 200)
    torch.manual_seed(0)
    model = build.build_model(cfg).eval()
    _, val = build.build_datasets(cfg.data, model.data_needs(), train=False)
    batch = collate([val[len(val) - 1]])
    assert batch.images.shape == (1, 6, 3, 640, 1600)
    with torch.no_grad():
        out = model(batch)
        preds = model.predict(out, batch)
    assert out["bev"].shape == (1, 256, 200, 200) and torch.isfinite(out["bev"]).all()
    assert out["det"]["cls_scores"].shape == (6, 1, 900, 10)  # inference: the first of the 11 groups
    strides = [8, 16, 32, 64, 128]
    assert out["pers"]["cls"].shape[:2] == (6, sum(-(-640 // s) * -(-1600 // s) for s in strides))
    assert preds[0].boxes.shape == (300, 9) and torch.isfinite(preds[0].boxes).all()
