"""``python -m survey_infer.cli``: the same as the ``survey-infer`` command."""
import sys

from . import main

sys.exit(main())
