"""``survey-infer run``: its options and how they become a library call."""
from ..pipeline.cli import register  # noqa: F401  (moving here: issue 14)
