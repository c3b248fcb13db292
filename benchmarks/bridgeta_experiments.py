"""BridgeTA on the synthetic world: the teacher, the student baseline, BridgeTA and Table 4's rows, per seed, then
one report (mIoU@max per class, the Fig. 5 teacher-student gaps over training).

    python benchmarks/bridgeta_experiments.py run --seeds 0 1          # trains what is missing (hours on a CPU)
    python benchmarks/bridgeta_experiments.py report --seeds 0 1       # Markdown for benchmarks/RESULTS.md
    ... run --steps 120 --teacher-steps 150 --only NAME ...            # a smaller, equal budget for every row
    python benchmarks/bridgeta_experiments.py bn-check CONFIG RUN      # mIoU with BatchNorm statistics re-estimated
    python benchmarks/bridgeta_experiments.py lidar-check              # what the synthetic LiDAR carries per class

Not a ``bench_*`` script: ``make bench`` does not run it. Each run is ``bevbridge train configs/bridgeta/<name>.yaml
train.seed=<s> --out <out>/<name>_s<s>``; the KD runs of seed s distil the teacher trained with seed s (so a seed
repeats the whole pipeline) unless ``--teacher-seed`` names one teacher for all. A run whose final evaluation exists
is not trained again. ``--steps N`` (``--teacher-steps`` for the teacher) sets ``train.max_steps=N`` (the cosine
schedule spans the N steps) and ``train.ckpt_every=N/3``: every student row gets the same budget, and the gaps are
reported at N/3, 2N/3 and N (the configs' own 300 steps: 100, 200, 300).

Gaps (Fig. 5): Eq. 8 between the teacher's and the student's feature (F_fus^T vs F_cam^S), decoded and logit
tensors. ``train`` columns: what the KD runs log every 10 steps on their training batches (``train/gap/*`` in
scalars.jsonl, the mean of the 10 steps before). ``val`` columns: recomputed here for every run, the baseline
included, at its checkpoints (N/3, 2N/3, N) on the validation split in eval mode, against its seed's teacher.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "configs" / "bridgeta"
TEACHER, STUDENT = "bevfusion_lc_seg_synth", "bevfusion_cam_seg_synth"
KD = ("bridgeta_synth", "bridgeta_wo_ta_synth", "bridgeta_fld_synth", "bridgeta_fld_dld_synth",
      "bridgeta_fld_dld_lldbase_synth", "bridgeta_fixed_eps_synth")
ROWS = {  # name -> (row label, the paper's mIoU)
    TEACHER: ("teacher (LiDAR-camera, aligned)", "-"),
    STUDENT: ("student baseline (BEVFusion-C)", "56.6"),
    "bridgeta_wo_ta_synth": ("Ours w/o TA (FLD+DLD+LLD, direct)", "57.8"),
    "bridgeta_fld_synth": ("Ours: FLD", "58.5"),
    "bridgeta_fld_dld_synth": ("Ours: FLD+DLD", "59.4"),
    "bridgeta_fld_dld_lldbase_synth": ("Ours: FLD+DLD+LLD base", "60.5"),
    "bridgeta_synth": ("Ours: FLD+DLD+LLD base+aux (BridgeTA)", "60.8"),
    "bridgeta_fixed_eps_synth": ("Ours with fixed eps = 1", "-"),
}
CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")
LEVELS = ("feature", "decoded", "logit")


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}_s{seed}"


def final_metrics(d: Path) -> dict | None:
    evals = sorted((d / "eval").glob("step_*/metrics.json"))
    return json.loads(evals[-1].read_text())["metrics"] if evals else None


def train(out: Path, name: str, seed: int, extra: list[str]) -> None:
    d = run_dir(out, name, seed)
    if final_metrics(d) is not None:
        print(f"[skip] {d} is complete", flush=True)
        return
    cmd = [str(ROOT / ".venv" / "bin" / "bevbridge"), "train", str(CFG / f"{name}.yaml"), f"train.seed={seed}",
           *extra, "--out", str(d)]
    if (d / "checkpoints").is_dir():
        cmd.append("--resume")
    print("[run]", " ".join(cmd), flush=True)
    t = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"[done] {d} in {(time.time() - t) / 60:.1f} min", flush=True)


def budget(steps: int | None) -> list[str]:
    """Overrides for a run of ``steps`` steps with checkpoints at its thirds (none: the config's own)."""
    if steps is None:
        return []
    if steps < 3 or steps % 3:
        raise SystemExit(f"--steps/--teacher-steps must be a positive multiple of 3, got {steps}")
    return [f"train.max_steps={steps}", f"train.ckpt_every={steps // 3}"]


def data_override(dataroot: Path | None) -> list[str]:
    return [] if dataroot is None else [f"data.dataroot={dataroot}"]


def cmd_run(args) -> None:
    for seed in args.seeds:
        for name in (TEACHER, STUDENT, *KD):
            if args.only and name not in args.only:
                continue
            t_seed = seed if args.teacher_seed is None else args.teacher_seed
            extra = [f"model.teacher.init_from={run_dir(args.out, TEACHER, t_seed)}"] if name in KD else []
            extra += budget(args.teacher_steps if name == TEACHER else args.steps) + data_override(args.dataroot)
            train(args.out, name, seed if name != TEACHER else t_seed, extra)


def val_gaps(out: Path, name: str, seed: int, teacher_seed: int, dataroot: Path | None) -> dict[int, dict[str, float]]:
    """Eq. 8 gaps between this run's student (at each kept checkpoint) and its seed's teacher on the val split."""
    import torch

    from bevbridge.config import load_config
    from bevbridge.data.batch import collate
    from bevbridge.engine import build
    from bevbridge.engine.checkpoint import load_model_state
    from bevbridge.losses.distill import level_l2
    from bevbridge.weights import list_checkpoints, read_weights

    cache = out / f"{name}_s{seed}" / "val_gaps.json"
    if cache.is_file():
        return {int(k): v for k, v in json.loads(cache.read_text()).items()}
    tcfg = load_config(CFG / f"{TEACHER}.yaml", data_override(dataroot))
    scfg = load_config(CFG / f"{STUDENT}.yaml", data_override(dataroot))
    teacher = build.build_model(tcfg, init=False).eval()
    state, src = read_weights(run_dir(out, TEACHER, teacher_seed), kind="bevfusion")
    load_model_state(teacher, state, src)
    _, val = build.build_datasets(tcfg.data, teacher.data_needs(), train=False)
    batches = [collate([val[i] for i in range(j, min(j + 2, len(val)))]) for j in range(0, len(val), 2)]
    with torch.no_grad():
        t_out = [{k: teacher(b)[k] for k in ("bev", "decoded", "seg_logits")} for b in batches]
    student = build.build_model(scfg, init=False).eval()
    gaps = {}
    for ckpt in list_checkpoints(run_dir(out, name, seed) / "checkpoints"):
        state, src = read_weights(ckpt, kind="bevfusion")
        load_model_state(student, state, src)
        sums = dict.fromkeys(LEVELS, 0.0)
        with torch.no_grad():
            for b, t in zip(batches, t_out):
                s = student(b)
                for level, key in zip(LEVELS, ("bev", "decoded", "seg_logits")):
                    sums[level] += float(level_l2(s[key], t[key])) * len(b)
        gaps[int(ckpt.name.split("_")[1])] = {k: v / len(val) for k, v in sums.items()}
    cache.write_text(json.dumps(gaps, indent=1))
    return gaps


def train_gaps(d: Path, steps: tuple[int, ...]) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (d / "scalars.jsonl").read_text().splitlines()] \
        if (d / "scalars.jsonl").is_file() else []
    out = {}
    for r in rows:
        if "train/gap/feature" in r and r["step"] in steps:
            out[r["step"]] = {lv: r[f"train/gap/{lv}"] for lv in LEVELS}
    return out


