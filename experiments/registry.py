"""Every experiment (paper table) of the suite, in the order `python -m experiments list` shows them."""
from datamodules.errors import UsageError
from experiments import (ablation_batch_size, ablation_deberta, ablation_electra_efficiency, ablation_electra_sharing,
                         ablation_electra_small, ablation_embedding_sharing, ablation_masking, ablation_nsp,
                         ablation_sift, ablation_text_encoding)

EXPERIMENTS = {e.id: e for e in (
    ablation_nsp.EXPERIMENT,
    ablation_embedding_sharing.EXPERIMENT,
    ablation_masking.EXPERIMENT,
    ablation_batch_size.EXPERIMENT,
    ablation_text_encoding.EXPERIMENT,
    ablation_electra_efficiency.EXPERIMENT,
    ablation_electra_sharing.EXPERIMENT,
    ablation_electra_small.EXPERIMENT,
    ablation_deberta.EXPERIMENT,
    ablation_sift.EXPERIMENT,
)}


def get_experiment(name: str):
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r} (valid: {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[name]
