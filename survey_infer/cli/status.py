"""``survey-infer status``: its options and how they become a library call."""
from ..pipeline.status import register  # noqa: F401  (moving here: issue 14)
