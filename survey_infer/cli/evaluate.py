"""``survey-infer evaluate``: its options and how they become a library call
(:func:`survey_infer.evaluate.evaluate_catalog`)."""
from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand and its options to ``subparsers``; return its parser."""
    p = subparsers.add_parser("evaluate", help="accuracy / calibration / screening metrics against truth columns")
    p.add_argument("catalog")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("--plots", default=None, help="folder for PNG plots")
    p.add_argument("--truth", default=None,
                   help="the input survey store: truth columns the catalog lacks (template family, Halpha EW)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Evaluate the catalog; print the metrics as a table (or JSON with ``--json``) on stdout.

    Returns
    -------
    int
        Exit status 0.

    Raises
    ------
    CatalogError, SurveyStoreError
        The catalog or the ``--truth`` store cannot be opened (all :class:`~survey_infer.errors.UserError`).
    UserError
        As :func:`survey_infer.evaluate.evaluate_catalog`.
    """
    from ..catalog.store import open_catalog
    from ..evaluate import evaluate_catalog, format_report
    from ..io.survey_store import open_survey

    truth = open_survey(args.truth) if args.truth is not None else None
    m = evaluate_catalog(open_catalog(args.catalog), args.plots, truth)
    print(json.dumps(m, indent=1) if args.json else format_report(m))
    if m.get("plots_written") and not args.json:
        print("plots written: " + ", ".join(m["plots_written"]))
    return 0
