"""The cases of ``bench_ops.py``: inputs at the papers' shapes and the implementations compared on them.

Each builder returns a list of ``Case``; ``setup(truth)`` builds float32 inputs (and, when ``truth``, the float64
reference output used for the error column). ``--quick`` shrinks every shape to a smoke test.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import shapely
import torch

from bevbridge.geometry import BEVGrid, make_transform, rotation_z
from bevbridge.ops.bev_pool import bev_pool, bev_pool_plan, bev_pool_reference
from bevbridge.ops.box_coder import CenterPointCoder
from bevbridge.ops.frustum import depth_bins, feature_pixels, frustum_points
from bevbridge.ops.iou3d import box_iou_bev
from bevbridge.ops import msda_gather
from bevbridge.ops.msda import choose_impl, ms_deform_attn, ms_deform_attn_reference
from bevbridge.ops.nms import circle_nms, nms_rotated, scale_nms
from bevbridge.ops.voxelize import voxelize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_ops_voxelize import loop_voxelize  # noqa: E402  (the slow, obvious reference of the tests)


@dataclass
class Case:
    op: str
    shape: str
    setup: Callable[..., dict]
    impls: dict[str, Callable[[dict], torch.Tensor]]
    reference: str
    backward: bool = True
    error: Callable[[dict, torch.Tensor, torch.Tensor], float] | None = None  # (state, out, reference's out)
    slow_reference: bool = False  # run the reference once (a Python loop), not --repeats times
    grad_error: Callable[[dict, Callable[[dict], torch.Tensor]], str] | None = None  # (state, impl) -> text


def _max_err(state: dict, out: torch.Tensor, ref_out: torch.Tensor) -> float:
    return (out.double() - state["truth"]).abs().max().item()


def _identical(state: dict, out: torch.Tensor, ref_out: torch.Tensor) -> float:
    return 0.0 if out.shape == ref_out.shape and torch.equal(out, ref_out) else float("inf")


# ---------------------------------------------------------------------------------------------------------- MSDA
def _msda_truth(state: dict) -> None:
    """The float64 reference output and gradients on exactly the float32 inputs (so the error is the arithmetic's,
    not the inputs' rounding), one batch element at a time to bound its memory."""
    value, ss, starts, loc, attn = state["args"]
    cot = state["cotangent"](None)
    outs, grads = [], [[], [], []]
    for b in range(value.shape[0]):
        leaves = [t[b:b + 1].detach().double().requires_grad_() for t in (value, loc, attn)]
        out = ms_deform_attn_reference(leaves[0], ss, starts, leaves[1], leaves[2])
        for acc, g in zip(grads, torch.autograd.grad(out, leaves, cot[b:b + 1].double())):
            acc.append(g)
        outs.append(out.detach())
    state["truth"] = torch.cat(outs)
    state["truth_grads"] = [torch.cat(g) for g in grads]


def _msda_grad_err(state: dict, impl: Callable[[dict], torch.Tensor]) -> str:
    """Relative L2 error of the value / location / attention-weight gradients vs float64. (Max-abs is meaningless for
    the location gradient: it jumps at cell borders, and float32 rounding moves a point across one now and then.)"""
    out = impl(state)
    grads = torch.autograd.grad(out, state["grad_leaves"], state["cotangent"](out))
    rel = [((g.double() - t).norm() / t.norm().clamp_min(1e-30)).item() for g, t in zip(grads, state["truth_grads"])]
    return " / ".join(f"{r:.1e}" for r in rel)


def _msda_setup(B, shapes, Nq, h, d, P, layout, truth=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    ss = torch.tensor(shapes)
    sizes = ss[:, 0] * ss[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    L = len(shapes)
    wh = ss.flip(-1).double().view(1, 1, 1, L, 1, 2)
    if layout == "grid":  # BEV queries on the value's own grid (CTAB, temporal self-attention) + mmcv-init offsets
        side = int(round(math.sqrt(Nq)))
        iy, ix = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        ref = torch.stack([(ix + 0.5) / side, (iy + 0.5) / side], -1).double().view(1, Nq, 1, 1, 1, 2)
        theta = torch.arange(h, dtype=torch.float64) * 2 * math.pi / h
        dirs = torch.stack([theta.cos(), theta.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values
        off = dirs.view(1, 1, h, 1, 1, 2) * torch.arange(1, P + 1, dtype=torch.float64).view(1, 1, 1, 1, P, 1)
        off = off + torch.randn(B, Nq, h, L, P, 2, generator=g, dtype=torch.float64)
    else:  # camera / object queries (cross-attention): reference points anywhere in the map
        ref = torch.rand(B, Nq, 1, 1, 1, 2, generator=g, dtype=torch.float64)
        off = torch.randn(B, Nq, h, L, P, 2, generator=g, dtype=torch.float64) * 2
    loc = ref + off / wh
    attn = torch.randn(B, Nq, h, L * P, generator=g, dtype=torch.float64).softmax(-1).view(B, Nq, h, L, P)
    value = torch.randn(B, int(sizes.sum()), h, d, generator=g, dtype=torch.float64)
    value32, loc32, attn32 = (t.float().requires_grad_() for t in (value, loc, attn))
    cot = torch.randn(B, Nq, h * d, generator=g)
    state = {"args": (value32, ss, starts, loc32, attn32), "grad_leaves": [value32, loc32, attn32],
             "cotangent": lambda out: cot}
    if truth:
        _msda_truth(state)
    return state


SCA_BASE = [(116, 200), (58, 100), (29, 50), (15, 25)]  # 928x1600 (900 padded to /32) at strides 8..64
SCA_V2 = [(80, 200), (40, 100), (20, 50), (10, 25)]  # 640x1600 at strides 8..64
SCA_SYNTH = [(18, 32), (9, 16), (5, 8), (3, 4)]  # 144x256 at strides 8..64


def msda_specs() -> list[tuple]:
    """name, MSDA batch, level shapes, Nq, heads, dim/head, points, query layout. "Bn" is the training batch; the
    MSDA batch is what the op sees (x2 for BEVFormer's [previous, current] BEV in TSA, x6 cameras in SCA)."""
    specs = []
    for b in (1, 2, 8):  # CTAB: CAMF (RCBEVDet, d=256) and the bridge (d=128) on the 128x128 BEV; train batch 8-16
        specs.append((f"CTAB CAMF B{b}: 1 lvl 128x128, h8 d32 P8, Nq 16384", b, [(128, 128)], 16384, 8, 32, 8, "grid"))
        specs.append((f"CTAB bridge B{b}: 1 lvl 128x128, h8 d16 P4, Nq 16384", b, [(128, 128)], 16384, 8, 16, 4,
                      "grid"))
    for b in (1, 2):  # configs/ctab/*_synth.yaml: 1.6 m cells (64x64), 4 heads, CAMF dim 128, bridge dim 64
        specs.append((f"CTAB synth CAMF B{b}: 1 lvl 64x64, h4 d32 P4, Nq 4096", b, [(64, 64)], 4096, 4, 32, 4, "grid"))
        specs.append((f"CTAB synth bridge B{b}: 1 lvl 64x64, h4 d16 P4, Nq 4096", b, [(64, 64)], 4096, 4, 16, 4,
                      "grid"))
    for b in (1, 2):  # BEVFormer-tiny: 50x50 BEV, 450x800 images, one level at stride 32
        specs += [
            (f"BEVFormer-tiny TSA B{b} (x2 BEVs): 1 lvl 50x50, h8 d32 P4, Nq 2500", 2 * b, [(50, 50)], 2500, 8, 32, 4,
             "grid"),
            (f"BEVFormer-tiny SCA B{b} (x6 cams): 1 lvl 15x25, h8 d32 P8, Nq 2500", 6 * b, [(15, 25)], 2500, 8, 32, 8,
             "camera"),
            (f"BEVFormer-tiny decoder B{b}: 1 lvl 50x50, h8 d32 P4, Nq 900", b, [(50, 50)], 900, 8, 32, 4, "camera"),
        ]
    specs += [  # BEVFormer base / v2: 200x200 BEV, 4 FPN levels; SCA sees ~9000 of the 40000 queries per camera
        ("BEVFormer TSA B1 (x2 BEVs): 1 lvl 200x200, h8 d32 P4, Nq 40000", 2, [(200, 200)], 40000, 8, 32, 4, "grid"),
        ("BEVFormer SCA B1 (x6 cams): 4 lvl 116x200..15x25, h8 d32 P8, Nq 9000", 6, SCA_BASE, 9000, 8, 32, 8, "camera"),
        ("BEVFormer v2 SCA B1 (x6 cams): 4 lvl 80x200..10x25, h8 d32 P8, Nq 9000", 6, SCA_V2, 9000, 8, 32, 8,
         "camera"),
        ("BEVFormer decoder B1: 1 lvl 200x200, h8 d32 P4, Nq 900", 1, [(200, 200)], 900, 8, 32, 4, "camera"),
        ("BEVFormer v2 decoder B1 (group DETR x11): 1 lvl 200x200, h8 d32 P4, Nq 9900", 1, [(200, 200)], 9900, 8, 32,
         4, "camera"),
    ]
    for b in (1, 2):  # synthetic-size BEVFormer: 25x25 BEV, 144x256 images
        specs += [
            (f"synth TSA B{b} (x2 BEVs): 1 lvl 25x25, h8 d32 P4, Nq 625", 2 * b, [(25, 25)], 625, 8, 32, 4, "grid"),
            (f"synth SCA B{b} (x6 cams): 1 lvl 5x8, h8 d32 P8, Nq 625", 6 * b, [(5, 8)], 625, 8, 32, 8, "camera"),
            (f"synth v2 SCA B{b} (x6 cams): 4 lvl 18x32..3x4, h8 d32 P8, Nq 625", 6 * b, SCA_SYNTH, 625, 8, 32, 8,
             "camera"),
            (f"synth decoder B{b}: 1 lvl 25x25, h8 d32 P4, Nq 900", b, [(25, 25)], 900, 8, 32, 4, "camera"),
        ]
    return specs


def _msda_reference_mmcv_grid(value, spatial_shapes, level_start_index, loc, attn):
    """``ms_deform_attn_reference`` exactly as mmcv writes it: the per-level grid ``[:, :, :, lvl].transpose(1, 2)
    .flatten(0, 1)`` is a strided view at batch 1 (a copy from batch 2 on), which grid_sample reads more slowly."""
    B, _, h, d = value.shape
    _, Nq, _, L, P, _ = loc.shape
    shapes = [(int(H), int(W)) for H, W in spatial_shapes.tolist()]
    grids, samples = 2 * loc - 1, []
    for lvl, v in enumerate(value.split([H * W for H, W in shapes], dim=1)):
        img = v.flatten(2).transpose(1, 2).reshape(B * h, d, *shapes[lvl])
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        samples.append(torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="zeros",
                                                       align_corners=False))
    weights = attn.transpose(1, 2).reshape(B * h, 1, Nq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(B, h * d, Nq).transpose(1, 2).contiguous()


DEFAULT_CHUNK_ELEMENTS = msda_gather.CHUNK_ELEMENTS


def _reset_chunks() -> None:
    msda_gather.CHUNK_ELEMENTS = DEFAULT_CHUNK_ELEMENTS


def _gather_with_chunks(state: dict, elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """The gather implementation with ``msda_gather.CHUNK_ELEMENTS = elements``. It stays set after the call, so the
    backward that the harness runs next uses it too; every gather variant sets its own before its forward."""
    msda_gather.CHUNK_ELEMENTS = elements
    return ms_deform_attn(*state["args"], impl="gather")


def msda_sweep_specs() -> list[tuple]:
    """Decoder-like cross-attention (1 level, queries anywhere) across the ratio of sampling points to value
    positions that ``choose_impl`` thresholds at 1/2: maps 50x50 to 200x200, 100 to 10000 queries, B=1, h8 d32 P4."""
    sizes = [(200, 900), (200, 2000), (200, 4000), (200, 10000), (100, 300), (100, 900), (100, 2500), (50, 100),
             (50, 300), (50, 900)]
    return [(f"sweep: 1 lvl {n}x{n}, h8 d32 P4, Nq {q} ({4 * q / n**2:.2f} points per position)", 1, [(n, n)], q, 8,
             32, 4, "camera") for n, q in sizes]


def msda_cases(quick: bool) -> list[Case]:
    """Per case: the reference, ``ms_deform_attn`` as users call it (``impl="auto"``, named after the formulation
    its rule picks there), and the gather formulation on its own where "auto" picks the reference."""
    specs = msda_sweep_specs() if os.environ.get("BEVBRIDGE_BENCH_MSDA_SWEEP") else msda_specs()
    if quick:
        specs = [("quick: 2 lvl 8x8+4x4, h2 d4 P2, Nq 16", 1, [(8, 8), (4, 4)], 16, 2, 4, 2, "grid")]
    extra = {}
    if os.environ.get("BEVBRIDGE_BENCH_COMPILE"):
        compiled_ref = torch.compile(ms_deform_attn_reference, dynamic=False)
        extra["reference+compile"] = lambda s: compiled_ref(*s["args"])
    if os.environ.get("BEVBRIDGE_BENCH_MMCV_GRID"):
        extra["reference, mmcv's grid strides"] = lambda s: _msda_reference_mmcv_grid(*s["args"])
    for log2 in filter(None, os.environ.get("BEVBRIDGE_BENCH_CHUNKS", "").split(",")):
        extra[f"gather, chunks of 2^{log2}"] = lambda s, n=1 << int(log2): _gather_with_chunks(s, n)
    cases = []
    for name, *a in specs:
        _, shapes, Nq, _, _, P, _ = a
        choice = choose_impl(shapes, Nq, len(shapes) * P)
        impls = {"reference": lambda s: ms_deform_attn_reference(*s["args"]),
                 f"auto -> {choice}": lambda s: (_reset_chunks(), ms_deform_attn(*s["args"]))[1]}
        if choice != "gather" or os.environ.get("BEVBRIDGE_BENCH_MSDA_SWEEP"):
            impls["gather"] = _gather_with_chunks
        cases.append(Case("msda", name, lambda truth=True, a=a: _msda_setup(*a, truth=truth), {**impls, **extra},
                          "reference", error=_max_err, grad_error=_msda_grad_err))
    return cases


# ------------------------------------------------------------------------------------------------------ bev_pool
def _nuscenes_like_rig(B: int, image_hw=(256, 704)):
    """6 cameras around the car (nuScenes yaws), 1266 px focal at 1600x900, resized by 0.44 and cropped to 256x704."""
    yaws = torch.tensor([0.0, -55.0, 55.0, 180.0, -110.0, 110.0], dtype=torch.float64) * math.pi / 180
    cam_to_ego = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    s2e = make_transform(rotation_z(yaws) @ cam_to_ego, torch.tensor([1.0, 0.0, 1.6], dtype=torch.float64).expand(6, 3))
    K = torch.tensor([[1266.0, 0, 800], [0, 1266.0, 450], [0, 0, 1]], dtype=torch.float64).expand(6, 3, 3)
    ida = torch.tensor([[0.44, 0, 0], [0, 0.44, -140.0], [0, 0, 1]], dtype=torch.float64).expand(6, 3, 3)
    return (t.expand(B, *t.shape).contiguous() for t in (K, s2e, ida))


def _bev_pool_setup(B, N, D, fH, fW, C, truth=True):
    g = torch.Generator().manual_seed(0)
    grid = BEVGrid.square(51.2, 0.8)
    K, s2e, ida = _nuscenes_like_rig(B)
    dmax = 1.0 + 0.5 * D
    pts = frustum_points(K[:, :N], s2e[:, :N], ida[:, :N], depth_bins(1.0, dmax, 0.5, torch.float64),
                         feature_pixels((fH, fW), (256, 704), dtype=torch.float64)).float()
    depth = torch.randn(B, N, D, fH, fW, generator=g).softmax(2)
    feat = torch.randn(B, N, fH, fW, C, generator=g)
    state = {"pts": pts, "grid": grid, "plan": bev_pool_plan(pts, grid)}
    if truth:
        state["truth"] = bev_pool_reference(depth.double(), feat.double(), pts, grid)
    depth.requires_grad_(), feat.requires_grad_()
    cot = torch.randn(B, C, *grid.shape, generator=g)
    state.update(depth=depth, feat=feat, grad_leaves=[depth, feat], cotangent=lambda out: cot)
    return state


def bev_pool_cases(quick: bool) -> list[Case]:
    specs = [("B1: 6 cams, 118 bins, 16x44, 80 ch -> 128x128", 1, 6, 118, 16, 44, 80),
             ("B4: 6 cams, 118 bins, 16x44, 80 ch -> 128x128", 4, 6, 118, 16, 44, 80)]
    if quick:
        specs = [("quick: 2 cams, 10 bins, 4x8, 8 ch", 1, 2, 10, 4, 8, 8)]
    impls = {
        "dense": lambda s: bev_pool_reference(s["depth"], s["feat"], s["pts"], s["grid"]),
        "bev_pool (plan given)": lambda s: bev_pool(s["depth"], s["feat"], s["plan"]),
        "bev_pool + plan": lambda s: bev_pool(s["depth"], s["feat"], bev_pool_plan(s["pts"], s["grid"])),
    }
    return [Case("bev_pool", name, lambda truth=True, a=a: _bev_pool_setup(*a, truth=truth), impls, "dense",
                 error=_max_err) for name, *a in specs]


# ------------------------------------------------------------------------------------------------------ voxelize
def _points_setup(B, M, F, extent, z_range=(-5.0, 3.0), seed=0, truth=True):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, M, F, generator=g)
    pts[..., :2] = (pts[..., :2] * 2 - 1) * extent * torch.rand(B, M, 1, generator=g).sqrt()  # denser near the car
    pts[..., 2] = z_range[0] - 0.5 + pts[..., 2] * (z_range[1] - z_range[0] + 1)
    mask = torch.rand(B, M, generator=g) < 0.95
    return {"points": pts, "mask": mask}


def voxelize_cases(quick: bool) -> list[Case]:
    radar = BEVGrid.square(51.2, 0.2)
    lidar = BEVGrid.square(51.2, 0.1)
    specs = [  # name, (B, M, F, extent), grid, z bins, max points, max voxels
        ("RCBEVDet radar: B8 x 6000 pts, 0.2 m pillars 512x512, max 10", (8, 6000, 7, 60.0), radar, 1, 10, None),
        ("BEVFusion LiDAR: B1 x 300k pts, 0.1x0.1x0.2 m voxels 1024x1024x40, max 10, 120k voxels",
         (1, 300_000, 5, 55.0), lidar, 40, 10, 120_000),
    ]
    if quick:
        specs = [("quick: B2 x 200 pts, 512x512 pillars", (2, 200, 7, 60.0), radar, 1, 10, None)]
    cases = []
    for name, (B, M, F, ext), grid, zb, mp, mv in specs:
        def run(s, grid=grid, zb=zb, mp=mp, mv=mv):
            return voxelize(s["points"], grid, (-5.0, 3.0), zb, mp, mv, s["mask"]).features

        def loop(s, grid=grid, zb=zb, mp=mp, mv=mv):
            return loop_voxelize(s["points"], s["mask"], grid, (-5.0, 3.0), zb, mp, mv)[0]

        cases.append(Case("voxelize", name, lambda truth=True, a=(B, M, F, ext): _points_setup(*a, truth=truth),
                          {"loop (reference)": loop, "voxelize": run}, "loop (reference)", backward=False,
                          error=_identical, slow_reference=True))
    return cases


# --------------------------------------------------------------------------------------------------------- boxes
def _detections(n: int, seed: int = 0, classes: int = 10) -> dict:
    """Detections the way a CenterPoint head emits them: clusters of near-duplicates around objects."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(max(n // 8, 1), 2, generator=g) * 2 - 1) * 50
    pick = torch.randint(0, centres.shape[0], (n,), generator=g)
    b = torch.zeros(n, 9)
    b[:, :2] = centres[pick] + torch.randn(n, 2, generator=g) * 0.4
    b[:, 3:6] = (torch.tensor([4.5, 1.9, 1.6]) * (0.6 + 0.8 * torch.rand(max(n // 8, 1), 1, generator=g)))[pick]
    b[:, 6] = (torch.rand(max(n // 8, 1), generator=g) * 2 * math.pi)[pick] + torch.randn(n, generator=g) * 0.1
    return {"boxes": b, "scores": torch.rand(n, generator=g), "labels": torch.randint(0, classes, (n,), generator=g)}


def _shapely_iou(s: dict) -> torch.Tensor:
    from bevbridge.geometry import box_bev_corners

    polys = shapely.polygons(box_bev_corners(s["boxes"].double()).numpy())
    inter = shapely.area(shapely.intersection(polys[:, None], polys[None, :]))
    area = shapely.area(polys)
    return torch.from_numpy(inter / (area[:, None] + area[None, :] - inter))


def _loop_greedy(s: dict) -> torch.Tensor:
    iou = box_iou_bev(s["boxes"], s["boxes"])
    keep: list[int] = []
    for i in torch.argsort(s["scores"], descending=True, stable=True).tolist():
        if not any(iou[k, i] > 0.2 for k in keep):
            keep.append(i)
    return torch.tensor(keep)


def boxes_cases(quick: bool) -> list[Case]:
    n_iou, n_nms = (40, 60) if quick else (500, 1000)
    coder = CenterPointCoder()

    def decode_setup(truth=True):
        g = torch.Generator().manual_seed(0)
        heat = torch.rand(1, 10, 128, 128, generator=g).pow(8)
        maps = [torch.randn(1, c, 128, 128, generator=g) * 0.1 for c in (2, 1, 3, 2, 2)]
        return {"heat": heat, "maps": maps}

    def decode_nms(s):
        boxes, scores, labels = coder.decode(s["heat"], *s["maps"])[0]
        return boxes[scale_nms(boxes, scores, labels, 0.2, pre_max=1000, post_max=500)]

    def encode_setup(truth=True):
        dets = [_detections(40, seed=i) for i in range(8)]
        return {"boxes": [d["boxes"] for d in dets], "labels": [d["labels"] for d in dets]}

    iou_err = lambda s, out, ref_out: (out.double() - ref_out).abs().max().item()  # noqa: E731
    return [
        Case("box_iou_bev", f"{n_iou} x {n_iou} detections", lambda truth=True: _detections(n_iou),
             {"shapely (vectorised)": _shapely_iou, "box_iou_bev": lambda s: box_iou_bev(s["boxes"], s["boxes"])},
             "shapely (vectorised)", backward=False, error=iou_err),
        Case("nms_rotated", f"{n_nms} detections, thr 0.2", lambda truth=True: _detections(n_nms),
             {"IoU + greedy loop": _loop_greedy, "nms_rotated": lambda s: nms_rotated(s["boxes"], s["scores"], 0.2)},
             "IoU + greedy loop", backward=False, error=_identical),
        Case("scale_nms", f"{n_nms} detections, RCBEVDet factors, thr 0.2", lambda truth=True: _detections(n_nms),
             {"scale_nms": lambda s: scale_nms(s["boxes"], s["scores"], s["labels"], 0.2)}, "scale_nms",
             backward=False),
        Case("circle_nms", f"{n_nms} detections, 4 m^2", lambda truth=True: _detections(n_nms),
             {"circle_nms": lambda s: circle_nms(s["boxes"][:, :2], s["scores"], 4.0)}, "circle_nms", backward=False),
        Case("centerpoint", "decode 10x128x128 top 500 + scale-NMS", decode_setup, {"decode + scale_nms": decode_nms},
             "decode + scale_nms", backward=False),
        Case("centerpoint", "encode B8 x 40 boxes -> 10x128x128", encode_setup,
             {"encode": lambda s: coder.encode(s["boxes"], s["labels"]).heatmap}, "encode", backward=False),
    ]


CASE_BUILDERS: dict[str, Callable[[bool], list[Case]]] = {
    "msda": msda_cases, "bev_pool": bev_pool_cases, "voxelize": voxelize_cases, "boxes": boxes_cases,
}
