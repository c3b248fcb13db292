"""SegmentationMeter: BEVFusion's split-level IoU over thresholds, hand-checked and against a numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.eval.segmentation import DEFAULT_THRESHOLDS, MIOU_SUBSETS, SegmentationMeter

SEVEN = MIOU_SUBSETS["mIoU-7"]


def test_hand_computed_example():
    """Two samples, two classes; IoU is computed from counts summed over the split, not averaged per sample."""
    m = SegmentationMeter(["walkway", "stop_line"])
    # sample 1, walkway: probs 0.3 0.5 0.7 0.62, gt 1 1 0 1; stop_line never present, never predicted
    p1 = torch.tensor([[[[0.3, 0.5], [0.7, 0.62]], [[0.1, 0.1], [0.1, 0.1]]]])
    g1 = torch.tensor([[[[1, 1], [0, 1]], [[0, 0], [0, 0]]]], dtype=torch.uint8)
    # sample 2, walkway: probs 0.9 0.1 0.1 0.1, gt 1 0 0 0 (a perfect sample: IoU 1 on its own)
    p2 = torch.tensor([[[[0.9, 0.1], [0.1, 0.1]], [[0.1, 0.1], [0.1, 0.1]]]])
    g2 = torch.tensor([[[[1, 0], [0, 0]], [[0, 0], [0, 0]]]], dtype=torch.bool)
    m.update(p1, g1)
    m.update(p2, g2)
    # walkway per threshold (0.35 0.40 0.45 0.50 0.55 0.60 0.65):
    #   >= 0.35..0.50: predicted {0.5, 0.7, 0.62, 0.9}: tp 3 fp 1 fn 1 -> 3/5   (0.5 >= 0.5 counts)
    #   0.55, 0.60:    predicted {0.7, 0.62, 0.9}:      tp 2 fp 1 fn 2 -> 2/5
    #   0.65:          predicted {0.7, 0.9}:            tp 1 fp 1 fn 3 -> 1/5
    expected = [0.6, 0.6, 0.6, 0.6, 0.4, 0.4, 0.2]
    tp, fp, fn = m.counts
    assert tp[0].tolist() == [3, 3, 3, 3, 2, 2, 1]
    assert fp[0].tolist() == [1] * 7
    assert fn[0].tolist() == [1, 1, 1, 1, 2, 2, 3]
    assert m.counts.dtype == torch.int64
    r = m.compute()
    for t, e in zip(DEFAULT_THRESHOLDS, expected):
        assert r[f"IoU@{t:g}/walkway"] == pytest.approx(e)
    assert r["IoU@max/walkway"] == pytest.approx(0.6) and r["threshold@max/walkway"] == 0.35
    assert r["IoU@0.5/walkway"] == pytest.approx(0.6)
    # stop_line: no GT and no prediction anywhere -> undefined, and every mean over it is omitted with a reason
    assert math.isnan(r["IoU@max/stop_line"]) and math.isnan(r["IoU@0.5/stop_line"])
    assert "mIoU@max" not in r and "mIoU-7@max" not in r and "mIoU-4@0.5" not in r
    why = m.omitted()
    assert "stop_line" in why["mIoU@max"]
    assert "not evaluated" in why["mIoU-4@max"] and "vehicle" in why["mIoU-4@max"]
    table = m.format_table()
    assert "IoU@max" in table and "IoU@0.5" in table and "mIoU-7@max omitted" in table


def test_means_use_their_own_class_sets_and_never_mix_thresholds():
    rng = torch.Generator().manual_seed(0)
    names = list(SEVEN) + ["lane"]
    m = SegmentationMeter(names)
    probs = torch.rand(3, len(names), 16, 16, generator=rng)
    gt = torch.rand(3, len(names), 16, 16, generator=rng) < 0.3
    m.update(probs, gt)
    r = m.compute()
    for red in ("max", "0.5"):
        per = {c: r[f"IoU@{red}/{c}"] for c in names}
        assert r[f"mIoU@{red}"] == pytest.approx(np.mean([per[c] for c in names]))
        assert r[f"mIoU-7@{red}"] == pytest.approx(np.mean([per[c] for c in SEVEN]))
        assert r[f"mIoU-4@{red}"] == pytest.approx(np.mean([per[c] for c in MIOU_SUBSETS["mIoU-4"]]))
    for c in names:  # @max is the max over thresholds of the split-level IoU, so never below @0.5
        assert r[f"IoU@max/{c}"] >= r[f"IoU@0.5/{c}"]
        assert r[f"IoU@max/{c}"] == pytest.approx(max(r[f"IoU@{t:g}/{c}"] for t in DEFAULT_THRESHOLDS))
    assert m.omitted() == {}


def _reference_counts(probs: np.ndarray, gt: np.ndarray, thresholds) -> np.ndarray:
    """Obvious numpy reference: [3, C, T] tp, fp, fn over every cell of every sample (float32 comparisons)."""
    C = probs.shape[1]
    out = np.zeros((3, C, len(thresholds)), dtype=np.int64)
    for c in range(C):
        p, g = probs[:, c].ravel(), gt[:, c].ravel().astype(bool)
        for k, t in enumerate(thresholds):
            pred = p >= np.float32(t)
            out[:, c, k] = [(pred & g).sum(), (pred & ~g).sum(), (~pred & g).sum()]
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_batches=st.integers(1, 3), B=st.integers(1, 3), C=st.integers(1, 4),
       H=st.integers(1, 9), W=st.integers(1, 9), density=st.floats(0.0, 1.0))
def test_matches_numpy_reference(seed, n_batches, B, C, H, W, density):
    rng = np.random.default_rng(seed)
    m = SegmentationMeter([f"c{i}" for i in range(C)])
    all_p, all_g = [], []
    for _ in range(n_batches):
        p = rng.random((B, C, H, W), dtype=np.float32)
        p[rng.random(p.shape) < 0.1] = rng.choice(np.float32(DEFAULT_THRESHOLDS))  # values exactly on thresholds
        g = (rng.random((B, C, H, W)) < density).astype(np.uint8)
        m.update(torch.from_numpy(p), torch.from_numpy(g))
        all_p.append(p)
        all_g.append(g)
    ref = _reference_counts(np.concatenate(all_p), np.concatenate(all_g), DEFAULT_THRESHOLDS)
    np.testing.assert_array_equal(m.counts.numpy(), ref)
    tp, fp, fn = ref.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou_ref = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    np.testing.assert_allclose(m.ious().numpy(), iou_ref, equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), C=st.integers(1, 4), H=st.integers(1, 12), W=st.integers(1, 12))
def test_gt_against_itself_is_one_at_every_threshold(seed, C, H, W):
    rng = np.random.default_rng(seed)
    g = rng.random((2, C, H, W)) < 0.4
    g[0, :, 0, 0] = True  # every class present somewhere
    m = SegmentationMeter([f"c{i}" for i in range(C)])
    m.update(torch.from_numpy(g).float(), torch.from_numpy(g))
    np.testing.assert_array_equal(m.ious().numpy(), np.ones((C, len(DEFAULT_THRESHOLDS))))
    assert m.compute()["mIoU@0.5"] == 1.0


def test_merge_equals_one_pass_and_bad_inputs_fail_clearly():
    rng = torch.Generator().manual_seed(1)
    p = torch.rand(4, 2, 8, 8, generator=rng)
    g = torch.rand(4, 2, 8, 8, generator=rng) < 0.5
    whole, a, b = (SegmentationMeter(["x", "y"]) for _ in range(3))
    whole.update(p, g)
    a.update(p[:1], g[:1])
    b.update(p[1:], g[1:])
    assert torch.equal(a.merge(b).counts, whole.counts)
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        whole.update(p[:, :1], g[:, :1])
    with pytest.raises(ValueError, match="sigmoid"):
        whole.update(p * 3 - 1, g)
    with pytest.raises(ValueError, match="binary"):
        whole.update(p, g.float() * 2)
    with pytest.raises(ValueError, match="different classes"):
        whole.merge(SegmentationMeter(["x", "z"]))


def _reduce_worker(rank: int, world: int, store: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(rank)
    m = SegmentationMeter(["x", "y"])
    p, g = torch.rand(1, 2, 6, 6), torch.rand(1, 2, 6, 6) < 0.5
    m.update(p, g)
    local = m.counts.clone()
    m.all_reduce()
    queue.put((rank, local.tolist(), m.counts.tolist()))  # plain lists: the child exits right after
    dist.destroy_process_group()


def test_all_reduce_sums_counts_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "store"), queue), nprocs=2, join=True)
    got = dict((r, (local, total)) for r, local, total in (queue.get() for _ in range(2)))
    local0, local1 = torch.tensor(got[0][0]), torch.tensor(got[1][0])
    assert local0.sum() > 0 and not torch.equal(local0, local1)
    assert torch.equal(torch.tensor(got[0][1]), local0 + local1) and got[1][1] == got[0][1]
