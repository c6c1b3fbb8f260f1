"""``survey-infer inspect``: its options and how they become a library call
(:func:`survey_infer.catalog.inspect.inspect_object`)."""
from __future__ import annotations

import argparse

from ..catalog.inspect import inspect_object


def run(args: argparse.Namespace) -> int:
    """Draw the inspection figure of ``args.object`` and print ``wrote PNG``.

    Returns
    -------
    int
        0.

    Raises
    ------
    UserError, CatalogError, FileNotFoundError
        As :func:`~survey_infer.catalog.inspect.inspect_object` (printed as one line, exit status 2).
    """
    out = inspect_object(args.catalog, args.object, args.out, input_store=args.input)
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    """Add ``inspect CATALOG --object ID [--input STORE] --out PNG``."""
    p = subparsers.add_parser(
        "inspect",
        help="plot one object's spectrum, lines at the estimated z, redshift PDF and flags",
        description="Inspection figure for one object: the spectrum (masked channels shaded, expected lines at "
                    "the estimated z), the redshift PDF with its 68%/95% intervals (and z_true when known) and "
                    "the zwarn flags decoded.",
    )
    p.add_argument("catalog", help="catalog (Zarr) written by 'survey-infer run'")
    p.add_argument("--object", type=int, required=True, metavar="ID", help="object_id to inspect")
    p.add_argument("--input", default=None, metavar="STORE",
                   help="survey store with the spectrum (default: the store recorded in the catalog)")
    p.add_argument("--out", required=True, metavar="PNG", help="output PNG file")
    p.set_defaults(func=run)
