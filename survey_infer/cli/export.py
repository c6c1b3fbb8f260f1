"""``survey-infer export``: its options and how they become a library call."""
from ..catalog.export import register  # noqa: F401  (moving here: issue 14)
