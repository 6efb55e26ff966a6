"""The escape study moved to `studies/plateau.py` (`python -m studies escape ...`). This name is kept only until
tests/test_experiments.py imports `studies.plateau`; then delete this file."""
from studies.plateau import *  # noqa: F401,F403
from studies.plateau import main, summary  # noqa: F401
