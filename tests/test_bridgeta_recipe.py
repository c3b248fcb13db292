"""BridgeTA's recipe: configs aligned with the deployed models, the frozen teacher, the loss wiring (Eqs. 8-14),
Table 3's "no extra inference cost", and the deployable checkpoint evaluated with the student's config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bevbridge.config import load_config
from bevbridge.config.loader import ConfigError
from bevbridge.data.random_batch import random_batch
from bevbridge.engine import build
from bevbridge.engine.amp import Precision
from bevbridge.engine.optim import build_optimizer
from bevbridge.engine.summary import summarize
from bevbridge.engine.train_step import TrainStep
from bevbridge.losses.distill import bernoulli_kl, level_l2
from bevbridge.models.bevfusion.model import BEVFusionSeg
from bevbridge.recipes.bridgeta.recipe import BridgeTA
from bevbridge.weights import save_weights

CFG = "configs/bridgeta"


def _without_init(section):
    return dataclasses.replace(section, init_from=None, init_prefix_map={})


@pytest.mark.parametrize("recipe, student, teacher", [
    ("bridgeta_synth", "bevfusion_cam_seg_synth", "bevfusion_lc_seg_synth"),
    ("bridgeta", "bevfusion_cam_seg", "bevfusion_lc_seg")])
def test_recipe_sections_are_the_deployed_models(recipe, student, teacher):
    """The recipe's student is exactly the student config's model (so `bevbridge eval <student config> --ckpt <recipe
    run>` builds the distilled model), its teacher the teacher config's, and the two runs see the same data and
    schedule. Catches a copy of the sections that drifted from the deployed config."""
    r, s, t = (load_config(f"{CFG}/{n}.yaml") for n in (recipe, student, teacher))
    assert r.model.student == s.model
    assert _without_init(r.model.teacher) == t.model
    assert r.model.teacher.init_from is not None
    for section in ("optim", "schedule", "train", "eval"):
        assert getattr(r, section) == getattr(s, section), section
    assert dataclasses.replace(r.data, lidar_sweeps=s.data.lidar_sweeps) == s.data
    assert r.data.lidar_sweeps == t.data.lidar_sweeps


def test_schema_rejects_a_teacher_not_aligned_with_the_student():
    """The paper aligns the teacher's channels and decoder with the student's; a fuser left at BEVFusion's 256
    channels, a camera-only teacher or a LiDAR student fail at load time with the key named."""
    with pytest.raises(ConfigError, match="fuser.out_channels"):
        load_config(f"{CFG}/bridgeta_synth.yaml", ["model.teacher.fuser.out_channels=256"])
    with pytest.raises(ConfigError, match="teacher.decoder"):
        load_config(f"{CFG}/bridgeta_synth.yaml", ["model.teacher.decoder.channels=[32,64,64]"])
    with pytest.raises(ConfigError, match="model.teacher.*needs a LiDAR"):
        load_config(f"{CFG}/bridgeta_synth.yaml", ["model.teacher.lidar=null"])


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A 'trained' synthetic teacher: random weights with non-default BatchNorm statistics, saved as a bevfusion
    weights file, as `bevbridge train configs/bridgeta/bevfusion_lc_seg_synth.yaml` would."""
    torch.manual_seed(123)
    t = BEVFusionSeg(load_config(f"{CFG}/bevfusion_lc_seg_synth.yaml").model)
    with torch.no_grad():
        for name, buf in t.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(1000)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(path, t.state_dict(), {"format": "bevbridge", "kind": "bevfusion"})
    return path


