"""``survey-infer demo``: its options and how they become a library call (:func:`survey_infer.demo.run_demo`)."""
from __future__ import annotations

import argparse

from .. import demo as _demo

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand and its options to ``subparsers``; return its parser."""
    p = subparsers.add_parser("demo", help="simulate a small survey, run the shipped model on a local cluster, report",
                              description=_demo.__doc__)
    p.add_argument("--out", default="survey-infer-demo", help="output folder (default ./survey-infer-demo)")
    p.add_argument("--n", type=int, default=3000, help="spectra to simulate (default 3000)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--model", default="default")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the demo in ``--out``; 0 when every block was computed, 1 otherwise (see :func:`run_demo`)."""
    return _demo.run_demo(args.out, args.n, args.seed, args.workers, args.mc_samples, args.model,
                          not args.no_progress)
