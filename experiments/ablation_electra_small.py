"""ELECTRA Table 1's core (Clark et al. 2020, §3.3): ELECTRA-Small vs BERT-Small at equal training FLOPs.

ELECTRA-Small's shape scaled to the preset: embeddings half the hidden size, a 1/4-width generator. The
paper's "ELECTRA-Small at 6.25 / 12.5 / 25 / 50% of training" are models trained for less time: here each
is its own run of that share of the row's steps, with its own warm-up and decay (`early_points`).
"""
from datamodules.masking import MaskingConfig
from datamodules.pretraining import PretrainingDataConfig
from experiments.verdicts.claims import AtLeast
from experiments.spec import Experiment, Row, RunConfig
from lightning_modules.base import ELECTRA_RECIPE
from lightning_modules.rtd import HEAD_BIAS_PRIOR_NOTE, RTDConfig

FRACTIONS = (0.0625, 0.125, 0.25, 0.5)
HALF_WIDTH_EMBEDDINGS = {"encoder.embedding_size": lambda c: c.encoder.hidden_size // 2}

EXPERIMENT = Experiment(
    id="ablation-electra-small",
    title="ELECTRA Table 1: ELECTRA-Small vs BERT-Small at equal FLOPs",
    paper="Clark et al. 2020 (ELECTRA), Table 1; paper: 1.4e18 FLOPs, GLUE dev score",
    base=RunConfig(objective="rtd", data=PretrainingDataConfig(masking=MaskingConfig(replacement="electra")),
                   optim=ELECTRA_RECIPE,
                   rtd=RTDConfig(sharing="es", generator_width=0.25, head_bias_prior=True)),
    rows=(
        Row("ELECTRA-Small", HALF_WIDTH_EMBEDDINGS | {"evaluate_at": FRACTIONS},
            {"GLUE": 79.9, "GLUE @50%": 79.0, "GLUE @25%": 77.7, "GLUE @12.5%": 76.0, "GLUE @6.25%": 74.1}),
        Row("BERT-Small", HALF_WIDTH_EMBEDDINGS | {"objective": "mlm", "data.masking.replacement": "bert"},
            {"GLUE": 75.1}),
    ),
    metrics=("disc_auc", "disc_auc_bigram", "disc_loss", "disc_token_cosine", "generator_mlm_acc", "downstream_avg", "downstream_avg@0.5", "downstream_avg@0.25", "downstream_avg@0.125",
             "downstream_avg@0.0625", "sentiment", "topic"),
    paper_columns=("GLUE", "GLUE @50%", "GLUE @25%", "GLUE @12.5%", "GLUE @6.25%"),
    budget="flops",
    claims=(
        AtLeast("RTD beats MLM at equal compute: ELECTRA-Small >= BERT-Small", "downstream_avg",
              a="ELECTRA-Small", b="BERT-Small"),
        AtLeast("Early checkpoints already do well: ELECTRA-Small at 25% of training >= BERT-Small at 100%", "downstream_avg@0.25", a="ELECTRA-Small", b="BERT-Small", metric_b="downstream_avg"),
    ),
    notes=HEAD_BIAS_PRIOR_NOTE,
)
