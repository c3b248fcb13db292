"""TOD3Cap's caption branch on a stand-in detector (tests/tod3cap_standin.py) and a tiny random Llama: Q-Former
shapes and hooks, object selection, the frozen LM, training steps, prediction and checkpoints."""

from __future__ import annotations

import pytest
import torch

from bevbridge.data.random_batch import random_batch
from bevbridge.models.freeze import checkpoint_state_dict
from bevbridge.models.tod3cap.detector import decode_box_codes, matched_objects, top_objects
from bevbridge.models.tod3cap.model import TOD3CapModel
from bevbridge.models.tod3cap.qformer import BEVTokens, RelationQFormer
from tests.lm_tiny import tiny_lm_folder
from tests.tod3cap_standin import StandInDetector, small_tod3cap_config


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return str(tiny_lm_folder(tmp_path_factory.mktemp("tiny_lm") / "lm", init_std=0.2))


def _model(lm_folder, seed: int = 0, **kw) -> TOD3CapModel:
    torch.manual_seed(seed)
    return TOD3CapModel(small_tod3cap_config(lm_folder, **kw), detector=StandInDetector())


def test_bev_tokens_keep_every_fifth_cell_as_tod3caps_strided_conv3d():
    """Would catch: pooling instead of striding, H and W swapped in the token order, or a 3x3 kernel: TOD3Cap's
    Conv3d(k=1, s=5) on 50x50 keeps cells (5i, 5j) -> 100 tokens, row-major."""
    torch.manual_seed(0)
    tok = BEVTokens(8, 16, 5).eval()
    bev = torch.randn(2, 8, 50, 40)
    out = tok(bev)
    assert out.shape == (2, 100 * 40 // 50, 16)
    conv, bn = tok.down[0], tok.down[1]
    x = bev[:, :, ::5, ::5]  # [2, 8, 10, 8]
    ref = torch.relu(bn(torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)))
    ref = tok.norm(tok.proj(ref.flatten(2).transpose(1, 2)))
    torch.testing.assert_close(out, ref)


def test_qformer_layer_hook_equals_running_l_blocks_by_hand():
    """Would catch: BLA reading the state after the wrong block (off by one), another token than the object's, or
    the BEV tokens of another sample."""
    torch.manual_seed(0)
    qf = RelationQFormer(dim=16, depth=4, heads=2, mlp_ratio=2.0, query_len=3).eval()
    obj, bev, sample = torch.randn(5, 16), torch.randn(2, 6, 16), torch.tensor([1, 0, 1, 1, 0])
    out, hidden = qf(obj, bev, sample)
    assert out.shape == (5, 3, 16) and hidden.shape == (4, 5, 16)
    for layer in range(1, 5):
        x = torch.cat([obj[:, None], bev[sample]], 1)
        for block in qf.blocks[:layer]:
            x = block(x)
        torch.testing.assert_close(hidden[layer - 1], x[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out, x[:, :3], rtol=0, atol=0)


def test_object_selection_matched_subsets_and_top_k_like_tod3cap():
    """Would catch: repeated objects, a subset larger than asked, GT and query indices desynchronised, or top-k
    over queries (max class) instead of TOD3Cap's top-k over (query, class) pairs."""
    q, g = torch.arange(10), torch.arange(10).flip(0)
    objs = matched_objects([(q, g), (q[:2], g[:2])], per_sample=4, generator=torch.Generator().manual_seed(0))
    assert objs.sample.tolist().count(0) == 4 and objs.sample.tolist().count(1) == 2
    first = objs.query[objs.sample == 0]
    assert len(set(first.tolist())) == 4 and (objs.gt[objs.sample == 0] == 9 - first).all()
    cls = torch.randn(1, 2, 6, 3)  # [L, B, Nq, K]
    det = {"cls_scores": cls, "queries_per_group": 6}
    top = top_objects(det, 5)
    for b in range(2):
        scores, idx = cls[-1, b].sigmoid().flatten().topk(5)
        assert (top.query[top.sample == b] == idx // 3).all() and (top.label[top.sample == b] == idx % 3).all()
        torch.testing.assert_close(top.score[top.sample == b], scores)


def test_training_step_trains_the_caption_branch_and_never_the_lm(lm_folder):
    """Would catch: LM weights updated (or given gradients, costing memory), adapter or Q-Former parameters not
    reached by the caption loss, or the LM's weights written into checkpoints."""
    model = _model(lm_folder)
    lm = model.caption_head.language.lm
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    batch = random_batch(model.data_needs(), 2, seed=0)
    gates0 = model.caption_head.language.adapter.gates.detach().clone()
    for step in range(3):
        opt.zero_grad()
        losses = model.loss(model(batch), batch)
        losses["loss"].backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
            assert all(p.grad is None for p in lm.parameters())
        opt.step()
    assert set(losses) >= {"loss", "loss_det", "loss_lm"} and losses["num_captioned"] == 6
    after = lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(gates0, model.caption_head.language.adapter.gates.detach())  # the gates opened
    keys = checkpoint_state_dict(model)
    assert not any(k.startswith("caption_head.language.lm.") for k in keys)
    assert "caption_head.language.adapter.prompts" in keys and "caption_head.qformer.blocks.0.attn.qkv.weight" in keys
    assert losses["loss"].item() == pytest.approx(10.0 * losses["loss_det"].item() + losses["loss_lm"].item(),
                                                  rel=1e-5)


def test_caption_loss_decreases_when_fitting_one_batch(lm_folder):
    """Would catch: a caption branch that cannot learn (gradients cut between the Q-Former and the adapter)."""
    model = _model(lm_folder, det_weight=0.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    batch = random_batch(model.data_needs(), 2, seed=1)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(model(batch), batch)
        loss["loss"].backward()
        opt.step()
        first = first if first is not None else loss["loss_lm"].item()
    assert loss["loss_lm"].item() < 0.7 * first
    assert "loss_det" not in loss  # det_weight 0: the captioning stage computes no detection loss


def test_predict_captions_the_top_k_boxes_reproducibly(lm_folder):
    """Would catch: captions not paired with their boxes, detections altered by the caption branch, or sampling
    that differs between two evaluations of the same batch."""
    model = _model(lm_folder).eval()
    batch = random_batch(model.data_needs(), 2, seed=0)
    with torch.no_grad():
        out = model(batch)
        preds = model.predict(out, batch)
        again = model.predict(out, batch)
        plain = model.detector.predict(out, batch)
    for p, q, d in zip(preds, again, plain):
        assert len(p.captions) == len(p.caption_boxes) == 4 and p.captions == q.captions
        assert torch.equal(p.boxes, d.boxes) and torch.equal(p.scores, d.scores)
    top = top_objects(out["det"], 4)
    boxes = decode_box_codes(out["det"]["box_codes"][-1][top.sample, top.query])
    torch.testing.assert_close(preds[1].caption_boxes, boxes[4:])
    model.greedy = True
    with torch.no_grad():
        g1, g2 = model.predict(out, batch), model.predict(out, batch)
    assert [p.captions for p in g1] == [p.captions for p in g2]


def test_lora_variant_trains_and_predicts(lm_folder):
    """Would catch: the LoRA path losing the visual query (no prefix tokens) or its factors not trained."""
    model = _model(lm_folder, adapter="lora")
    model.train()
    batch = random_batch(model.data_needs(), 1, seed=2)
    model.loss(model(batch), batch)["loss"].backward()
    lora = model.caption_head.language.adapter
    assert all(p.grad is not None for p in lora.lora_B.values())
    assert model.caption_head.object_token.query.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert len(model.predict(model(batch), batch)[0].captions) == 4