def build_recipe(teacher_file, *overrides) -> BridgeTA:
    cfg = load_config(f"{CFG}/bridgeta_synth.yaml", [f"model.teacher.init_from={teacher_file}", *overrides])
    return build.build_model(cfg)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_loaded_assistant_copied_and_teacher_bitwise_unchanged_by_kd_steps(teacher_file):
    """The builder loads model.teacher.init_from into the teacher (strictly), the assistant starts as a copy of the
    teacher's fuser/decoder/head; then three KD steps as the engine runs them (model.train(), TrainStep, AdamW with
    weight decay, gradient clipping) leave every teacher parameter AND BatchNorm buffer (running mean/var, batch
    counter) bitwise unchanged, while the student and the assistant train. Catches a teacher in train mode (BN
    statistics drift), a teacher in the optimizer (weight decay moves it), a teacher that was never loaded."""
    from safetensors.torch import load_file

    model = build_recipe(teacher_file)
    saved = load_file(teacher_file)
    assert all(torch.equal(saved[k], v) for k, v in model.teacher.state_dict().items())
    for name in ("fuser", "decoder", "head"):
        own = getattr(model.teacher, name).state_dict()
        assert all(torch.equal(own[k], v) for k, v in getattr(model.assistant, name).state_dict().items())
    cfg = load_config(f"{CFG}/bridgeta_synth.yaml")
    opt = build_optimizer(model, cfg.optim, 1e-3)
    assert not {id(p) for p in model.teacher.parameters()} & {id(p) for g in opt.param_groups for p in g["params"]}
    step = TrainStep(model, Precision("none", torch.device("cpu")))
    teacher0, student0, assistant0 = state(model.teacher), state(model.student), state(model.assistant)
    model.train()
    assert not model.teacher.training and model.student.training and model.assistant.training
    for i in range(3):
        opt.zero_grad(set_to_none=True)
        losses = step(random_batch(model.data_needs(), batch_size=2, seed=i))
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
        opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    after = model.teacher.state_dict()
    assert all(torch.equal(teacher0[k], after[k]) for k in teacher0)
    assert any(not torch.equal(student0[k], v) for k, v in model.student.state_dict().items())
    s_bn = "decoder.backbone.stages.0.0.bn1.running_mean"
    assert not torch.equal(student0[s_bn], model.student.state_dict()[s_bn])  # the student's BN does update
    assert any(not torch.equal(assistant0[k], v) for k, v in model.assistant.state_dict().items())


def test_a_teacher_file_that_does_not_fit_is_an_error(tmp_path):
    """Loading the student's weights as the teacher fails with the key and the first missing keys (a partly loaded
    teacher would distil noise), not with a warning."""
    s = BEVFusionSeg(load_config(f"{CFG}/bevfusion_cam_seg_synth.yaml").model)
    path = tmp_path / "student.safetensors"
    save_weights(path, s.state_dict(), {"format": "bevbridge", "kind": "bevfusion"})
    with pytest.raises(build.BuildError, match=r"model\.teacher\.init_from: .*missing lidar_branch"):
        build_recipe(path)


def outputs_and_losses(model, seed=0):
    model.train()
    batch = random_batch(model.data_needs(), batch_size=2, seed=seed)
    out = model(batch)
    return batch, out, model.loss(out, batch)


def test_loss_terms_are_the_papers_equations(teacher_file):
    """Each logged term recomputed from the outputs: Eq. 9-11 as (sqrt(Eq8(S, TA)) + sqrt(Eq8(TA, T)))^2 (eps*),
    Eq. 12 as the two KLs, Eq. 14 as their sum with the student's and the assistant's segmentation losses. Catches
    the student and the assistant swapped in a slot (b would then be ||S - T||), a level fed the wrong tensors, a
    term counted twice or left out of the total."""
    model = build_recipe(teacher_file)
    batch, out, losses = outputs_and_losses(model)
    s, t, ta = out["student"], out["teacher"], out["assistant"]
    total = model.student.loss(s, batch)["loss"] + model.assistant.head.loss(ta["seg_logits"], batch.gt_masks)["seg"]
    d = model.cfg.distill
    for level, key, name, lam in (("feature", "bev", "loss_fld", d.lambda_fld),
                                  ("decoded", "decoded", "loss_dld", d.lambda_dld),
                                  ("logit", "seg_logits", "loss_lld_base", d.lambda_lld)):
        a, b = level_l2(s[key], ta[key]), level_l2(ta[key], t[key])
        expect = lam * (a.sqrt() + b.sqrt()) ** 2
        assert torch.allclose(losses[name], expect.detach(), rtol=1e-5), level
        assert torch.allclose(losses[f"eps/{level}"], (b / a).sqrt().detach(), rtol=1e-5)
        assert torch.allclose(losses[f"gap/{level}"], level_l2(s[key], t[key]).detach(), rtol=1e-6)
        total = total + expect
    aux = d.lambda_lld * (bernoulli_kl(t["seg_logits"], model.teacher.head(s["decoded"])) +
                          bernoulli_kl(ta["seg_logits"], model.assistant.head(s["decoded"])))
    assert torch.allclose(losses["loss_lld_aux"], aux.detach(), rtol=1e-5)
    assert torch.allclose(losses["loss"], total + aux, rtol=1e-5)
    assert out["teacher"]["bev"].shape == s["bev"].shape == ta["bev"].shape  # the aligned feature level


