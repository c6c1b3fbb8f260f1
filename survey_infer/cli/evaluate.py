"""``survey-infer evaluate``: its options and how they become a library call."""
from ..evaluate import register  # noqa: F401  (moving here: issue 14)
