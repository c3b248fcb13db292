"""BEVFusion map segmentation (BridgeTA's student and teacher): layer-by-layer counts against BEVFusion's public
configs, the 128 -> 200 grid transform, the loss, the pillar branch, and forward/backward on the synthetic world."""

from __future__ import annotations

import math

import pytest
import torch

from bevbridge.config import load_config
from bevbridge.data.batch import collate
from bevbridge.data.nuscenes import NuScenesDataset
from bevbridge.engine import build
from bevbridge.geometry import BEVGrid
from bevbridge.losses.focal import sigmoid_focal_loss_per_class
from bevbridge.models.bevfusion.decoder import BEVDecoder
from bevbridge.models.bevfusion.lidar_branch import LidarPillarBranch, PillarFeatureNet
from bevbridge.models.bevfusion.model import BEVFusionSeg
from bevbridge.models.bevfusion.seg_head import BEVSegHead
from bevbridge.models.image.backbone import ImageBackbone
from bevbridge.models.image.neck import GeneralizedLSSFPN
from bevbridge.ops.voxelize import voxelize

CFG = "configs/bridgeta"


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- hand counts from layer shapes (BEVFusion's modules: convs without bias before BN, BN = 2 params/channel) ----
def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def basic_block(cin: int, cout: int, stride: int) -> int:
    short = conv(cin, cout, 1) + bn(cout) if (stride != 1 or cin != cout) else 0
    return conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout) + short


def paper_model(name: str) -> BEVFusionSeg:
    with torch.device("meta"):
        return BEVFusionSeg(load_config(f"{CFG}/{name}.yaml").model)


def test_paper_scale_counts_follow_bevfusions_public_config():
    """Every module of BEVFusion-C against a count by hand from camera-bev256d2.yaml. Catches a 3x3 (BEVDet) instead
    of a 1x1+BN (mmdet) shortcut, an FPN that adds instead of concatenating, a head with biased convs, a wrong stage
    width or stride. The paper's Table 3 says 31.8M; BEVFusion's public config gives 49.1M (Swin-T alone is 27.5M),
    so 31.8M is not asserted (README, Table 3)."""
    m = paper_model("bevfusion_cam_seg")
    # GeneralizedResNet 80 -> [160, 320, 640] (2 blocks each, strides 2, 2, 1) + LSSFPN([640, 160] -> 256, x2)
    resnet = 0
    for cin, cout, s in ((80, 160, 2), (160, 320, 2), (320, 640, 1)):
        resnet += basic_block(cin, cout, s) + basic_block(cout, cout, 1)
    lssfpn = conv(800, 256, 1) + bn(256) + conv(256, 256, 3) + bn(256) + conv(256, 256, 3) + bn(256)
    assert n_params(m.decoder) == resnet + lssfpn == 18_600_384
    # GeneralizedLSSFPN([192, 384, 768] -> 256): level 1 reads 384 + 768, level 0 reads 192 + 256
    neck = conv(384 + 768, 256, 1) + bn(256) + conv(256, 256, 3) + bn(256) + \
        conv(192 + 256, 256, 1) + bn(256) + conv(256, 256, 3) + bn(256)
    assert n_params(m.image_neck) == neck
    # LSSTransform: depthnet 1x1 (bias) 256 -> 118 + 80; BEV downsample 3 x conv3x3 80 -> 80 + BN
    assert n_params(m.vtransform) == conv(256, 118 + 80, 1, bias=True) + 3 * (conv(80, 80, 3) + bn(80))
    # BEVSegmentationHead: 2 x (conv3x3 + BN) + conv1x1 (bias) -> 6 classes
    assert n_params(m.head) == 2 * (conv(256, 256, 3) + bn(256)) + conv(256, 6, 1, bias=True)
    # Swin-T without its classifier (28.29M - 769k head - final norm): timm's features_only model
    assert round(n_params(m.image_backbone) / 1e6, 2) == 27.52
    assert round(n_params(m) / 1e6, 1) == 49.1


def test_paper_scale_teacher_is_aligned_to_the_student():
    """BridgeTA's teacher: the student's camera branch and decoder, a LiDAR branch and a fuser whose output has the
    student's camera-BEV channels, so FLD/DLD/LLD compare equal shapes. Catches a fuser left at BEVFusion's 256."""
    s, t = paper_model("bevfusion_cam_seg"), paper_model("bevfusion_lc_seg")
    for name in ("image_backbone", "image_neck", "vtransform", "decoder", "head"):
        assert n_params(getattr(s, name)) == n_params(getattr(t, name)), name
    assert t.fuser[0].out_channels == s.cfg.camera.context_channels == 80
    assert t.cfg.decoder_in_channels() == s.cfg.decoder_in_channels()


