"""MTA's alignment (papers/mta.txt Eqs. 3-8) around TOD3Cap on a stand-in detector and a tiny random Llama:
the pooling and losses against independent computations, the Eq. 8 total, and that BLA and DCA are training-only."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.data.random_batch import random_batch
from bevbridge.engine.checkpoint import CheckpointManager, load_model_state, model_weights
from bevbridge.losses.align import clip_loss, squared_l2
from bevbridge.models.tod3cap.model import TOD3CapModel
from bevbridge.recipes.mta.alignment import DCAHead, attention_pool
from bevbridge.recipes.mta.recipe import MTA
from bevbridge.weights import DEPLOY_FILE, read_weights
from tests.lm_tiny import tiny_lm_folder
from tests.tod3cap_standin import StandInDetector, small_mta_config, small_tod3cap_config


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return str(tiny_lm_folder(tmp_path_factory.mktemp("tiny_lm") / "lm", init_std=0.2))


def _mta(lm_folder, seed=0, **kw) -> MTA:
    torch.manual_seed(seed)
    return MTA(small_mta_config(lm_folder, **kw), detector=StandInDetector())


# ------------------------------------------------------------------------------------------ pooling and losses
def test_dca_pooling_equals_softmax_of_x_p_transposed_times_p():
    """Would catch: the softmax over the feature axis instead of the prompts, or P and X swapped (Eqs. 5-6)."""
    g = torch.Generator().manual_seed(0)
    x, P = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
    ref = torch.zeros(5, 8, dtype=torch.float64)
    for n in range(5):  # Eq. 5 term by term
        w = torch.tensor([math.exp(float(x[n].double() @ P[i].double())) for i in range(3)], dtype=torch.float64)
        ref[n] = sum(w[i] / w.sum() * P[i].double() for i in range(3))
    torch.testing.assert_close(attention_pool(x, P).double(), ref, rtol=1e-5, atol=1e-6)


def test_dca_caption_side_pools_the_expected_token_embedding_over_caption_tokens():
    """Would catch: padding positions averaged in, a softmax over the time axis, or raw logits (not
    probabilities) mapped through the embedding matrix."""
    torch.manual_seed(0)
    dca = DCAHead(num_classes=10, lm_hidden=6, num_prompts=4, dim=8)
    logits, E = torch.randn(2, 5, 11), torch.randn(11, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = dca.caption(logits, mask, E)
    for n in range(2):
        t = int(mask[n].sum())
        expected = torch.stack([torch.softmax(logits[n, i].double(), -1) @ E.double() for i in range(t)]).mean(0)
        ref = attention_pool(dca.cap_proj(expected.float()[None]), dca.prompts)[0]
        torch.testing.assert_close(got[n], ref, rtol=1e-5, atol=1e-6)


def test_clip_loss_is_log_n_for_equal_embeddings_and_matches_a_float64_reference():
    """Would catch: a one-directional loss, a missing temperature, unnormalised embeddings, or the targets not
    on the diagonal."""
    e = torch.randn(1, 16).expand(7, 16)
    assert clip_loss(e, e, 0.07).item() == pytest.approx(math.log(7), rel=1e-6)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    an, bn = a.double() / a.double().norm(dim=1, keepdim=True), b.double() / b.double().norm(dim=1, keepdim=True)
    s = an @ bn.t() / 0.1
    ref = 0.5 * (-(s.diag() - s.logsumexp(1)).mean() - (s.diag() - s.logsumexp(0)).mean())
    assert clip_loss(a, b, 0.1).item() == pytest.approx(ref.item(), rel=1e-6)
    assert clip_loss(a[:1], b[:1], 0.1).item() == 0.0


def test_bla_squared_l2_sums_over_dimensions_and_averages_over_objects():
    """Would catch: a mean over all elements (Eq. 3 is a squared norm per object), or a sum over objects."""
    p, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert squared_l2(p, t).item() == pytest.approx((5.0 + 9.0) / 2)


# ----------------------------------------------------------------------------------------------- the recipe
def test_loss_dictionary_carries_the_eq8_terms_and_weights(lm_folder):
    """Would catch: an alignment term left out of the total, a weight applied to the wrong term, or the logged
    terms not being the ones summed."""
    model = _mta(lm_folder)
    model.cfg.bla_weight, model.cfg.dca_weight = 0.7, 0.3
    model.train()
    batch = random_batch(model.data_needs(), 2, seed=0)
    losses = model.loss(model(batch), batch)
    s = model.scalars()
    assert (s["eq8/alpha"], s["eq8/beta"], s["eq8/lambda1"], s["eq8/lambda2"]) == (10.0, 1.0, 0.7, 0.3)
    expected = (s["eq8/alpha"] * losses["loss_det"] + s["eq8/beta"] * losses["loss_lm"] +
                s["eq8/lambda1"] * losses["loss_bla"] + s["eq8/lambda2"] * losses["loss_dca"])
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(losses[k].item() > 0 for k in ("loss_det", "loss_lm", "loss_bla", "loss_dca"))
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_dca_gradient_reaches_the_detection_head(lm_folder):
    """Would catch: detection outputs detached before DCA (then DCA could not change detection, Table 4)."""
    model = _mta(lm_folder, bla=False)
    model.cfg.det_weight, model.cfg.caption_weight = 0.0, 0.0
    model.train()
    batch = random_batch(model.data_needs(), 2, seed=0)
    out = model(batch)
    model.loss(out, batch)["loss"].backward()
    det = model.captioner.detector
    assert det.cls.weight.grad.abs().sum() > 0 and det.reg.weight.grad.abs().sum() > 0


def test_bla_layer_selects_the_qformer_block(lm_folder):
    """Would catch: Table 5's layer setting ignored (BLA always on the last block)."""
    model = _mta(lm_folder, dca=False, layer=1)
    model.train()
    batch = random_batch(model.data_needs(), 1, seed=3)
    out = model(batch)
    hidden = out["cap"]["hidden"]
    torch.testing.assert_close(out["align"]["bla_pred"], model.bla.mlp(hidden[0]))


