"""``survey-infer train``: its options and how they become a library call."""
from ..train import register  # noqa: F401  (moving here: issue 14)
