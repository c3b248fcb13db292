"""The whole BEVFormer model: published parameter counts, history rebuilt per sample, the MTA interface."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bevbridge.config import load_config
from bevbridge.data.batch import collate
from bevbridge.data.random_batch import random_sample
from bevbridge.models.bevformer.model import BEVFormerModel

CFG = "configs/bevformer"


def build(name: str, *overrides: str, meta: bool = False) -> BEVFormerModel:
    cfg = load_config(f"{CFG}/{name}.yaml", list(overrides)).model
    if meta:
        with torch.device("meta"):
            return BEVFormerModel(cfg)
    torch.manual_seed(0)
    return BEVFormerModel(cfg)


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_bevformer_tiny_parameters_part_by_part():
    """The public bevformer_tiny config, counted by hand (../shared/notes/anchor-facts.md): 33,521,147 in total
    (MTA Table 1: 33.6M). Each part on its own, so a wrong FFN width, a missing LayerNorm, a TSA that reads only
    the query (not [B' ; Q]), 8 instead of 4 decoder points or shared refinement branches show where they are."""
    m = build("bevformer_tiny", meta=True)
    assert count(m.image_backbone) == 23_508_032  # ResNet-50 without its classifier
    assert count(m.image_neck) == 1_114_624  # FPN 2048 -> 256, one level
    assert [count(layer) for layer in m.encoder.layers] == [675_456] * 3
    assert count(m.encoder.layers[0].attentions[0]) == 230_080  # TSA
    assert count(m.encoder.layers[0].attentions[1]) == 180_928  # SCA
    assert [count(layer) for layer in m.decoder.layers] == [683_872] * 6
    assert [count(c) + count(r) for c, r in zip(m.head.cls_branches, m.head.reg_branches)] == [269_332] * 6
    assert count(m.encoder.queries.bev_embedding) == 640_000
    assert count(m.head.query_embedding) == 460_800
    assert count(m.encoder.can_bus_mlp) == 35_968
    assert count(m.encoder.queries.positional_encoding) == 12_800
    assert m.encoder.level_embeds.numel() + m.encoder.cams_embeds.numel() == 2_560
    assert count(m.head.reference_points) == 771
    assert count(m) == 33_521_147
    assert round(count(m) / 1e6, 1) == 33.5  # MTA rounds to 33.6M


def test_summary_of_bevformer_tiny_prints_the_published_count_part_by_part():
    """`bevbridge summary configs/bevformer/bevformer_tiny.yaml` (on meta): each top-level row is the sum of the parts
    counted above (encoder = 3 layers + BEV queries + positional encoding + CAN-bus MLP + level/camera embeddings;
    head = 6 branches + object queries + reference points), 33,521,147 in all, and the frozen share is the public
    config's: ResNet-50 stem + stage 1 (frozen_stages=1: 225,344) plus the BatchNorm affine parameters of stages
    2-4 (norm_cfg requires_grad=False: 50,176). Would catch: a summary that drops or double-counts a module, a
    frozen_stages off by one, BatchNorm weights left trainable (or the whole backbone frozen), the total printed
    wrongly."""
    from bevbridge.engine.summary import format_summary, summarize

    report = summarize(load_config(f"{CFG}/bevformer_tiny.yaml"), device="meta", flops=False)
    rows = report["parameters"]
    both = {k: v["trainable"] + v["frozen"] for k, v in rows.items()}
    assert both == {"image_backbone": 23_508_032, "image_neck": 1_114_624,
                    "encoder": 3 * 675_456 + 640_000 + 12_800 + 35_968 + 2_560,
                    "decoder": 6 * 683_872, "head": 6 * 269_332 + 460_800 + 771, "(total)": 33_521_147}
    assert rows["image_backbone"]["frozen"] == 225_344 + 50_176 == rows["(total)"]["frozen"]
    text = format_summary(report)
    assert "33,521,147" in text and "(33.52M)" in text


def small(*overrides: str) -> BEVFormerModel:
    """The synthetic-world tiny model, smaller still for unit tests."""
    return build("bevformer_tiny_synth", "model.image.backbone=resnet10t", "model.encoder.layers=1",
                 "model.encoder.embed_dims=32", "model.image.fpn_channels=32", "model.encoder.ffn_channels=64",
                 "model.decoder.ffn_channels=64", "model.grid.res=6.4", "model.decoder.layers=2",
                 "model.decoder.num_query=20", "model.image.input_size=[64,112]", *overrides)


def needs_of(model):
    return model.data_needs()


def test_history_is_rebuilt_per_sample_and_batches_do_not_mix():
    """A sample's outputs do not depend on what else is in the batch or what ran before (no state between
    samples; the released TSA's value[:bs] mixed samples for batch > 1), and its past frame changes them (the
    history is used). Eval mode, so dropout is off."""
    model = small().eval()
    needs = needs_of(model)
    s0, s1 = random_sample(needs, 0, 0), random_sample(needs, 0, 1)
    s1.past.valid[:] = False  # a scene's first frame: no history
    with torch.no_grad():
        both = model(collate([s0, s1]))["det"]["cls_scores"]
        alone0 = model(collate([s0]))["det"]["cls_scores"]
        alone1 = model(collate([s1]))["det"]["cls_scores"]
        again = model(collate([s1, s0]))["det"]["cls_scores"]
        s0_no_past = dataclasses.replace(s0, past=dataclasses.replace(s0.past, valid=torch.zeros_like(s0.past.valid)))
        without = model(collate([s0_no_past]))["det"]["cls_scores"]
    torch.testing.assert_close(both[:, 0], alone0[:, 0], rtol=0, atol=1e-4)
    torch.testing.assert_close(both[:, 1], alone1[:, 0], rtol=0, atol=1e-4)
    torch.testing.assert_close(again[:, 1], alone0[:, 0], rtol=0, atol=1e-4)
    assert (without - alone0).abs().max() > 1e-3


def _train_step(model, batch):
    """Forward + loss + backward; asserts a finite loss and a gradient for every trainable parameter."""
    out = model(batch)
    losses = model.loss(out, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    return out, losses


def test_training_step_reaches_every_parameter_and_exposes_what_mta_needs():
    """Forward + loss + backward on a random batch: a finite loss, a gradient for every trainable parameter; the
    outputs MTA builds on (BEV [B, C, H, W], object-query embeddings [L, B, Nq, C]) and ``match`` giving each GT box
    one distinct query, the same assignment the loss uses."""
    model = small().train()
    batch = collate([random_sample(needs_of(model), 0, i) for i in range(2)])
    out, losses = _train_step(model, batch)
    C = model.cfg.encoder.embed_dims
    assert out["bev"].shape == (2, C, 16, 16)
    assert out["det"]["query_feats"].shape == (2, 2, 20, C)
    matches = model.match(out, batch)
    for (qi, gi), boxes in zip(matches, batch.gt_boxes):
        assert sorted(gi.tolist()) == list(range(len(boxes))) and len(set(qi.tolist())) == len(boxes)
        assert qi.max() < 20
    assert [(q.tolist(), g.tolist()) for q, g in model.head.assign(out["det"], batch.gt_boxes, batch.gt_labels)] \
        == [(q.tolist(), g.tolist()) for q, g in matches]
    preds = model.eval().predict(model(batch), batch)
    assert len(preds) == 2 and preds[0].boxes.shape[1] == 9 and (preds[0].scores[:-1] >= preds[0].scores[1:]).all()


def test_missing_past_frames_fail_with_the_config_key():
    model = small()
    batch = collate([random_sample(dataclasses.replace(needs_of(model), num_past_frames=0), 0, 0)])
    with pytest.raises(ValueError, match="num_past_frames"):
        model(batch)


def small_v2(name: str, *overrides: str) -> BEVFormerModel:
    return build(name, "model.image.backbone=resnet10t", "model.encoder.layers=1", "model.encoder.embed_dims=32",
                 "model.image.fpn_channels=32", "model.encoder.ffn_channels=64", "model.decoder.ffn_channels=64",
                 "model.grid.res=6.4", "model.decoder.layers=2", "model.decoder.num_query=12",
                 "model.image.input_size=[64,112]", *overrides)


@pytest.mark.parametrize("name,overrides", [
    ("bevformer_v2_bev_bev_synth", ()),
    ("bevformer_v2_two_stage_synth", ("model.two_stage.num_proposals=8", "model.two_stage.pre_nms=40")),
    ("bevformer_v2_pers_bev_synth", ("model.temporal={mode: fusion, num_past_frames: 2, fusion_channels: 16, "
                                     "fusion_blocks: 2}", "model.perspective.class_agnostic=true")),
])
def test_v2_options_train_end_to_end(name, overrides):
    """Each v2 option in a training step: perspective head (+ its loss terms), two-stage proposal queries before the
    learned ones of every group, the v2 temporal encoder over past frames, the BEV & BEV control's second head; a
    finite loss, every trainable parameter reached, and predictions from the first group only."""
    model = small_v2(name, *overrides).train()
    batch = collate([random_sample(needs_of(model), 3, i, num_boxes=8) for i in range(2)])
    out, losses = _train_step(model, batch)
    cfg = model.cfg
    K = cfg.two_stage.num_proposals if cfg.two_stage else 0
    assert out["det"]["cls_scores"].shape[2] == cfg.decoder.groups * (K + 12)
    if cfg.perspective is not None:
        assert {"pers/cls", "pers/box3d", "pers/conf3d"} <= set(losses) and losses["pers/num_pos"] > 0
    if cfg.aux_bev_head:
        assert "aux/cls" in losses and "aux_det" in out
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out["det"]["cls_scores"].shape[2] == K + 12 and "aux_det" not in out
    assert len(model.predict(out, batch)) == 2


def test_two_stage_forward_runs_under_bf16_autocast():
    """The engine runs forward under autocast (engine/train_step.py): the proposal selection must not (it computes
    focal lengths with torch.linalg.det, which has no bfloat16 kernel: "lu_cpu" not implemented for 'BFloat16',
    seen in tests/test_configs.py on a CPU with native bf16). Would catch: the selection run in bf16 again, on any CPU
    (autocast is forced here, emulated or not)."""
    model = small_v2("bevformer_v2_two_stage_synth", "model.two_stage.num_proposals=8",
                     "model.two_stage.pre_nms=40").eval()
    batch = collate([random_sample(needs_of(model), 3, i, num_boxes=8) for i in range(2)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    ref = out["proposals"]["reference"]
    assert ref.dtype == torch.float32 and ref.shape == (2, 8, 3) and ((ref >= 0) & (ref <= 1)).all()
    assert torch.isfinite(out["proposals"]["boxes"]).all()