def test_bla_and_dca_are_training_only(lm_folder, tmp_path):
    """Would catch: the deployed model depending on the alignment heads (parameters, detections or greedy
    captions), the captioner starting from another initialisation than TOD3Cap's, or the deployable checkpoint
    keyed with the recipe's prefix (MTA Sec. 1: "no additional computational overhead during inference")."""
    mta, plain = _mta(lm_folder), _mta(lm_folder, bla=False, dca=False)
    torch.manual_seed(0)
    tod3cap = TOD3CapModel(small_tod3cap_config(lm_folder), detector=StandInDetector())
    ref = tod3cap.state_dict()
    for m in (mta, plain):
        assert m.captioner.state_dict().keys() == ref.keys()
        assert all(torch.equal(v, ref[k]) for k, v in m.captioner.state_dict().items())
    # train MTA a few steps (the alignment heads shape the captioner's weights), then deploy
    opt = torch.optim.AdamW([p for p in mta.parameters() if p.requires_grad], lr=1e-2)
    mta.train()
    batch = random_batch(mta.data_needs(), 2, seed=0)
    for _ in range(3):
        opt.zero_grad()
        mta.loss(mta(batch), batch)["loss"].backward()
        opt.step()
    d = CheckpointManager(tmp_path / "checkpoints").save(3, model_weights(mta), {"step": 3})
    state, source = read_weights(d, kind="tod3cap")
    assert source.endswith(DEPLOY_FILE)
    load_model_state(tod3cap, state, source)
    n_deployed = sum(p.numel() for p in tod3cap.parameters())
    assert n_deployed == sum(p.numel() for p in mta.captioner.parameters()) < sum(p.numel() for p in mta.parameters())

    def predictions(model):
        model.eval()
        getattr(model, "captioner", model).greedy = True
        with torch.no_grad():
            return model.predict(model(batch), batch)

    a = predictions(mta)
    with torch.no_grad():  # the alignment heads changed arbitrarily: nothing deployed may move
        for p in [*mta.bla.parameters(), *mta.dca.parameters()]:
            p.add_(torch.randn_like(p))
    b, c = predictions(mta), predictions(tod3cap)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.boxes, z.boxes)
        assert torch.equal(x.scores, z.scores) and torch.equal(x.labels, z.labels)
        assert torch.equal(x.caption_boxes, z.caption_boxes)
        assert x.captions == y.captions == z.captions


# --------------------------------------------------------------------------- starting from a trained BEVFormer
@pytest.mark.parametrize("name", ["tod3cap", "tod3cap_stage2_caption", "mta", "tod3cap_synth", "mta_synth"])
def test_init_prefix_map_puts_a_bevformer_checkpoint_on_every_detector_key(name):
    """Would catch: a config whose init_prefix_map sends BEVFormer-tiny's keys where the model has none (MTA's
    detector is ``captioner.detector.``, TOD3Cap's ``detector.``): load_pretrained is non-strict, so such a run
    would silently train from a random detector while the log only warned about unexpected keys."""
    from pathlib import Path

    from bevbridge.config import load_config
    from bevbridge.engine import build
    from bevbridge.models.bevformer.model import BEVFormerModel
    from bevbridge.weights import rename_prefixes

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "mta" / f"{name}.yaml")
    with torch.device("meta"):
        model = build.build_model(cfg, init=False)
        detector = BEVFormerModel(cfg.model.detector)
    file_keys = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
    renamed = rename_prefixes(file_keys, cfg.model.init_prefix_map)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert renamed.keys() <= own.keys(), sorted(renamed.keys() - own.keys())[:5]
    assert all(own[k] == s for k, s in renamed.items())
    sub = "captioner.detector." if cfg.model.kind == "mta" else "detector."
    assert {k for k in own if k.startswith(sub)} == set(renamed)  # every detector weight comes from the file
