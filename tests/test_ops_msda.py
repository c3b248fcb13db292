"""Multi-scale deformable attention: every implementation against an obvious loop and against each other."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.ops.msda import IMPLEMENTATIONS, MSDeformAttn, ms_deform_attn, ms_deform_attn_reference


def make_inputs(B=2, shapes=((7, 9), (3, 4), (1, 2)), Nq=13, h=2, d=3, P=3, dtype=torch.float64, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ss = torch.tensor(shapes, dtype=torch.long)
    sizes = ss[:, 0] * ss[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    L = len(shapes)
    value = torch.randn(B, int(sizes.sum()), h, d, generator=g, dtype=dtype)
    # Uniform over [-spread, 1 + spread]: inside the maps, across their borders and beyond them.
    loc = torch.rand(B, Nq, h, L, P, 2, generator=g, dtype=dtype) * (1 + 2 * spread) - spread
    attn = torch.rand(B, Nq, h, L, P, generator=g, dtype=dtype)
    return value, ss, starts, loc, attn


def loop_msda(value, shapes, starts, loc, attn):
    """The definition, one scalar at a time: bilinear with pixel centres at (i + 0.5) / size, zeros outside."""
    B, _, h, d = value.shape
    _, Nq, _, L, P, _ = loc.shape
    out = torch.zeros(B, Nq, h, d, dtype=value.dtype)
    for b in range(B):
        for q in range(Nq):
            for m in range(h):
                for lvl in range(L):
                    H, W = (int(v) for v in shapes[lvl])
                    for p in range(P):
                        x = float(loc[b, q, m, lvl, p, 0]) * W - 0.5
                        y = float(loc[b, q, m, lvl, p, 1]) * H - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= xi < W and 0 <= yi < H:
                                    row = int(starts[lvl]) + yi * W + xi
                                    out[b, q, m] += attn[b, q, m, lvl, p] * wy * wx * value[b, row, m]
    return out.reshape(B, Nq, h * d)


def test_reference_matches_the_definition():
    args = make_inputs(B=1, Nq=5, P=2)
    torch.testing.assert_close(ms_deform_attn_reference(*args), loop_msda(*args), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_every_impl_matches_the_definition(impl):
    args = make_inputs(B=1, Nq=5, P=2, seed=3)
    torch.testing.assert_close(ms_deform_attn(*args, impl=impl), loop_msda(*args), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["gather"])
def test_values_and_gradients_match_the_reference_float64(impl):
    value, ss, starts, loc, attn = make_inputs(seed=1)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    ref = ms_deform_attn_reference(value, ss, starts, loc, attn)
    out = ms_deform_attn(value, ss, starts, loc, attn, impl=impl)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    cot = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, leaves, cot)
    g_out = torch.autograd.grad(out, leaves, cot)
    for name, a, b in zip(("value", "locations", "weights"), g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck(impl):
    value, ss, starts, loc, attn = make_inputs(B=1, shapes=((4, 5), (2, 3)), Nq=4, h=2, d=2, P=2, seed=2)
    fn = lambda v, l, a: ms_deform_attn(v, ss, starts, l, a, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (value.requires_grad_(), loc.requires_grad_(), attn.requires_grad_()))


@settings(max_examples=15, deadline=None)
@given(
    levels=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3),
    B=st.integers(1, 2), Nq=st.integers(1, 6), h=st.integers(1, 3), P=st.integers(1, 3), seed=st.integers(0, 10**6),
)
def test_property_gather_equals_reference(levels, B, Nq, h, P, seed):
    args = make_inputs(B=B, shapes=tuple(levels), Nq=Nq, h=h, d=2, P=P, seed=seed, spread=2.0)
    ref = ms_deform_attn_reference(*args)
    torch.testing.assert_close(ms_deform_attn(*args, impl="gather"), ref, rtol=0, atol=1e-12)


def test_float32_within_1e5_of_float64():
    args64 = make_inputs(B=1, shapes=((64, 64), (32, 32)), Nq=200, h=4, d=8, P=4, seed=4, spread=0.2)
    args64 = (*args64[:4], args64[4].flatten(-2).softmax(-1).view_as(args64[4]))  # weights as in use: softmax
    truth = ms_deform_attn_reference(*args64)
    args32 = [a.float() if a.is_floating_point() else a for a in args64]
    errs = {}
    for impl in IMPLEMENTATIONS:
        errs[impl] = (ms_deform_attn(*args32, impl=impl).double() - truth).abs().max().item()
    assert max(errs.values()) < 1e-5, errs


def test_points_far_outside_and_nan_contribute_nothing():
    value, ss, starts, loc, attn = make_inputs(B=1, Nq=3, seed=5)
    loc = loc.clone()
    loc[:, 0] = 50.0
    loc[:, 1] = -50.0
    loc[:, 2] = float("nan")
    out = ms_deform_attn(value, ss, starts, loc, attn, impl="gather")
    assert torch.equal(out, torch.zeros_like(out))


def test_half_precision_inputs_are_computed_in_float32():
    value, ss, starts, loc, attn = make_inputs(dtype=torch.float32, seed=6)
    out = ms_deform_attn(value.bfloat16(), ss, starts, loc.bfloat16(), attn.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = ms_deform_attn_reference(value, ss, starts, loc.bfloat16().float(), attn.bfloat16().float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_bad_shapes_are_named():
    value, ss, starts, loc, attn = make_inputs()
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value[:, :-1], ss, starts, loc, attn)
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, ss, starts + 1, loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, ss, starts, loc, attn[..., :1])
    with pytest.raises(ValueError, match="impl"):
        ms_deform_attn(value, ss, starts, loc, attn, impl="cuda")


# ------------------------------------------------------------------------------------------------------ the module
def test_ctab_block_has_the_standard_projections_and_parameter_count():
    m = MSDeformAttn(embed_dims=128, num_heads=8, num_levels=1, num_points=4)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "sampling_offsets.weight": (64, 128), "sampling_offsets.bias": (64,),
        "attention_weights.weight": (32, 128), "attention_weights.bias": (32,),
        "value_proj.weight": (128, 128), "value_proj.bias": (128,),
        "output_proj.weight": (128, 128), "output_proj.bias": (128,),
    }
    assert sum(p.numel() for p in m.parameters()) == 45_408


def test_mmcv_initialisation():
    m = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    bias = m.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 points along +x, head 1 along +y, head 2 along -x; point k sits k+1 cells out on every level.
    torch.testing.assert_close(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[1, 0, 2], torch.tensor([0.0, 3.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[2, 0, 0], torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)
    assert torch.count_nonzero(m.attention_weights.weight) == 0 and torch.count_nonzero(m.attention_weights.bias) == 0
    assert torch.count_nonzero(m.value_proj.bias) == 0 and m.value_proj.weight.std() > 0


def _module_inputs(B=2, C=16, H=6, W=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ss = torch.tensor([[H, W]])
    starts = torch.tensor([0])
    query = torch.randn(B, H * W, C, generator=g)
    value = torch.randn(B, H * W, C, generator=g)
    iy, ix = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ref = torch.stack([(ix + 0.5) / W, (iy + 0.5) / H], -1).reshape(1, H * W, 1, 2).expand(B, -1, -1, -1)
    return query, value, ref, ss, starts


def test_module_residual_options_and_impls_agree():
    torch.manual_seed(0)
    q, v, ref, ss, starts = _module_inputs()
    with_res = MSDeformAttn(16, 4, 1, 4, dropout=0.0, residual=True).eval()
    no_res = MSDeformAttn(16, 4, 1, 4, dropout=0.0, residual=False).eval()
    no_res.load_state_dict(with_res.state_dict())
    a = with_res(q, ref, ss, starts, value=v)
    b = no_res(q, ref, ss, starts, value=v)
    torch.testing.assert_close(a, b + q)
    ident = torch.randn_like(q)
    torch.testing.assert_close(no_res(q, ref, ss, starts, value=v, identity=ident), b + ident)
    no_res.impl = "reference"
    torch.testing.assert_close(no_res(q, ref, ss, starts, value=v), b, rtol=0, atol=1e-5)


def test_module_masked_values_are_ignored_and_dropout_applies_in_training():
    torch.manual_seed(1)
    q, v, ref, ss, starts = _module_inputs(B=1)
    m = MSDeformAttn(16, 4, 1, 4, dropout=0.0, residual=False).eval()
    mask = torch.ones(1, v.shape[1], dtype=torch.bool)
    out = m(q, ref, ss, starts, value=v, key_padding_mask=mask)
    torch.testing.assert_close(out, m.output_proj.bias.expand_as(out))  # every value masked: only the bias is left
    d = MSDeformAttn(16, 4, 1, 4, dropout=0.5, residual=False).train()
    assert (d(q, ref, ss, starts, value=v) == 0).float().mean() > 0.2


def test_module_backward_reaches_every_parameter():
    q, v, ref, ss, starts = _module_inputs()
    m = MSDeformAttn(16, 4, 1, 4, dropout=0.0)
    m(q, ref, ss, starts, value=v).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.sampling_offsets.weight.grad.abs().sum() > 0 and m.attention_weights.weight.grad.abs().sum() > 0


def test_module_rejects_bad_reference_points():
    q, v, ref, ss, starts = _module_inputs()
    m = MSDeformAttn(16, 4, 1, 4)
    with pytest.raises(ValueError, match="reference_points"):
        m(q, ref[:, :, :, :1], ss, starts)
