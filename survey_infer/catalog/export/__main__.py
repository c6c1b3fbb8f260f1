"""``python -m survey_infer.catalog.export --markdown zwarn|columns``: print a table embedded in docs/catalog.md."""
from __future__ import annotations

import argparse
import sys

from .docs import columns_markdown, zwarn_markdown


def main(argv: list[str] | None = None) -> int:
    """Print the zwarn bit table or the column table as Markdown (exit status 0)."""
    ap = argparse.ArgumentParser(prog="python -m survey_infer.catalog.export",
                                 description="Print the generated tables embedded in docs/catalog.md.")
    ap.add_argument("--markdown", choices=("zwarn", "columns"), required=True)
    args = ap.parse_args(argv)
    sys.stdout.write(zwarn_markdown() if args.markdown == "zwarn" else columns_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
