"""``survey-infer demo``: its options and how they become a library call."""
from ..demo import register  # noqa: F401  (moving here: issue 14)
