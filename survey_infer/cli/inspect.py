"""``survey-infer inspect``: its options and how they become a library call."""
from ..catalog.inspect import register  # noqa: F401  (moving here: issue 14)
