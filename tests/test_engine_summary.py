"""`bevbridge summary`: parameters and FLOPs per top-level module."""

from __future__ import annotations

import math

from bevbridge.config import load_config
from bevbridge.engine.summary import format_summary, summarize


def test_flops_per_top_level_module_add_up():
    """The GFLOPs column names each top-level module and its figures sum to the total (matrix multiplications and
    convolutions all happen inside modules here). Catches the per-module column left empty because the counter's
    module names changed (torch >= 2.x names them "<root class>.<module>", not "Global.<module>")."""
    cfg = load_config("configs/bridgeta/bevfusion_cam_seg_synth.yaml", ["data.dataroot=/nonexistent"])  # random input
    report = summarize(cfg, device="cpu")
    by_module = report["flops"]["by_module"]
    assert set(by_module) == {"image_backbone", "image_neck", "vtransform", "decoder", "head"}
    assert math.isclose(sum(by_module.values()), report["flops"]["gflops"], rel_tol=1e-6)
    line = next(li for li in format_summary(report).splitlines() if li.startswith("decoder"))
    assert f"{by_module['decoder']:9.3f}" in line
