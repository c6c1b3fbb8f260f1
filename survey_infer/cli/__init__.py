"""``survey-infer`` command line.

Each subcommand has its own module in this package, ``survey_infer.cli.<command>``, with ``register(subparsers)``
(its options) and the function that turns parsed options into a library call; the library modules themselves
know nothing of argparse. This file only wires them together (imports are lazy so ``--help`` is fast) and maps
every :class:`survey_infer.errors.UserError` to one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import UserError

# subcommand -> module providing register(subparsers)
COMMANDS: dict[str, str] = {name: f"survey_infer.cli.{name}" for name in (
    "simulate", "ingest", "train", "calibrate", "run", "status", "evaluate", "export", "inspect", "demo")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="survey-infer",
        description="Survey-scale redshift / stellar mass / SFR inference with an MC-dropout CNN on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"survey-infer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError as exc:  # a module not built yet must not break the other commands
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(func=lambda args, _e=exc: _unavailable(_e))
            continue
        mod.register(sub)
    return parser


def _unavailable(exc: Exception) -> int:
    print(f"survey-infer: this command is unavailable: {exc}", file=sys.stderr)
    return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that are the user's to fix: printed as one line with exit code 2, never a traceback."""
    return (UserError, FileNotFoundError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    import os

    if not any(a in ("-v", "--verbose") for a in (argv if argv is not None else sys.argv[1:])):
        # before distributed is imported: it configures its loggers from dask config at import time
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        for noisy in ("distributed", "bokeh", "tornado"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import signal

    def _sigterm(signum, frame):  # scancel / preemption: stop like Ctrl-C so locks are released
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        rc = args.func(args)
    except _user_errors() as exc:
        print(f"survey-infer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"survey-infer {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
