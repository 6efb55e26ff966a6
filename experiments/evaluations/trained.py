"""Moved to `experiments/trained.py` (it uses the runner, which imports this package). This name is kept only
until experiments/__main__.py imports `experiments.trained`; then delete this file."""
from experiments.trained import export_row, load_trained_row  # noqa: F401