def test_bevfusion_fusion_decoder_option():
    """BEVFusion's own fusion decoder (SECOND [128, 256] x 5 layers, strides 1/2 + SECONDFPN [256, 256]) gives 512
    channels at the input resolution; its count by hand (BN eps 1e-3 layers, convs without bias)."""
    d = BEVDecoder(256, type="second", channels=(128, 256), blocks=(5, 5), strides=(1, 2), out_channels=(256, 256),
                   upsample_strides=(1, 2))
    second = conv(256, 128, 3) + bn(128) + 5 * (conv(128, 128, 3) + bn(128)) + \
        conv(128, 256, 3) + bn(256) + 5 * (conv(256, 256, 3) + bn(256))
    fpn = conv(128, 256, 1) + bn(256) + 256 * 256 * 2 * 2 + bn(256)  # 1x1 conv (stride 1), 2x2 deconv (stride 2)
    assert n_params(d) == second + fpn
    with torch.no_grad():
        assert d(torch.randn(1, 256, 16, 16)).shape == (1, 512, 16, 16)


def test_decoder_keeps_the_input_grid():
    """LSSFPN resizes the last stage onto the first and upsamples by the first stage's stride: F_dec is on F's grid
    (the decoded level of BridgeTA's DLD). Catches an LSSFPN that reads the stages in the wrong order."""
    d = BEVDecoder(8, channels=(16, 32, 64), blocks=(1, 1, 1), strides=(2, 2, 1), out_channels=(24,))
    with torch.no_grad():
        assert d(torch.randn(2, 8, 32, 32)).shape == (2, 24, 32, 32)
    assert d.neck.fuse[0].in_channels == 64 + 16


def test_swin_t_features_are_channels_first_at_paper_input():
    """timm's Swin returns NHWC features; the ImageBackbone permutes them, so the FPN sees [B*N, C, H, W] with the
    published widths (192, 384, 768) at strides 8, 16, 32 for a 256x704 input."""
    cam = load_config(f"{CFG}/bevfusion_cam_seg.yaml").model.camera
    backbone = ImageBackbone(cam.backbone, cam.out_indices, **cam.timm_kwargs).eval()
    neck = GeneralizedLSSFPN(backbone.channels, cam.neck_channels).eval()
    x = torch.randint(0, 255, (1, 1, 3, 256, 704), dtype=torch.uint8)
    with torch.no_grad():
        feats = backbone(x)
        assert [tuple(f.shape) for f in feats] == [(1, 192, 32, 88), (1, 384, 16, 44), (1, 768, 8, 22)]
        assert tuple(neck(feats)[0].shape) == (1, 256, 32, 88)


def test_one_hot_cell_across_the_128_to_200_grid_transform():
    """BEVGridTransform as the head runs it: a one-hot feature cell at x = +20.4 m (forward), y = -9.2 m (right) on
    the 128x128 grid at 0.8 m, resampled onto the 200x200 target at 0.5 m, equals the bilinear weights computed here
    in float64 from metres alone (no BEVGrid). Catches x/y swapped, an axis flipped, half-cell shifts, the wrong
    align_corners, and extents confused (+-51.2 vs +-50)."""
    feat_grid, tgt_grid = BEVGrid.square(51.2, 0.8), BEVGrid.square(50.0, 0.5)
    head = BEVSegHead(1, ("c",), feat_grid, tgt_grid)
    head.classifier = torch.nn.Identity()
    iy, ix = 52, 89  # centre x = -51.2 + 89.5 * 0.8 = 20.4, y = -51.2 + 52.5 * 0.8 = -9.2
    x = torch.zeros(1, 1, 128, 128, dtype=torch.float64)
    x[0, 0, iy, ix] = 1.0
    out = head(x)[0, 0]
    xs = -50.0 + (torch.arange(200, dtype=torch.float64) + 0.5) * 0.5  # target centres (x along W, y along H)
    wx = (1 - (xs - 20.4).abs() / 0.8).clamp(min=0)
    wy = (1 - (xs - -9.2).abs() / 0.8).clamp(min=0)
    ref = wy[:, None] * wx[None, :]
    assert torch.allclose(out, ref, atol=1e-9)
    r, c = divmod(int(out.argmax()), 200)
    assert abs(xs[c] - 20.4) <= 0.25 and abs(xs[r] - -9.2) <= 0.25


