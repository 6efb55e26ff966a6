"""DeBERTa §3.3: scale-invariant fine-tuning (SiFT), with and without, from the same pretrained checkpoint.

Both rows have the same pretraining config and seed, so the runner pretrains once and both fine-tune
the same weights (the pretraining work directory is keyed by the pretraining config). The paper shows
SiFT only for its 1.5B model; this table reports whether it helps at these sizes.
"""
from ablations.config import EncoderConfig
from experiments.verdicts.claims import AtLeast
from experiments.spec import Experiment, Row, RunConfig

EXPERIMENT = Experiment(
    id="ablation-sift",
    title="DeBERTa: fine-tuning with and without SiFT",
    paper="He et al. 2021 (DeBERTa), §3.3 (SiFT; shown for DeBERTa-1.5B only, no ablation table)",
    base=RunConfig(objective="mlm", encoder=EncoderConfig(attention="disentangled", type_vocab_size=0)),
    rows=(
        Row("without SiFT", {"finetune.sift": False}),
        Row("with SiFT", {"finetune.sift": True}),
    ),
    metrics=("sentiment", "topic", "downstream_avg"),
    paper_columns=(),
    claims=(
        AtLeast("SiFT helps at this size: with SiFT >= without SiFT (downstream average)", "downstream_avg", a="with SiFT", b="without SiFT"),
    ),
)
