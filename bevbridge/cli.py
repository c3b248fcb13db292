"""The `bevbridge` command line: synth | train | eval | infer | viz | summary | check-data | bench | demo (+ config).

Each subcommand's work lives in the module that owns it; this file only parses arguments and dispatches, importing
heavy modules lazily so that ``bevbridge --help`` is instant. A subcommand that is not built yet says so and exits
with status 3; it never silently does nothing. ``key=value`` config overrides may stand anywhere on the line
(``bevbridge train CFG --max-steps 4 train.ckpt_every=2``).

The path from a YAML file to a running model: ``cli.py`` (arguments) -> ``engine/commands.py`` (the command's body)
-> ``config/loader.py`` + ``config/schema.py`` (YAML -> a validated ExperimentConfig) -> ``engine/build.py`` (config
-> model, datasets, evaluators) -> the method's model (``models/<method>/model.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from bevbridge import __version__

log = logging.getLogger("bevbridge.cli")

EXIT_USAGE = 2  # bad arguments or a bad config (argparse uses 2 as well)
EXIT_NOT_BUILT = 3


class CommandError(Exception):
    """A failure the user can act on: printed as one line, no traceback (unless --verbose)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _not_built(name: str, what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CommandError(f"bevbridge {name}: not built yet ({what}); nothing was done", EXIT_NOT_BUILT)

    return run


def _load_experiment(args: argparse.Namespace):
    from bevbridge.config import load_config

    return load_config(args.config, args.overrides)


def _cmd_config(args: argparse.Namespace) -> int:
    from bevbridge.config import dump_config

    sys.stdout.write(dump_config(_load_experiment(args)))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import time

    from bevbridge.data import synth

    kwargs = dict(scenes=args.scenes, seed=args.seed, version=args.dataset_version)
    if args.samples_per_scene is not None:
        kwargs["samples_per_scene"] = args.samples_per_scene
    if args.image_size is not None:
        kwargs["image_size"] = tuple(args.image_size)
    if args.sweeps is not None:
        kwargs["sweeps"] = tuple(args.sweeps)
    t0 = time.perf_counter()
    try:
        root = synth.generate(args.out, workers=args.workers, **kwargs)
    except (ValueError, FileExistsError) as e:
        raise CommandError(f"bevbridge synth: {e}", EXIT_USAGE) from e
    print(f"wrote {root} ({args.dataset_version}) in {time.perf_counter() - t0:.1f} s")
    return 0


def _engine(name: str) -> Callable[[argparse.Namespace], int]:
    """A handler that runs bevbridge.engine.commands.<name>; the engine's one-line errors become CommandErrors."""

    def run(args: argparse.Namespace) -> int:
        _load_experiment(args)  # config mistakes surface at once, before torch is imported
        from bevbridge.data.integrity import DataError
        from bevbridge.engine import commands
        from bevbridge.engine.distributed import cleanup
        from bevbridge.engine.errors import EngineError

        try:
            return getattr(commands, name)(args)
        except EngineError as e:
            raise CommandError(f"bevbridge {args.command}: {e}", e.code) from e
        except DataError as e:  # a missing or corrupt data file, also when a DataLoader worker found it
            raise CommandError(f"bevbridge {args.command}: {e}") from e
        finally:
            cleanup()

    return run


def _cmd_demo(args: argparse.Namespace) -> int:
    from bevbridge.data.integrity import DataError
    from bevbridge.engine.demo import run_demo
    from bevbridge.engine.distributed import cleanup
    from bevbridge.engine.errors import EngineError

    try:
        return run_demo(args)
    except EngineError as e:
        raise CommandError(f"bevbridge demo: {e}", e.code) from e
    except DataError as e:
        raise CommandError(f"bevbridge demo: {e}") from e
    finally:
        cleanup()


def _check_data_targets(args: argparse.Namespace) -> dict:
    """check_data's arguments: from the config (what its datasets would load), then the flags on top."""
    from bevbridge.data.nuscenes_info import CAMERAS

    opts: dict = dict(cameras=CAMERAS, radar_sweeps=8, lidar_sweeps=1, drop_cameras=(), allow_missing_radars=False)
    dataroot = version = None
    splits: list[str] = []
    if args.config is not None:
        cfg = _load_experiment(args)
        d = cfg.data
        dataroot, version, splits = d.dataroot, d.version, [d.train_split, d.val_split]
        opts.update(cameras=d.cameras, radar_sweeps=0 if d.drop_radar else d.radar_sweeps,
                    lidar_sweeps=0 if d.drop_lidar else d.lidar_sweeps, drop_cameras=d.drop_cameras,
                    allow_missing_radars=d.allow_missing_radars)
        if cfg.model is not None:  # the model decides whether radar and LiDAR are loaded at all
            from bevbridge.engine.build import BuildError, dataset_options

            try:
                ds = dataset_options(cfg.data, cfg.model.data_needs(), train=True)
            except BuildError as e:
                raise CommandError(f"bevbridge check-data: {e}", e.code) from e
            opts.update(radar_sweeps=0 if ds["drop_radar"] else ds["radar_sweeps"],
                        lidar_sweeps=0 if ds["drop_lidar"] else ds["lidar_sweeps"])
    dataroot = args.dataroot or dataroot
    version = args.dataset_version or version or "v1.0-trainval"
    splits = args.split or splits
    if dataroot is None or not splits:
        raise CommandError("bevbridge check-data: give a CONFIG, or --dataroot and --split (and --version)",
                           EXIT_USAGE)
    for flag in ("radar_sweeps", "lidar_sweeps"):
        if getattr(args, flag) is not None:
            opts[flag] = getattr(args, flag)
    return dict(dataroot=dataroot, version=version, splits=list(dict.fromkeys(splits)), **opts)


def _cmd_check_data(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from bevbridge.atomic import atomic_write_text
    from bevbridge.data.check import check_data, format_summary
    from bevbridge.data.integrity import DataError
    from bevbridge.data.nuscenes_info import InfoCacheError

    targets = _check_data_targets(args)
    if not Path(targets["dataroot"]).is_dir():
        raise CommandError(f"bevbridge check-data: dataroot does not exist: {targets['dataroot']}")
    try:
        report = check_data(**targets, workers=args.workers)
    except (FileNotFoundError, ValueError, InfoCacheError, DataError) as e:
        raise CommandError(f"bevbridge check-data: {e}") from e
    out = Path(args.out or f"check_data_{targets['version']}.json")
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    print(format_summary(report, out))
    return 0 if report["ok"] else 1


def _cmd_eval_detections(args: argparse.Namespace) -> int:
    import json
    import math

    from bevbridge.atomic import atomic_write_text
    from bevbridge.eval.detection import evaluate_detections, format_detection_summary

    try:
        metrics = evaluate_detections(args.results, args.dataroot, args.version, args.split,
                                      verbose=getattr(args, "verbose", False))
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(f"bevbridge eval-detections: {e}") from e
    if args.out:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        atomic_write_text(args.out, json.dumps(clean, indent=2) + "\n")
        log.info("metrics written to %s", args.out)
    print(format_detection_summary(metrics))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bevbridge.bench import default_benchmark_dir, run_benchmarks

    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    directory = Path(args.dir) if args.dir else default_benchmark_dir()
    return run_benchmarks(directory, args.only, extra, list_only=args.list)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (configs/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides applied after the YAML, e.g. optim.lr=2e-4 data.batch_size=2")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging and full tracebacks")

    parser = argparse.ArgumentParser(
        prog="bevbridge",
        description="Pure-PyTorch BEV perception: CTAB, BEVFormer v2, BridgeTA and MTA on nuScenes.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"bevbridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common])
        p.set_defaults(handler=handler)
        return p

    p = add("synth", "write a synthetic nuScenes-format world (tables, maps, cameras, radar, lidar, captions)",
            _cmd_synth)
    p.add_argument("--out", default="data/synth", help="dataroot to write (default: data/synth)")
    p.add_argument("--scenes", type=int, default=None,
                   help="number of scenes (default 10, named like the devkit's mini split)")
    p.add_argument("--samples-per-scene", type=int, default=None, help="keyframes per scene at 2 Hz (default 20)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="camera image size (default 144 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", dest="dataset_version", default="v1.0-mini", help="table folder name")
    p.add_argument("--sweeps", type=int, nargs=3, metavar=("LIDAR", "RADAR", "CAMERA"), default=None,
                   help="non-key sweeps between keyframes per sensor (default 1 6 0; nuScenes' rates: 9 6 5)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, one scene each (default 1; more helps on an idle multi-core machine); "
                        "the output does not depend on it")

    p = add("train", "train a model from an experiment config (torchrun for several processes)", _engine("train"))
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run folder (default: <train.out_dir>/<name>)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue from CKPT, or from the run folder's latest checkpoint when CKPT is omitted")
    p.add_argument("--max-steps", type=int, metavar="N",
                   help="stop at step N (the schedule still spans train.max_steps)")

    p = add("eval", "evaluate a checkpoint with the official metrics", _engine("evaluate"))
    _add_config_args(p)
    p.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint folder, run folder or .safetensors")
    p.add_argument("--out", metavar="DIR", help="where metrics.json goes (default: <run>/eval/<checkpoint>)")

    p = add("infer", "run a checkpoint and write predictions (devkit results JSON)", _engine("infer"))
    _add_config_args(p)
    p.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint folder, run folder or .safetensors")
    p.add_argument("--out", required=True, metavar="RESULTS_JSON", help="the devkit results JSON to write")

    p = add("eval-detections", "evaluate a nuScenes detection results JSON with the official devkit metrics",
            _cmd_eval_detections)
    p.add_argument("--dataroot", required=True, help="nuScenes root folder (holds VERSION/ and maps/)")
    p.add_argument("--version", required=True, help="e.g. v1.0-trainval, v1.0-mini")
    p.add_argument("--split", required=True,
                   help="a predefined split (val, mini_val, ...) or one named in DATAROOT/VERSION/splits.json")
    p.add_argument("--results", required=True, help="results JSON (devkit format, global frame)")
    p.add_argument("--out", help="also write the metrics as JSON here")

    p = add("viz", "render BEV and camera views of data (and, with --ckpt, predictions) into an HTML page",
            _engine("viz"))
    _add_config_args(p)
    p.add_argument("--ckpt", default=None, help="checkpoint folder or weights; without it only ground truth is drawn")
    p.add_argument("--samples", type=int, default=3, help="validation samples to render, spread over the split")
    p.add_argument("--out", default="runs/viz", help="output folder (index.html + PNGs)")
    p = add("bench", "run the benchmarks (benchmarks/bench_*.py) and print their tables", _cmd_bench)
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this benchmark (e.g. ops for bench_ops.py); repeatable")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--dir", default=None, help="benchmark directory (default: this checkout's benchmarks/)")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                   help="passed to every benchmark, e.g. bevbridge bench --only ops -- --quick")
    p = add("demo", "synthesise data, train CTAB on CPU, evaluate and write an HTML report to runs/demo/", _cmd_demo)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the demo config")
    p.add_argument("--config", default=None, help="default: configs/ctab/mtl_ctab_synth.yaml")
    p.add_argument("--out", default="runs/demo", help="output folder (a previous demo run there is replaced)")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="a safety stop, not the length: the demo trains train.max_steps steps on every machine; if "
                        "this many minutes pass first, training stops early and the report says so (default 60)")

    p = add("summary", "parameters per module (trainable / frozen) and forward GFLOPs of one sample",
            _engine("summary"))
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--device", choices=("auto", "meta", "cpu"), default="auto",
                   help="where to build the model: meta = no memory, instant (default for paper-scale configs); "
                        "cpu = real weights, needed for FLOPs of data-dependent models (default for *_synth.yaml)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")

    p = add("config", "print the resolved config (after _base_ and overrides) as YAML", _cmd_config)
    _add_config_args(p)

    p = add("check-data", "read every sensor file the config's splits reference and report what is missing or "
            "corrupt (exit status 1 if anything is)", _cmd_check_data)
    p.add_argument("config", nargs="?", default=None, help="experiment YAML: its train and val splits, cameras and "
                   "sweeps (optional with --dataroot and --split)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the config")
    p.add_argument("--dataroot", help="nuScenes root (default: the config's data.dataroot)")
    p.add_argument("--version", dest="dataset_version", help="table folder, e.g. v1.0-trainval (default: the config's)")
    p.add_argument("--split", action="append", default=[], help="split to check (repeatable; default: the config's "
                   "train and val splits)")
    p.add_argument("--radar-sweeps", type=int, default=None, help="sweeps per radar (default: the config's, else 8)")
    p.add_argument("--lidar-sweeps", type=int, default=None, help="LiDAR sweeps (default: the config's, else 1)")
    p.add_argument("--out", default=None, help="the JSON report (default: ./check_data_<version>.json)")
    p.add_argument("--workers", type=int, default=None, help="reading processes (default: CPUs, at most 8)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, accepting ``key=value`` overrides anywhere after the command (argparse alone takes them only
    before the first option)."""
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        resume = getattr(args, "resume", None)
        if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
            args.overrides.append(resume)  # `--resume key=value`: a bare --resume followed by an override
            args.resume = True
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides.extend(overrides)
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from bevbridge.config import ConfigError
    from bevbridge.log import setup_logging

    args = _parse(build_parser(), argv)
    verbose = getattr(args, "verbose", False)
    setup_logging(verbose)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        if verbose:
            log.exception("config error")
        print(f"bevbridge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as e:
        if verbose:
            log.exception("command failed")
        print(f"error: {e}" if not str(e).startswith("bevbridge ") else str(e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