def cmd_report(args) -> None:
    """Rows x seeds; a row's mean and per-class IoU average the seeds it was run with (their count is printed), so a
    row run with fewer seeds than another is visible as such. The teacher row is ``--teacher-seed``'s if given."""
    names = [n for n in (TEACHER, STUDENT, "bridgeta_wo_ta_synth", "bridgeta_fld_synth", "bridgeta_fld_dld_synth",
                         "bridgeta_fld_dld_lldbase_synth", "bridgeta_synth", "bridgeta_fixed_eps_synth")]
    seeds = args.seeds
    t_seed = (lambda s: s) if args.teacher_seed is None else (lambda s: args.teacher_seed)
    steps = (100, 200, 300) if args.steps is None else tuple(args.steps // 3 * k for k in (1, 2, 3))
    print("| row | config | paper mIoU | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (n) | " +
          " | ".join(c.replace("_", " ") for c in CLASSES) + " |")
    print("|---|---|---|" + "---:|" * len(seeds) + "---:|" + "---:|" * len(CLASSES))
    for n in names:
        row_seeds = sorted({t_seed(s) for s in seeds}) if n == TEACHER else seeds
        ms = {s: final_metrics(run_dir(args.out, n, s)) for s in row_seeds}
        done = [m for m in ms.values() if m]
        if not done:
            continue
        vals = [ms.get(s) for s in seeds]
        mean = f"{sum(m['segmentation/mIoU@max'] for m in done) / len(done):.3f} ({len(done)})"
        per_class = [f"{sum(m[f'segmentation/IoU@max/{c}'] for m in done) / len(done):.3f}" for c in CLASSES]
        label, paper = ROWS[n]
        print(f"| {label} | `{n}` | {paper} | " +
              " | ".join("-" if m is None else f"{m['segmentation/mIoU@max']:.3f}" for m in vals) +
              f" | {mean} | " + " | ".join(per_class) + " |")
    print()
    print(f"Teacher-student gaps (Eq. 8; feature / decoded / logit) at steps {', '.join(map(str, steps))}, mean of "
          "the seeds run (n):")
    print()
    print("| run | n | " + " | ".join(f"val gap @{st}" for st in steps) + " | " +
          " | ".join(f"train gap @{st}" for st in steps) + " |")
    print("|---|---:|" + "---|" * 6)
    for n in names[1:]:
        run = [s for s in seeds if final_metrics(run_dir(args.out, n, s))]
        if not run:
            continue
        vg = [val_gaps(args.out, n, s, t_seed(s), args.dataroot) for s in run]
        tg = [train_gaps(run_dir(args.out, n, s), steps) for s in run]

        def fmt(gs, step):
            if not all(step in g for g in gs):
                return "-"
            return " / ".join(f"{sum(g[step][lv] for g in gs) / len(gs):.2f}" for lv in LEVELS)

        print(f"| {ROWS[n][0]} | {len(run)} | " + " | ".join(fmt(vg, st) for st in steps) + " | " +
              " | ".join(fmt(tg, st) for st in steps) + " |")


def cmd_bn_check(args) -> None:
    """Evaluate RUN as trained, then with every BatchNorm's running statistics re-estimated over 120 training
    samples (cumulative average, train mode, no gradient): a large gain means stale statistics."""
    import torch

    from bevbridge.config import load_config
    from bevbridge.data.batch import collate
    from bevbridge.engine import build
    from bevbridge.engine.checkpoint import load_model_state
    from bevbridge.engine.eval_loop import run_evaluation
    from bevbridge.weights import read_weights

    cfg = load_config(args.config)
    model = build.build_model(cfg, init=False)
    state, src = read_weights(args.run, kind=model.kind)
    load_model_state(model, state, src)
    train_set, val = build.build_datasets(cfg.data, model.data_needs())

    def miou() -> float:
        evs = build.build_evaluators(cfg, model.data_needs())
        return run_evaluation(model, val, evs, batch_size=2, num_workers=0,
                              device=torch.device("cpu"))["segmentation/mIoU@max"]

    print(f"{src}: mIoU@max as trained {miou():.4f}")
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, 120, 2):
            model(collate([train_set[i], train_set[i + 1]]))
    print(f"{src}: mIoU@max with BatchNorm statistics re-estimated {miou():.4f}")


