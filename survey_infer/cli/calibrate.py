"""``survey-infer calibrate``: its options and how they become a library call."""
from ..calibrate import register  # noqa: F401  (moving here: issue 14)
