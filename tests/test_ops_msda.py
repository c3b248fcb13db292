"""Multi-scale deformable attention: every implementation against an obvious loop and against each other."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bevbridge.ops import msda, msda_gather
from bevbridge.ops.msda import IMPLEMENTATIONS, MSDeformAttn, choose_impl, ms_deform_attn, ms_deform_attn_reference


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


def _grads(fn, value, loc, attn, cot):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, cot)


# Every branch of the gather implementation: one chunk; chunks of 3 slices over B=2 x h=4, so chunks start and end
# inside a batch element's heads (slice -> (batch, head) bookkeeping); one slice per chunk.
CHUNKINGS = {"one chunk": None, "3 slices": 3, "1 slice": 1}


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_gather_values_and_gradients_match_the_reference_float64(chunking, monkeypatch):
    if CHUNKINGS[chunking] is not None:
        monkeypatch.setattr(msda_gather, "chunk_size", lambda N, elements: CHUNKINGS[chunking])
    value, ss, starts, loc, attn = make_inputs(B=2, h=4, seed=1)
    cot = torch.randn(2, 13, 4 * 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref, g_ref = _grads(lambda v, l, a: ms_deform_attn_reference(v, ss, starts, l, a), value, loc, attn, cot)
    out, g_out = _grads(lambda v, l, a: ms_deform_attn(v, ss, starts, l, a, impl="gather"), value, loc, attn, cot)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for name, a, b in zip(("value", "locations", "weights"), g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("chunking", ["one chunk", "1 slice"])
def test_sampling_coordinate_ramps_returns_each_points_pixel_level_and_head(impl, chunking, monkeypatch):
    """Channels 0/1 hold each pixel's column/row, channel 2 the level number, channel 3 the head number: a single
    point with weight 1 must read back exactly its own pixel coordinates (x = loc_x * W - 0.5, y = loc_y * H - 0.5),
    level and head. Fails on x/y swapped, half-pixel shifts, levels mis-offset, or heads mixed up."""
    if CHUNKINGS[chunking] is not None:
        monkeypatch.setattr(msda_gather, "chunk_size", lambda N, elements: CHUNKINGS[chunking])
    shapes, B, h, Nq, P = ((5, 9), (3, 4), (6, 2)), 2, 3, 40, 2
    g = torch.Generator().manual_seed(7)
    blocks = []
    for lvl, (H, W) in enumerate(shapes):
        iy, ix = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
        ramp = torch.stack([ix, iy, torch.full_like(ix, lvl + 1.0)], -1).view(1, H * W, 1, 3).expand(B, -1, h, -1)
        head = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1).expand(B, H * W, h, 1)
        blocks.append(torch.cat([ramp, head], -1))
    value = torch.cat(blocks, 1)
    ss = torch.tensor(shapes)
    starts = torch.tensor([0, 45, 57])
    wh = ss.flip(-1).double().view(1, 1, 1, 3, 1, 2)
    pix = torch.rand(B, Nq, h, 3, P, 2, generator=g, dtype=torch.float64) * (wh - 1)  # inside: [0, W-1] x [0, H-1]
    loc = (pix + 0.5) / wh
    pick = torch.randint(0, 3 * P, (B, Nq, h), generator=g)  # which (level, point) of each query and head counts
    attn = torch.nn.functional.one_hot(pick, 3 * P).double().view(B, Nq, h, 3, P)
    out = ms_deform_attn(value, ss, starts, loc, attn, impl=impl).view(B, Nq, h, 4)
    want_pix = pix.view(B, Nq, h, 3 * P, 2).gather(3, pick[..., None, None].expand(-1, -1, -1, 1, 2))[..., 0, :]
    torch.testing.assert_close(out[..., :2], want_pix, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., 2], (pick // P + 1).double(), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., 3], torch.arange(h, dtype=torch.float64).expand(B, Nq, h), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_location_gradient_at_cell_borders_and_map_edges_is_the_right_derivative(impl):
    """Bilinear sampling has kinks at whole pixel coordinates; grid_sample (the definition) returns the derivative
    from the right there, and 0 beyond the zero border. Points on every kind of border (and two inside cells), one
    per head with different values per head, are compared with a one-sided finite difference."""
    H, W, h, d = 4, 8, 2, 3
    ss, starts = torch.tensor([[H, W]]), torch.tensor([0])
    g = torch.Generator().manual_seed(3)
    value = torch.randn(1, H * W, h, d, generator=g, dtype=torch.float64)
    xs = torch.tensor([-1.5, -1.0, -0.5, 0.0, 2.0, 3.25, W - 1.0, W - 0.5, W + 0.0, W + 0.5], dtype=torch.float64)
    ys = torch.tensor([-1.0, 0.0, 1.0, 1.5, H - 1.0, H + 0.0], dtype=torch.float64)
    pix = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 1, 1, 1, 2)
    pix = torch.cat([pix, pix.flip(1)], 2)  # [1, Nq, h, 1, 1, 2]: the two heads sample different points
    loc = (pix + 0.5) / torch.tensor([W, H], dtype=torch.float64)  # exact in binary
    attn = torch.full(loc.shape[:5], 0.75, dtype=torch.float64)
    cot = torch.randn(1, loc.shape[1], h * d, generator=g, dtype=torch.float64)

    def per_point(lo):  # each point's own term of <cot, out>: [1, Nq, h]
        return (ms_deform_attn(value, ss, starts, lo, attn, impl=impl) * cot).view(1, -1, h, d).sum(-1)

    lo = loc.clone().requires_grad_()
    (grad,) = torch.autograd.grad(per_point(lo).sum(), [lo])
    eps = 2.0**-30
    for axis in (0, 1):
        moved = loc.clone()
        moved[..., axis] += eps
        fd = (per_point(moved) - per_point(loc)) / eps
        torch.testing.assert_close(grad[..., 0, 0, axis], fd, rtol=1e-6, atol=1e-6, msg=lambda m: f"axis {axis}: {m}")
    assert grad.abs().sum() > 0


def test_auto_rule_on_the_config_shapes_and_at_its_threshold():
    """Fewer than one sampling point per two value positions (per batch x head slice) -> "reference"."""
    assert choose_impl([(200, 200)], 900, 4) == "reference"  # BEVFormer decoder on the 200x200 BEV: 0.09
    assert choose_impl([(200, 200)], 9900, 4) == "gather"  # v2 with group DETR x11: 0.99
    assert choose_impl([(50, 50)], 900, 4) == "gather"  # BEVFormer-tiny decoder: 1.44
    assert choose_impl([(128, 128)], 16384, 4) == "gather"  # CTAB
    assert choose_impl([(116, 200), (58, 100), (29, 50), (15, 25)], 9000, 32) == "gather"  # BEVFormer SCA
    assert choose_impl([(10, 10)], 25, 2) == "gather" and choose_impl([(10, 10)], 24, 2) == "reference"


@pytest.mark.parametrize("case", ["few points on big maps", "many points on small maps"])
def test_auto_dispatches_by_the_rule_and_matches_the_reference_float64(case, monkeypatch):
    calls = []
    real = msda.gather_msda
    monkeypatch.setattr(msda, "gather_msda", lambda *a: calls.append("gather") or real(*a))
    shapes, Nq = (((20, 30), (10, 15)), 5) if case.startswith("few") else (((7, 9), (3, 4)), 40)
    value, ss, starts, loc, attn = make_inputs(B=2, shapes=shapes, Nq=Nq, h=2, d=3, P=2, seed=11)
    cot = torch.randn(2, Nq, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref, g_ref = _grads(lambda v, l, a: ms_deform_attn_reference(v, ss, starts, l, a), value, loc, attn, cot)
    out, g_out = _grads(lambda v, l, a: ms_deform_attn(v, ss, starts, l, a), value, loc, attn, cot)
    assert calls == ([] if case.startswith("few") else ["gather"])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


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


@pytest.mark.parametrize("impl", [*IMPLEMENTATIONS, "gather, 3-slice chunks"])
def test_float32_outputs_and_gradients_within_1e5_of_float64(impl, monkeypatch):
    """The error bound, the same for every implementation: float32 output within 1e-5 of the float64 reference on
    the same inputs, and each gradient within 1e-5 of its largest float64 entry."""
    if impl.endswith("chunks"):
        monkeypatch.setattr(msda_gather, "chunk_size", lambda N, elements: 3)
        impl = "gather"
    value, ss, starts, loc, attn = make_inputs(B=2, shapes=((64, 64), (32, 32)), Nq=200, h=4, d=8, P=4, seed=4,
                                               spread=0.2)
    attn = attn.flatten(-2).softmax(-1).view_as(attn)  # weights as in use: softmax
    cot = torch.randn(2, 200, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth, g_truth = _grads(lambda v, l, a: ms_deform_attn_reference(v, ss, starts, l, a), value, loc, attn, cot)
    out, g_out = _grads(lambda v, l, a: ms_deform_attn(v, ss, starts, l, a, impl=impl),
                        value.float(), loc.float(), attn.float(), cot.float())
    assert (out.double() - truth).abs().max() < 1e-5
    for name, a, b in zip(("value", "locations", "weights"), g_out, g_truth):
        assert (a.double() - b).abs().max() < 1e-5 * b.abs().max(), name


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, False, True)])
def test_gather_computes_the_requested_gradients_only_and_right(needs):
    value, ss, starts, loc, attn = make_inputs(B=2, seed=8)
    cot = torch.randn(2, 13, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [t.clone().requires_grad_(n) for t, n in zip((value, loc, attn), needs)]
    wanted = [t for t in leaves if t.requires_grad]
    g_out = torch.autograd.grad(ms_deform_attn(leaves[0], ss, starts, leaves[1], leaves[2], impl="gather"), wanted,
                                cot)
    g_ref = torch.autograd.grad(ms_deform_attn_reference(leaves[0], ss, starts, leaves[1], leaves[2]), wanted, cot)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_gather_takes_strided_inputs_and_gradients():
    """The module hands the op views (value from a Linear, locations from a broadcast sum); a permuted output
    gradient arrives from a transposing consumer."""
    value, ss, starts, loc, attn = make_inputs(B=2, h=2, seed=9)
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-minor strides
    loc_t = loc.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    leaves = [t.requires_grad_() for t in (value_t, loc_t, attn)]
    out = ms_deform_attn(leaves[0], ss, starts, leaves[1], leaves[2], impl="gather")
    ref = ms_deform_attn_reference(value, ss, starts, loc, attn)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    cot = torch.randn(out.shape[2], out.shape[1], out.shape[0], dtype=torch.float64).permute(2, 1, 0)
    g_out = torch.autograd.grad(out, leaves, cot)
    leaves_ref = [t.detach().requires_grad_() for t in (value, loc, attn)]
    g_ref = torch.autograd.grad(ms_deform_attn_reference(leaves_ref[0], ss, starts, *leaves_ref[1:]), leaves_ref, cot)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_chunk_size_is_a_multiple_of_the_thread_count_within_bounds():
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            for N, elements in ((1, 10), (7, 10), (64, 1 << 18), (64, 1 << 16), (48, 1 << 22), (16, 0)):
                c = msda_gather.chunk_size(N, elements)
                assert 1 <= c <= N and (c % t == 0 or c == N), (t, N, elements, c)
                assert c < max(msda_gather.CHUNK_ELEMENTS // max(elements, 1), 1) + t, (t, N, elements, c)
    finally:
        torch.set_num_threads(threads)


def test_atlas_holds_each_level_inside_zero_borders_even_in_reused_memory():
    """The atlas is allocated uninitialised and only its borders are zeroed: memory just freed full of NaN must not
    leak into it (a forgotten border would add garbage to every point near a map edge)."""
    shapes, B, h, d = [(4, 6), (2, 3)], 2, 3, 5
    value = torch.randn(B, 30, h, d, dtype=torch.float64)
    Ha, Wa, row0 = msda_gather.atlas_layout(shapes)
    for _ in range(3):
        junk = torch.full((B, h, Ha, Wa, d), float("nan"), dtype=torch.float64)
        del junk  # the allocator hands this block straight back
        atlas = msda_gather._atlas(value, shapes)
        want = torch.zeros(B, h, Ha, Wa, d, dtype=torch.float64)
        for (H, W), r, v in zip(shapes, row0, value.split([24, 6], 1)):
            want[:, :, r + 1:r + 1 + H, 1:1 + W] = v.view(B, H, W, h, d).permute(0, 3, 1, 2, 4)
        assert torch.equal(atlas, want)


def test_atlas_offsets_switch_to_int64_before_int32_overflows():
    """Flattened-atlas row indices of N slices of 1000x1000 maps pass 2**31 from N = 2110 on."""
    off, Wa = msda_gather._offsets([(1000, 1000)], 2000, 2, torch.device("cpu"))
    assert off.dtype == torch.int32 and Wa == 1003
    off, _ = msda_gather._offsets([(1000, 1000)], 2200, 2, torch.device("cpu"))
    assert off.dtype == torch.int64 and off[-1, 0, 0].item() == 2199 * 1003 * 1003 + 1003 + 1
    off, _ = msda_gather._offsets([(4, 6), (2, 3)], 3, 2, torch.device("cpu"))  # 12 x 9 atlas; blocks at rows 0, 7
    assert off.tolist() == [[[10, 10, 73, 73]], [[118, 118, 181, 181]], [[226, 226, 289, 289]]]


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
