"""RoBERTa §4.4: byte-level BPE (GPT-2 style, 50K) vs BERT-style WordPiece (30K), same model otherwise.

The vocabulary sizes keep the paper's 50 : 30 ratio at every preset. Held-out MLM loss is per token of
each row's own vocabulary, so it does not compare across rows; the downstream scores do. The unknown-token
rate is measured on the held-out documents. The paper published no table, only "slight differences".
"""
from experiments.verdicts.claims import Close
from experiments.spec import Experiment, Row, RunConfig

EXPERIMENT = Experiment(
    id="ablation-text-encoding",
    title="RoBERTa 4.4: byte-level BPE vs WordPiece",
    paper="Liu et al. 2019 (RoBERTa), §4.4 (no table published: 'only slight differences')",
    base=RunConfig(objective="mlm"),
    rows=(
        Row("byte-level BPE", {"data.tokenizer.kind": "bpe"}),
        Row("WordPiece", {"data.tokenizer.kind": "wordpiece",
                          "data.tokenizer.vocab_size": lambda c: round(c.data.tokenizer.vocab_size * 30 / 50)}),
    ),
    metrics=("parameters", "unk_rate", "mlm_loss", "sentiment", "topic", "downstream_avg"),
    paper_columns=(),
    claims=(
        Close("Only slight differences: |BPE - WordPiece| <= 1 point (downstream average)", "downstream_avg", a="byte-level BPE", b="WordPiece", margin=1.0,
              margin_source="the suite's choice: RoBERTa §4.4 says only slight differences and publishes no figures"),
    ),
)
