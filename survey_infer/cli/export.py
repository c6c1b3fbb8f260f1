"""``survey-infer export``: its options and how they become a library call
(:func:`survey_infer.catalog.export.export_catalog`)."""
from __future__ import annotations

import argparse

from ..catalog.export import FORMATS, OutputExistsError, export_catalog
from ..errors import UserError


def run(args: argparse.Namespace) -> int:
    """Export ``args.catalog`` as the options say and print ``wrote FILE (size)``.

    Returns
    -------
    int
        0.

    Raises
    ------
    UserError
        ``--chunk-rows`` below 1, or ``--out`` exists without ``--overwrite`` (in the command's own words), and
        every error :func:`~survey_infer.catalog.export.export_catalog` raises.
    """
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise UserError(f"--chunk-rows must be >= 1, got {args.chunk_rows}")
    try:
        out = export_catalog(args.catalog, args.out, fmt=args.format, with_pz=args.with_pz,
                             overwrite=args.overwrite, chunk_rows=args.chunk_rows)
    except OutputExistsError as exc:  # the same error in the command's own words
        raise UserError(f"{exc.path} {exc.what}; pass --overwrite to replace it") from None
    size = out.stat().st_size
    human = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"
    print(f"wrote {out} ({human})")
    return 0


def register(subparsers) -> None:
    """Add ``export CATALOG --out FILE [--format fits|parquet] [--with-pz] [--overwrite] [--chunk-rows N]``."""
    p = subparsers.add_parser(
        "export",
        help="export a catalog to FITS or Parquet (units, descriptions, provenance, zwarn bits)",
        description="Export a survey-infer catalog to a FITS BINTABLE (units in TUNIT, descriptions in "
                    "TCOMM/TTYPE comments, provenance keywords, zwarn bit table, CHECKSUM) or to Parquet (units "
                    "and descriptions in the schema metadata). Streams in row blocks; never loads the catalog.",
    )
    p.add_argument("catalog", help="catalog (Zarr) written by 'survey-infer run'")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: parquet when --out ends in .parquet or .pq, else fits)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--with-pz", action="store_true", help="also export pz(object, zbin) as a vector column")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows per streamed block (default: whole Zarr chunks, ~32 MiB per block)")
    p.set_defaults(func=run)
