"""``survey-infer simulate``: its options and how they become a library call."""
from ..simulate.cli import register  # noqa: F401  (moving here: issue 14)
