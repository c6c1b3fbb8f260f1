"""``python -m survey_infer`` = the ``survey-infer`` command."""
import sys

from survey_infer.cli import main

sys.exit(main())
