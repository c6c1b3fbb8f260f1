"""``survey-infer ingest``: its options and how they become a library call."""
from ..io.ingest import register  # noqa: F401  (moving here: issue 14)