def cmd_lidar_check(args) -> None:
    """Per map class: the intensity of the LiDAR ground returns (z < 0.3 m) falling in its cells, and the share of its
    0.5 m cells that at least one ground return hits (within 20 m of the ego, and overall), on the training split of
    the default synthetic world (every 8th sample)."""
    import numpy as np
    import torch

    from bevbridge.data.nuscenes import NuScenesDataset
    from bevbridge.geometry import BEVGrid

    grid = BEVGrid.square(50.0, 0.5)
    ds = NuScenesDataset(str(args.dataroot or "data/synth"), "v1.0-mini", "mini_train", cameras=("CAM_FRONT",), image_size=(144, 256),
                         train=False, lidar_sweeps=1, map_grid=grid, map_classes=CLASSES)
    radius = np.hypot(*np.moveaxis(grid.cell_centres("cpu", torch.float64).numpy(), -1, 0))
    inten: dict[str, list] = {c: [] for c in (*CLASSES, "(no class: grass)", "(drivable only: asphalt)")}
    hit = {c: np.zeros(4) for c in CLASSES}
    for i in range(0, len(ds), 8):
        s = ds[i]
        p, m = s.lidar.numpy(), s.gt_masks.numpy().astype(bool)
        ix, iy, inside = grid.xy_to_index(p[:, :2])
        ground = inside & (p[:, 2] < 0.3)
        ix, iy, value = ix[ground], iy[ground], p[ground, 3]
        label = m[:, iy, ix]
        cells = np.zeros(grid.shape, bool)
        cells[iy, ix] = True
        for k, c in enumerate(CLASSES):
            inten[c].append(value[label[k]])
            near = m[k] & (radius < 20)
            hit[c] += [(near & cells).sum(), near.sum(), (m[k] & cells).sum(), m[k].sum()]
        inten["(no class: grass)"].append(value[~label.any(0)])
        inten["(drivable only: asphalt)"].append(value[label[0] & ~label[1:].any(0)])
    print("| cells of | ground returns | intensity p10 / p50 / p90 | cells hit within 20 m | cells hit overall |")
    print("|---|---|---|---|---|")
    for c, vs in inten.items():
        v = np.concatenate(vs)
        q = " / ".join(f"{x:.1f}" for x in np.percentile(v, [10, 50, 90]))
        h = hit.get(c)
        cov = f"{h[0] / max(h[1], 1):.2f} | {h[2] / max(h[3], 1):.2f}" if h is not None else "- | -"
        print(f"| {c} | {len(v)} | {q} | {cov} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["run", "report", "bn-check", "lidar-check"])
    p.add_argument("config", nargs="?", help="bn-check: the run's config")
    p.add_argument("run", nargs="?", help="bn-check: the run folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="*", help="config names to run (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bridgeta_synth_exp")
    p.add_argument("--dataroot", type=Path, help="the synthetic world (default: the configs' data/synth)")
    p.add_argument("--steps", type=int, help="train.max_steps of every student row (a multiple of 3; default: the "
                   "configs' 300)")
    p.add_argument("--teacher-steps", type=int, help="train.max_steps of the teacher (default: the config's 300)")
    p.add_argument("--teacher-seed", type=int, help="distil this seed's teacher in every seed's KD runs (default: "
                   "the run's own seed)")
    args = p.parse_args()
    {"run": cmd_run, "report": cmd_report, "bn-check": cmd_bn_check, "lidar-check": cmd_lidar_check}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