def test_focal_loss_per_class_matches_bevfusion_formula():
    """BEVFusion's head: one focal term per class, -(1 - p_t)^2 log p_t averaged over that class's pixels (no alpha),
    the classes summed. Catches a mean over classes (6x too small) or an alpha weighting left on."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    gt = (torch.rand(2, 6, 5, 7, generator=g) > 0.6).double()
    p = logits.sigmoid()
    pt = torch.where(gt == 1, p, 1 - p)
    per_class = (-(1 - pt) ** 2 * pt.log()).mean(dim=(0, 2, 3))
    assert torch.allclose(sigmoid_focal_loss_per_class(logits, gt), per_class)
    head = BEVSegHead(4, tuple("abcdef"), BEVGrid.square(2.0, 1.0), BEVGrid.square(2.0, 1.0))
    terms = head.loss(logits, gt)
    assert torch.allclose(terms["seg"].double(), per_class.sum(), rtol=1e-5)  # the head computes in float32
    assert torch.allclose(terms["seg/c"].double(), per_class[2], rtol=1e-5)


def test_pillar_feature_net_against_a_loop_reference():
    """The PFN in eval mode against a per-pillar loop in float64; then the same points shuffled and padded into
    bigger pillars give the same features. Catches offsets taken from the wrong mean (padding counted), x/y centre
    offsets swapped, and padding slots entering the max."""
    g = torch.Generator().manual_seed(1)
    grid = BEVGrid.square(4.0, 1.0)
    pts = torch.cat([torch.rand(1, 60, 2, generator=g) * 8 - 4, torch.rand(1, 60, 1, generator=g) * 2 - 1,
                     torch.rand(1, 60, 1, generator=g) * 50], -1).double()
    pfn = PillarFeatureNet(4, 8).double().eval()
    with torch.no_grad():
        pfn.norm.running_mean.uniform_(-1, 1)
        pfn.norm.running_var.uniform_(0.5, 2)
        vox = voxelize(pts, grid, (-2.0, 2.0), 1, 32)
        got = pfn(vox, grid)
        W = pfn.linear.weight
        for v in range(vox.features.shape[0]):
            p = vox.features[v, : vox.num_points[v]]
            cx = -4.0 + (vox.coors[v, 3].item() + 0.5) * 1.0
            cy = -4.0 + (vox.coors[v, 2].item() + 0.5) * 1.0
            f = torch.cat([p, p[:, :3] - p[:, :3].mean(0), p[:, :1] - cx, p[:, 1:2] - cy], 1)
            h = (f @ W.T - pfn.norm.running_mean) / (pfn.norm.running_var + 1e-3).sqrt() * pfn.norm.weight + \
                pfn.norm.bias
            assert torch.allclose(got[v], h.relu().amax(0), atol=1e-10)
        perm = torch.randperm(60, generator=g)
        vox2 = voxelize(pts[:, perm], grid, (-2.0, 2.0), 1, 64)
        got2 = pfn(vox2, grid)
    key = lambda vx: (vx.coors[:, 2] * 100 + vx.coors[:, 3]).argsort()  # noqa: E731 - pillars in cell order
    assert torch.allclose(got[key(vox)], got2[key(vox2)], atol=1e-10)


def test_lidar_bev_lands_at_the_points_cell():
    """Points around (x = +30, y = -10) m give a LiDAR BEV that is non-zero only within the branch's receptive field
    of that cell on the feature grid (x along W, y along H). Catches x/y swapped or flipped pillar coordinates and a
    SECOND-FPN stride that leaves the stages on the wrong grid."""
    grid = BEVGrid.square(51.2, 1.6)
    branch = LidarPillarBranch(grid, feature_columns=(0, 1, 2, 3), pillar_size=0.4, pfn_channels=8,
                               backbone_channels=(8, 8, 8), backbone_layers=(0, 0, 0), backbone_strides=(2, 2, 2),
                               fpn_channels=(4, 4, 4)).eval()
    g = torch.Generator().manual_seed(2)
    pts = torch.cat([torch.randn(1, 50, 2, generator=g) * 0.3 + torch.tensor([30.0, -10.0]),
                     torch.zeros(1, 50, 1), torch.full((1, 50, 1), 40.0)], -1)
    with torch.no_grad():
        for p in branch.parameters():
            p.abs_()  # positive weights: the response cannot cancel out
        out = branch(pts, torch.ones(1, 50, dtype=torch.bool))[0].abs().sum(0)
    ix, iy, _ = grid.xy_to_index(torch.tensor([30.0, -10.0]))
    rows, cols = torch.nonzero(out > 0, as_tuple=True)
    assert out[iy, ix] > 0
    assert (rows - iy).abs().max() <= 5 and (cols - ix).abs().max() <= 5  # 3 strided stages: a few cells of spread
    w = out / out.sum()
    r = torch.arange(grid.H, dtype=w.dtype)
    assert abs(float((w.sum(1) * r).sum()) - float(iy) - 0.5) < 1.5  # the response's centroid is the points' cell
    assert abs(float((w.sum(0) * r).sum()) - float(ix) - 0.5) < 1.5


@pytest.fixture(scope="module")
def world_batch(synth_world):
    """Two training samples of the test world with what the synthetic teacher reads (images, LiDAR, map targets)."""
    cfg = load_config(f"{CFG}/bevfusion_lc_seg_synth.yaml", [f"data.dataroot={synth_world.dataroot}"])
    opts = build.dataset_options(cfg.data, cfg.model.data_needs(), train=True)
    ds = NuScenesDataset(synth_world.dataroot, synth_world.version, synth_world.train_split, seed=0,
                         **{k: v for k, v in opts.items() if k != "seed"})
    return collate([ds[0], ds[3]])


@pytest.mark.parametrize("name", ["bevfusion_cam_seg_synth", "bevfusion_lc_seg_synth"])
def test_synth_models_train_on_the_world(name, world_batch):
    """Forward, loss and backward of the student and the teacher on real synthetic samples: a finite loss, a gradient
    for every parameter, the predicted probabilities on the target grid. Catches a branch left out of the graph (the
    fuser ignoring the LiDAR BEV), targets on another grid than the logits."""
    torch.manual_seed(0)
    m = BEVFusionSeg(load_config(f"{CFG}/{name}.yaml").model).train()
    out = m(world_batch)
    losses = m.loss(out, world_batch)
    assert torch.isfinite(losses["loss"]) and set(losses) >= {"loss", "loss_seg", "seg/divider"}
    losses["loss"].backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]
    # non-zero everywhere but in timm's residual branches, whose last BN starts at zero (zero_init_last)
    zero = [n for n, p in m.named_parameters() if not p.grad.abs().sum() > 0]
    assert all(n.startswith("image_backbone.net.layer") for n in zero), zero
    if m.lidar_branch is not None:
        assert m.fuser[0].weight.grad[:, m.cfg.camera.context_channels:].abs().sum() > 0  # the LiDAR half is used
    preds = m.predict(out, world_batch)
    assert len(preds) == 2 and preds[0].seg_probs.shape == (6, 100, 100)
    assert out["bev"].shape == (2, 32, 64, 64) and out["decoded"].shape == (2, 64, 64, 64)


def test_teacher_refuses_a_dataset_without_lidar():
    """The fusion model requires LiDAR: a config that turns it off fails when the dataset is built, with the key."""
    cfg = load_config(f"{CFG}/bevfusion_lc_seg_synth.yaml", ["data.lidar_sweeps=0"])
    with pytest.raises(build.BuildError, match="requires LiDAR.*lidar_sweeps"):
        build.dataset_options(cfg.data, cfg.model.data_needs(), train=True)


def test_image_size_must_match_the_swin_window_size():
    """A Swin built for one size fed another fails at load time, naming both keys."""
    from bevbridge.config.loader import ConfigError

    with pytest.raises(ConfigError, match="img_size"):
        load_config(f"{CFG}/bevfusion_cam_seg.yaml", ["model.camera.input_size=[224,224]"])


def test_lss_depth_bins_and_grids_at_paper_scale():
    """LSS on 0.4 m cells (256x256) with 118 depth bins, downsampled to the 128x128 feature grid at 0.8 m."""
    m = paper_model("bevfusion_cam_seg")
    assert m.vtransform.grid.shape == (256, 256) and math.isclose(m.vtransform.grid.res, 0.4)
    assert m.vtransform.num_bins == 118 and m.grid.shape == (128, 128)
    assert m.head.target_grid.shape == (200, 200)


def test_lidar_bn_momentum_reaches_every_batchnorm_of_the_branch():
    """lidar.bn_momentum (0.1 in the synthetic teacher: mmdet3d's 0.01 left running statistics so stale after 300
    steps that the teacher evaluated at half its mIoU) is the momentum of every BatchNorm of the LiDAR branch; the
    paper-scale teacher keeps 0.01. Catches a BatchNorm the option does not reach."""
    for name, momentum in (("bevfusion_lc_seg_synth", 0.1), ("bevfusion_lc_seg", 0.01)):
        with torch.device("meta"):
            m = BEVFusionSeg(load_config(f"{CFG}/{name}.yaml").model)
        bns = [mod for mod in m.lidar_branch.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
        assert len(bns) > 5 and all(bn.momentum == momentum for bn in bns), name
