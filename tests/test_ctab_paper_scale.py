"""CTAB at paper scale (ResNet-50, 6 x 256 x 704, 118 depth bins, 8 past frames, 128 x 128 BEV) runs on the CPU."""

from __future__ import annotations

import pytest
import torch

from bevbridge.config import load_config
from bevbridge.data.batch import collate
from bevbridge.engine import build


@pytest.mark.slow
def test_paper_scale_forward_pass_runs_on_this_cpu(synth_world):
    overrides = [f"data.dataroot={synth_world.dataroot}", f"data.version={synth_world.version}",
                 f"data.train_split={synth_world.train_split}", f"data.val_split={synth_world.val_split}"]
    cfg = load_config("configs/ctab/mtl_ctab.yaml", overrides)
    assert cfg.model.depth.num_past_frames == 8 and tuple(cfg.model.image.input_size) == (256, 704)
    torch.manual_seed(0)
    model = build.build_model(cfg).eval()
    _, val = build.build_datasets(cfg.data, model.data_needs(), train=False)
    batch = collate([val[len(val) - 1]])
    assert batch.images.shape == (1, 6, 3, 256, 704) and batch.past.images.shape[1] == 8
    with torch.no_grad():
        out = model(batch)
        preds = model.predict(out, batch)
    assert out["seg_logits"].shape == (1, 7, 200, 200)
    assert out["depth"].shape == (1, 6, 118, 16, 44)
    assert torch.isfinite(out["seg_logits"]).all() and preds[0].boxes.shape[1] == 9