def test_student_gets_gradients_through_the_frozen_teacher_head(teacher_file):
    """LLD's cross-head path (Fig. 4): with only the teacher's auxiliary KL switched on, the student's decoder and
    camera branch receive gradients through the frozen teacher head, which itself gets none; the assistant's head is
    not trained by the cross path either. Catches the cross pass run under no_grad or on detached features."""
    model = build_recipe(teacher_file, "model.assistant.enabled=false", "model.distill.fld=false",
                         "model.distill.dld=false", "model.distill.lld_base=false")
    batch, out, _ = outputs_and_losses(model)
    aux = bernoulli_kl(out["teacher"]["seg_logits"], out["student_via_teacher_head"])
    aux.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.decoder.neck.fuse[0].weight.grad.abs().sum() > 0
    assert model.student.vtransform.depth_net.depthnet.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.student.head.parameters())  # the student's own head is not on this path

    full = build_recipe(teacher_file)
    _, out, _ = outputs_and_losses(full)
    bernoulli_kl(out["assistant"]["seg_logits"].detach(), out["student_via_assistant_head"]).backward()
    assert all(p.grad is None for p in full.assistant.parameters())
    assert full.student.decoder.neck.fuse[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, present, absent", [
    ((), {"loss_fld", "loss_dld", "loss_lld_base", "loss_lld_aux", "loss_ta_seg", "eps/feature"}, set()),
    (("model.assistant.enabled=false",), {"loss_fld", "loss_dld", "loss_lld_base", "loss_lld_aux"},
     {"eps/feature", "loss_ta_seg"}),
    (("model.distill.dld=false", "model.distill.lld_base=false", "model.distill.lld_aux=false"), {"loss_fld"},
     {"loss_dld", "loss_lld_base", "loss_lld_aux"}),
    (("model.distill.eps=2.0",), {"eps/feature"}, set()),
])
def test_table4_switches(teacher_file, overrides, present, absent):
    """Table 4's rows are switches: which terms exist; the Fig. 5 gaps are logged whatever is switched off; w/o TA
    each level is the direct Eq. 8(S, T); a fixed eps is used as given."""
    model = build_recipe(teacher_file, *overrides)
    _, out, losses = outputs_and_losses(model)
    assert present <= set(losses) and not absent & set(losses)
    assert {"gap/feature", "gap/decoded", "gap/logit", "loss_seg"} <= set(losses)
    if model.assistant is None:
        assert "assistant" not in out and "student_via_assistant_head" not in out
        assert torch.allclose(losses["loss_fld"], model.cfg.distill.lambda_fld * losses["gap/feature"])
    if "model.distill.eps=2.0" in overrides:
        assert float(losses["eps/feature"]) == 2.0


def test_eq11_literal_student_path(teacher_file):
    """distill.lld_student_path=t2s follows Eq. 11 as printed: the student's logit term is measured to the teacher."""
    model = build_recipe(teacher_file, "model.distill.lld_student_path=t2s")
    _, out, losses = outputs_and_losses(model)
    assert torch.allclose(losses["dist/logit_student"], losses["gap/logit"])
    assert torch.allclose(losses["dist/feature_student"], level_l2(out["student"]["bev"], out["assistant"]["bev"]))


def test_inference_runs_the_student_alone(teacher_file, monkeypatch):
    """In eval mode the teacher and the assistant never run, and predictions are the student's."""
    model = build_recipe(teacher_file).eval()
    monkeypatch.setattr(model.teacher, "forward", lambda *a: pytest.fail("the teacher ran at inference"))
    batch = random_batch(model.data_needs(), batch_size=2)
    with torch.no_grad():
        out = model(batch)
        preds = model.predict(out, batch)
        ref = model.student(batch)["seg_logits"].sigmoid()
    assert set(out) == {"student"} and len(preds) == 2
    assert torch.equal(preds[1].seg_probs, ref[1])


