"""``survey-infer inspect``: its options and how they become a library call."""
from ..inspect_plot import register  # noqa: F401  (moving here: issue 14)
