"""MTA end to end on the small synthetic world with the real SmolLM2 and BEVFormer-tiny-synth: train a few steps,
evaluate the deployed TOD3Cap (detection + captioning metrics) and infer captions. Slow (minutes on a busy CPU)."""

from __future__ import annotations

import json

import pytest

from bevbridge import cli

pytestmark = pytest.mark.slow

SMALL = ["model.caption.topk=2", "model.caption.max_new_tokens=10", "model.caption.objects_per_sample=2",
         "data.num_workers=0", "data.batch_size=1"]


def test_mta_trains_and_its_deployed_tod3cap_evaluates_and_writes_captions(synth_world, tmp_path, capsys):
    """Would catch: the recipe's deployable weights not loading into the TOD3Cap config (eval of an MTA run), the
    captioning evaluator not receiving caption boxes, or infer not writing the captions."""
    data = [f"data.dataroot={synth_world.dataroot}", f"data.version={synth_world.version}",
            f"data.train_split={synth_world.train_split}", f"data.val_split={synth_world.val_split}",
            f"data.captions={synth_world.version}/final_caption_bbox_token.json"]
    run = tmp_path / "mta"
    assert cli.main(["train", "configs/mta/mta_synth.yaml", "--out", str(run), "--max-steps", "2",
                     "train.ckpt_every=2", "eval.evaluators=[]", "eval.best_metric=null", *data, *SMALL]) == 0
    assert (run / "checkpoints" / "step_00000002" / "deployable.safetensors").is_file()
    out = tmp_path / "eval"
    assert cli.main(["eval", "configs/mta/tod3cap_synth.yaml", "--ckpt", str(run), "--out", str(out),
                     *data, *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "detection/NDS" in metrics and "captioning/CIDEr@0.5" in metrics and "captioning/recall@0.25" in metrics
    assert metrics["captioning/num_gt"] > 0
    res = tmp_path / "infer" / "results_nusc.json"
    assert cli.main(["infer", "configs/mta/tod3cap_synth.yaml", "--ckpt", str(run), "--out", str(res),
                     *data, *SMALL]) == 0
    captions = json.loads(res.with_name("results_nusc_captions.json").read_text())["results"]
    assert len(captions) == 4 and all(len(v) == 2 and isinstance(v[0]["caption"], str) for v in captions.values())