def test_table3_student_cost_unchanged_by_distillation():
    """Table 3: BridgeTA's deployed model has the baseline's parameters and FLOPs. `bevbridge summary` of the recipe
    counts the student alone as its deployable model and its inference FLOPs, equal to the student config's
    (synthetic configs on the CPU; the paper-scale parameter counts on meta)."""
    random_input = ["data.dataroot=/nonexistent"]  # the same random batch for both, no dataset read
    base = summarize(load_config(f"{CFG}/bevfusion_cam_seg_synth.yaml", random_input), device="cpu")
    kd = summarize(load_config(f"{CFG}/bridgeta_synth.yaml", random_input), device="cpu")
    n = base["parameters"]["(total)"]["trainable"]
    assert kd["deployable"]["parameters"] == n == kd["parameters"]["student"]["trainable"]
    assert kd["flops"]["gflops"] == base["flops"]["gflops"] > 0
    base = summarize(load_config(f"{CFG}/bevfusion_cam_seg.yaml"), device="meta", flops=False)
    kd = summarize(load_config(f"{CFG}/bridgeta.yaml"), device="meta", flops=False)
    assert kd["deployable"]["parameters"] == base["parameters"]["(total)"]["trainable"]
    assert round(kd["deployable"]["parameters"] / 1e6, 1) == 49.1  # the paper says 31.8 (see README)


@pytest.mark.slow
def test_deployable_checkpoint_evaluates_with_the_student_config(synth_world, tmp_path, capsys):
    """End to end on the test world: train the teacher (2 steps), BridgeTA from it (2 steps), then `bevbridge eval
    configs/bridgeta/bevfusion_cam_seg_synth.yaml --ckpt <bridgeta run>` scores the distilled student, with exactly
    the metrics of evaluating the recipe run with its own config; the recipe's checkpoint holds the teacher bitwise
    as it was loaded. Catches deployable weights under the recipe's keys ("student.")."""
    from safetensors.torch import load_file

    from bevbridge import cli
    from bevbridge.weights import checkpoint_dir_of

    data = [f"data.dataroot={synth_world.dataroot}", f"data.version={synth_world.version}",
            f"data.train_split={synth_world.train_split}", f"data.val_split={synth_world.val_split}",
            "data.num_workers=0", "train.max_steps=2", "train.log_every=1", "schedule.warmup_steps=1"]
    teacher_run, kd_run = tmp_path / "teacher", tmp_path / "kd"
    assert cli.main(["train", f"{CFG}/bevfusion_lc_seg_synth.yaml", *data, "--out", str(teacher_run)]) == 0
    assert cli.main(["train", f"{CFG}/bridgeta_synth.yaml", *data, f"model.teacher.init_from={teacher_run}",
                     "--out", str(kd_run)]) == 0
    ckpt = checkpoint_dir_of(kd_run)
    teacher_state = load_file(checkpoint_dir_of(teacher_run) / "model.safetensors")
    kd_state = load_file(ckpt / "model.safetensors")
    assert all(torch.equal(kd_state[f"teacher.{k}"], v) for k, v in teacher_state.items())
    deploy = load_file(ckpt / "deployable.safetensors")
    assert set(deploy) == {k[len("student."):] for k in kd_state if k.startswith("student.")}
    capsys.readouterr()
    out_a, out_b = tmp_path / "eval_student", tmp_path / "eval_recipe"
    assert cli.main(["eval", f"{CFG}/bevfusion_cam_seg_synth.yaml", *data, "--ckpt", str(kd_run),
                     "--out", str(out_a)]) == 0
    assert cli.main(["eval", f"{CFG}/bridgeta_synth.yaml", *data, "--ckpt", str(kd_run), "--out", str(out_b)]) == 0
    a = json.loads((out_a / "metrics.json").read_text())
    b = json.loads((out_b / "metrics.json").read_text())
    assert a["checkpoint"].endswith("deployable.safetensors") and b["checkpoint"].endswith("model.safetensors")
    assert a["metrics"] == b["metrics"] and "segmentation/mIoU@max" in a["metrics"]
