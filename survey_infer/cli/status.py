"""``survey-infer status``: its options and how they become a call of
:func:`survey_infer.pipeline.status.catalog_status`."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    """Add the ``status`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser("status", help="progress, failures and fingerprint of a catalog",
                              description="Done / failed / pending blocks and objects of every job of a catalog, "
                                          "failures with their reasons, the lock, which run wrote how many rows, "
                                          "and the time left at the measured rate.")
    p.add_argument("catalog")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--verify", action="store_true",
                   help="check every done block as a resuming run would (reads the catalog; slower)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """``survey-infer status``: print the catalog's status (text, or JSON with ``--json``); returns 0."""
    from ..pipeline.status import catalog_status, format_status

    st = catalog_status(args.catalog, verify=args.verify)
    print(json.dumps(st, indent=1, default=str) if args.json else format_status(st))
    return 0
