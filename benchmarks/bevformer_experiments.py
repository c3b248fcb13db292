"""BEVFormer on the synthetic world: the untrained baseline of a config, and the Markdown rows of trained runs.

    python benchmarks/bevformer_experiments.py untrained configs/bevformer/bevformer_tiny_synth.yaml \\
        --out runs/bevformer_tiny_synth_untrained [key=value ...]
    python benchmarks/bevformer_experiments.py report RUN [RUN ...]

``untrained`` builds the config's model exactly as ``bevbridge train`` does before its first step (``build_model``
seeds it with ``train.seed``), writes its weights to ``OUT/untrained.safetensors`` and runs ``bevbridge eval`` on
them (``OUT/metrics.json``): the baseline a trained run is compared with. ``report`` prints one Markdown row per run
from its last ``eval/step_*/metrics.json`` (the evaluation at the end of training) and its ``config.yaml``.

Not a ``bench_*`` script: ``make bench`` does not run it. The runs themselves are plain ``bevbridge train`` commands
(recorded in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def cmd_untrained(args: argparse.Namespace) -> None:
    from bevbridge.config import load_config
    from bevbridge.engine import build
    from bevbridge.weights import save_weights, to_cpu_contiguous

    cfg = load_config(args.config, args.overrides)
    model = build.build_model(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = save_weights(out / "untrained.safetensors", to_cpu_contiguous(model.state_dict()), {"kind": model.kind})
    cmd = [str(ROOT / ".venv" / "bin" / "bevbridge"), "eval", args.config, *args.overrides, "--ckpt", str(path),
           "--out", str(out)]
    print("[run]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def final_metrics(run: Path) -> tuple[int | None, dict]:
    """(step, metrics) of the run's last evaluation, or of ``run/metrics.json`` (an ``untrained`` folder)."""
    evals = sorted((run / "eval").glob("step_*/metrics.json"))
    if evals:
        return int(evals[-1].parent.name.split("_")[1]), json.loads(evals[-1].read_text())["metrics"]
    if (run / "metrics.json").is_file():
        return 0, json.loads((run / "metrics.json").read_text())["metrics"]
    sys.exit(f"{run}: no eval/step_*/metrics.json and no metrics.json")


def cmd_report(args: argparse.Namespace) -> None:
    print("| run | step | " + " | ".join(METRICS) + " |")
    print("|---|---:|" + "---:|" * len(METRICS))
    for r in args.runs:
        step, m = final_metrics(Path(r))
        vals = " | ".join(f"{m.get('detection/' + k, float('nan')):.4f}" for k in METRICS)
        print(f"| {Path(r).name} | {step} | {vals} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("untrained", help="evaluate the config's model before training")
    u.add_argument("config")
    u.add_argument("overrides", nargs="*")
    u.add_argument("--out", required=True)
    r = sub.add_parser("report", help="Markdown rows of finished runs")
    r.add_argument("runs", nargs="+")
    args = p.parse_args()
    {"untrained": cmd_untrained, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
