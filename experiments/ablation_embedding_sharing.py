"""DeBERTaV3 (He, Gao, Chen 2023, §3): ES vs NES vs GDES on the DeBERTa encoder, plus an MLM baseline.

The generator has the discriminator's width and half its depth; lambda = 50; the generator's input
is masked 100% with [MASK] (DeBERTa-RTD). Embedding similarity = the mean cosine similarity over all
distinct pairs of non-special token embeddings, computed exactly (ablations/sharing.py), for E_G and E_D.
"""
from ablations.config import EncoderConfig
from datamodules.masking import MaskingConfig
from datamodules.pretraining import PretrainingDataConfig
from experiments.spec import Claim, Experiment, Row, RunConfig
from lightning_modules.rtd import HEAD_BIAS_PRIOR_NOTE, RTDConfig

EXPERIMENT = Experiment(
    id="ablation-embedding-sharing",
    title="DeBERTaV3: embedding sharing (ES / NES / GDES)",
    paper="He, Gao, Chen 2023 (DeBERTaV3), §3: embedding sharing (paper numbers UNVERIFIED against the PDF)",
    base=RunConfig(
        objective="rtd",
        encoder=EncoderConfig(attention="disentangled", type_vocab_size=0),
        data=PretrainingDataConfig(masking=MaskingConfig(replacement="deberta-rtd")),
        rtd=RTDConfig(generator_width=1.0, generator_depth=0.5, rtd_weight=50.0, head_bias_prior=True),
    ),
    rows=(
        Row("MLM", {"objective": "mlm", "data.masking.replacement": "bert"}, {}, note="DeBERTa trained with MLM"),
        Row("ES", {"rtd.sharing": "es"},
            {"MNLI-m": 88.8, "MNLI-mm": 88.4, "SQuAD 2.0 F1": 86.3, "SQuAD 2.0 EM": 83.5}),
        Row("NES", {"rtd.sharing": "nes"},
            {"MNLI-m": 88.3, "MNLI-mm": 87.9, "SQuAD 2.0 F1": 85.3, "SQuAD 2.0 EM": 82.7}),
        Row("GDES", {"rtd.sharing": "gdes"},
            {"MNLI-m": 89.3, "MNLI-mm": 89.0, "SQuAD 2.0 F1": 87.2, "SQuAD 2.0 EM": 84.5}),
    ),
    metrics=("cosine_generator", "cosine_discriminator", "mlm_acc", "generator_mlm_acc", "disc_acc", "disc_auc",
             "disc_loss", "disc_token_cosine", "sentiment", "topic", "downstream_avg"),
    paper_columns=("MNLI-m", "MNLI-mm", "SQuAD 2.0 F1", "SQuAD 2.0 EM"),
    claims=(
        Claim("NES: E_G is more self-similar than E_D", "gap", "cosine_generator", a="NES", metric_b="cosine_discriminator"),
        Claim("GDES: E_G is more self-similar than E_D", "gap", "cosine_generator", a="GDES", metric_b="cosine_discriminator"),
        Claim("The E_G - E_D similarity gap is smaller under GDES than under NES", "gap_smaller", "cosine_generator",
              a="GDES", b="NES", metric_b="cosine_discriminator"),
        Claim("Downstream order GDES >= ES >= NES (average)", "order", "downstream_avg", among=("GDES", "ES", "NES")),
    ),
    notes="Cosine similarity: mean over all distinct pairs of non-special token embeddings (exact). The paper's "
          "exact cosine values could not be verified (shared/papers.md), so only its verified finding is checked: "
          "E_G more self-similar than E_D under NES and GDES, with a smaller gap under GDES." + " " + HEAD_BIAS_PRIOR_NOTE,
)
