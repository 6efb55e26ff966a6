"""ELECTRA §3.2 (Clark et al. 2020): weight sharing between generator and discriminator, and generator size.

Tying rows use a generator of the discriminator's size (as the paper does for this comparison); the
size sweep ties token and position embeddings (ES) and scales the generator's width from 1/8 to 1.
"""
from datamodules.masking import MaskingConfig
from datamodules.pretraining import PretrainingDataConfig
from experiments.verdicts.claims import AtLeast, Best, Close
from experiments.spec import Experiment, Row, RunConfig
from lightning_modules.base import ELECTRA_RECIPE
from lightning_modules.rtd import HEAD_BIAS_PRIOR_NOTE, RTDConfig

SWEEP = (("1/8", 0.125), ("1/4", 0.25), ("1/2", 0.5), ("3/4", 0.75), ("1", 1.0))

EXPERIMENT = Experiment(
    id="ablation-electra-sharing",
    title="ELECTRA 3.2: weight tying and generator size",
    paper="Clark et al. 2020 (ELECTRA), §3.2 and Figure 3 (left); paper: GLUE dev score",
    base=RunConfig(objective="rtd", data=PretrainingDataConfig(masking=MaskingConfig(replacement="electra")),
                   optim=ELECTRA_RECIPE,
                   rtd=RTDConfig(sharing="es", generator_width=1.0, head_bias_prior=True)),
    rows=(
        Row("no tying", {"rtd.sharing": "nes", "rtd.generator_width": 1.0}, {"GLUE": 83.6}),
        Row("tie token embeddings", {"rtd.sharing": "es", "rtd.generator_width": 1.0}, {"GLUE": 84.3}),
        Row("tie all weights", {"rtd.sharing": "all", "rtd.generator_width": 1.0}, {"GLUE": 84.4}),
        *(Row(f"generator {name} width", {"rtd.sharing": "es", "rtd.generator_width": width}) for name, width in SWEEP),
    ),
    metrics=("generator_mlm_acc", "disc_acc", "disc_auc", "disc_auc_bigram", "disc_loss", "disc_token_cosine", "sentiment", "topic",
             "downstream_avg"),
    paper_columns=("GLUE",),
    claims=(
        AtLeast("Tying token embeddings helps: tie token embeddings >= no tying", "downstream_avg",
              a="tie token embeddings", b="no tying"),
        Close("Tying all weights adds little: |tie all - tie embeddings| <= 0.5", "downstream_avg",
              a="tie all weights", b="tie token embeddings", margin=0.5,
              margin_source="the suite's choice, about the paper's own difference (tie all 84.4 against tie token "
                            "embeddings 84.3: +0.1 GLUE)"),
        Best("Generators of 1/4 to 1/2 of the discriminator's width are best", "downstream_avg",
              among=tuple(f"generator {name} width" for name, _ in SWEEP),
              winners=("generator 1/4 width", "generator 1/2 width")),
    ),
    notes="The three tying rows use a generator of the discriminator's size, as the paper does for this comparison. "
          "Such a generator's replacements are hard to spot, so at a small budget its discriminator learns slowly "
          "(`disc_auc`, against its own generator) and a row at AUC 0.6 or below decides no claim; the paper's own "
          "Figure 3 makes the same point (its best generators are 1/4 to 1/2 the discriminator's width). Where "
          "that happens, the claims need more tokens than the preset gives, not more seeds: docs/what-models-learn.md "
          "has two of them on a GPU, at half of a run of five times `cpu`'s tokens. " + HEAD_BIAS_PRIOR_NOTE,
)
