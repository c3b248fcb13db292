"""The `bevbridge` command line: synth | train | eval | infer | viz | bench | demo (+ config).

Each subcommand's work lives in the module that owns it; this file only parses arguments and dispatches, importing
heavy modules lazily so that ``bevbridge --help`` is instant. A subcommand that is not built yet says so and exits
with status 3; it never silently does nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
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


def _validated_then_not_built(name: str, what: str) -> Callable[[argparse.Namespace], int]:
    """Validate the config and overrides first (so mistakes surface now), then report that the command is missing."""

    def run(args: argparse.Namespace) -> int:
        _load_experiment(args)
        return _not_built(name, what)(args)

    return run


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
            _not_built("synth", "issue #3, the synthetic nuScenes-format world"))
    p.add_argument("--out", default="data/synth")

    p = add("train", "train a model from an experiment config",
            _validated_then_not_built("train", "issue #6, the training engine"))
    _add_config_args(p)

    p = add("eval", "evaluate a checkpoint with the official metrics",
            _validated_then_not_built("eval", "issue #6, the training engine"))
    _add_config_args(p)

    p = add("infer", "run a checkpoint and write predictions (devkit results JSON)",
            _validated_then_not_built("infer", "issue #6, the training engine"))
    _add_config_args(p)

    add("viz", "render BEV and camera views of data or predictions", _not_built("viz", "issue #7, the CTAB demo"))
    p = add("bench", "run the benchmarks (benchmarks/bench_*.py) and print their tables", _cmd_bench)
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this benchmark (e.g. ops for bench_ops.py); repeatable")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--dir", default=None, help="benchmark directory (default: this checkout's benchmarks/)")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="-- ARGS",
                   help="passed to every benchmark, e.g. bevbridge bench --only ops -- --quick")
    add("demo", "synthesise data, train CTAB on CPU, evaluate and write an HTML report to runs/demo/",
        _not_built("demo", "issue #7, CTAB end to end"))

    p = add("config", "print the resolved config (after _base_ and overrides) as YAML", _cmd_config)
    _add_config_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bevbridge.config import ConfigError
    from bevbridge.log import setup_logging

    args = build_parser().parse_args(argv)
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
