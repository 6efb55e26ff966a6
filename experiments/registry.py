"""Every experiment (paper table) of the suite, in the order `python -m experiments list` shows them."""
from datamodules.errors import UsageError
from experiments import ablation_embedding_sharing, ablation_nsp

EXPERIMENTS = {e.id: e for e in (
    ablation_nsp.EXPERIMENT,
    ablation_embedding_sharing.EXPERIMENT,
)}


def get_experiment(name: str):
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r} (valid: {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[name]
