"""Replaced token detection: an MLM generator and a discriminator trained together (ELECTRA; DeBERTaV3).

    x_corrupt = x_masked with every selected position filled by a sample of G (no gradient through it)
    is_replaced[t] = x_corrupt[t] != x[t]        (a sample equal to the original is labelled original)
    loss = L_MLM(G) + lambda * L_RTD(D),  lambda = 50

Embedding sharing between G and D is `sharing` (ES / NES / GDES / all, see ablations/sharing.py). The
generator is a fraction of D's width (ELECTRA) and/or depth (DeBERTaV3 keeps the width, halves depth).
ELECTRA's efficiency-analysis variants (Table 5) are settings of the same module:
- `electra-15`: the RTD loss only over the masked positions;
- `replace-mlm`: D is trained with MLM on the masked positions of x_corrupt (no [MASK] mismatch);
- `all-tokens-mlm`: D predicts every token of x_corrupt, with a copy gate
  p(x_t) = sigma_t * 1[x_t = x_corrupt_t] + (1 - sigma_t) * p_MLM(x_t).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAUROC

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from ablations.heads import MLMHead, RTDHead, init_head
from ablations.sharing import SHARING, average_cosine_similarity, materialized_discriminator, share_embeddings
from datamodules.errors import require
from datamodules.tokenization import NUM_SPECIAL
from lightning_modules.base import ObjectiveModule, OptimConfig
from lightning_modules.mlm import HeldoutMLM, masked_lm, mlm_loss_and_accuracy

VARIANTS = ("electra", "electra-15", "replace-mlm", "all-tokens-mlm")


@dataclass(frozen=True)
class RTDConfig:
    """The generator, the sharing of embeddings and the discriminator's loss."""

    sharing: str = "es"  # es (ELECTRA) | nes | gdes (DeBERTaV3) | all (tie every weight; same-size G)
    rtd_weight: float = 50.0  # lambda
    generator_width: float = 0.25  # G's hidden size / D's (ELECTRA: 1/4 to 1/2 is best)
    generator_depth: float = 1.0  # G's layers / D's (DeBERTaV3: 0.5 at the same width)
    temperature: float = 1.0  # the generator's sampling temperature
    variant: str = "electra"  # electra | electra-15 | replace-mlm | all-tokens-mlm
    # departure (ELECTRA's code starts the bias at 0): start the RTD head's output bias at the log-odds of
    # the share of replaced tokens at initialisation. At 0 every original token's BCE gradient points the
    # same way, and under Adam the whole network rather than this one bias absorbs the base rate: the
    # discriminator's token states collapse to one vector within ~30 steps (docs/what-models-learn.md, "RTD at small").
    head_bias_prior: bool = False
    # departure (off at 1.0; ELECTRA trains G and D at one rate): D's learning rate (its encoder and heads) as a
    # multiple of the peak, G's kept. A higher rate for both makes G's replacements harder as fast as D
    # learns to spot them (docs/what-models-learn.md, "The AUC against the learning rate"); this moves D alone.
    # Tables shared with G (ES) and GDES's base stay G's: only what D alone owns is scaled.
    discriminator_lr_scale: float = 1.0

    def validate(self) -> None:
        problems = []
        if self.sharing not in SHARING:
            problems.append(f"unknown sharing {self.sharing!r} (valid: {', '.join(SHARING)})")
        if self.variant not in VARIANTS:
            problems.append(f"unknown RTD variant {self.variant!r} (valid: {', '.join(VARIANTS)})")
        if not (0 < self.generator_width <= 1 and 0 < self.generator_depth <= 1):
            problems.append("the generator cannot be larger than the discriminator (width and depth in (0, 1])")
        if self.sharing == "all" and (self.generator_width, self.generator_depth) != (1.0, 1.0):
            problems.append("sharing 'all' ties every weight, so the generator must be the discriminator's size")
        if self.temperature <= 0:
            problems.append("temperature must be > 0")
        if self.discriminator_lr_scale <= 0:
            problems.append("discriminator_lr_scale must be > 0")
        if self.sharing == "all" and self.discriminator_lr_scale != 1.0:
            problems.append("sharing 'all' makes G and D one encoder, so D cannot have a learning rate of its own "
                            "(discriminator_lr_scale must be 1)")
        require(problems, "RTD config")


# Said in the notes of every table whose rows set `head_bias_prior`.
HEAD_BIAS_PRIOR_NOTE = (
    "Departure (`rtd.head_bias_prior`): the RTD head's output bias starts at the log-odds of the replaced share "
    "(about 15%; All-Tokens MLM's copy gate: of the copied share, about 85%), not at ELECTRA's 0. At 0, every "
    "discriminator here collapsed within ~30 steps (all held-out "
    "token states one vector, logits flat); see docs/what-models-learn.md, 'RTD at small'.")


def replaced_share_at_init(masking_probability: float, vocab_size: int, variant: str) -> float:
    """The share of RTD-loss tokens that are replaced while G is still untrained (its samples nearly
    uniform, so a sample equals the original about once in V draws): every selected token for ELECTRA 15%
    (the loss covers only those), the masking probability of all tokens otherwise."""
    replaced = 1.0 - 1.0 / max(2, vocab_size - NUM_SPECIAL)
    return replaced if variant == "electra-15" else masking_probability * replaced


# The variants with a binary head whose bias `head_bias_prior` starts at its base rate: the RTD head, and
# All-Tokens MLM's copy gate (its positive class, "copy", is every token not replaced: about 85%).
BINARY_HEAD_VARIANTS = ("electra", "electra-15", "all-tokens-mlm")


def head_bias_at_prior(masking_probability: float, vocab_size: int, variant: str) -> float:
    """The log-odds of the binary head's positive class at initialisation: replaced for RTD, copied for
    All-Tokens MLM's gate. At 0 instead, the gate collapsed All-Tokens MLM's discriminator at `cpu` as the
    RTD head had ELECTRA's (docs/what-models-learn.md, "RTD at small")."""
    replaced = replaced_share_at_init(masking_probability, vocab_size, variant)
    positive = 1.0 - replaced if variant == "all-tokens-mlm" else replaced
    return math.log(positive / (1.0 - positive))


def generator_config(discriminator: EncoderConfig, rtd: RTDConfig) -> EncoderConfig:
    """G is D scaled in width and/or depth; it keeps D's embedding size so tables can be shared."""
    width = rtd.generator_width
    heads = max(1, round(discriminator.num_heads * width))
    hidden = max(heads, round(discriminator.hidden_size * width / heads) * heads)
    return discriminator.replace(
        hidden_size=hidden, num_heads=heads, ffn_size=max(1, round(discriminator.ffn_size * width)),
        num_layers=max(1, round(discriminator.num_layers * rtd.generator_depth)),
        embedding_size=discriminator.embedding_dim,
    )


class TokenCosine(Metric):
    """Mean cosine similarity over all pairs of distinct token states, exactly, in O(n d): with unit rows
    u_i and s = sum_i u_i, sum_{i != j} u_i . u_j = |s|^2 - n (as in ablations.sharing). Summed over
    batches and devices, so it covers every held-out token. Near 1, every token has the same state."""

    def __init__(self, width: int):
        super().__init__()
        self.add_state("unit_sum", torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, states: torch.Tensor) -> None:
        self.unit_sum += F.normalize(states.double(), dim=-1).sum(0)
        self.count += states.shape[0]

    def compute(self) -> torch.Tensor:
        n = self.count
        return (self.unit_sum @ self.unit_sum - n) / (n * (n - 1)).clamp(min=1)


# A discriminator whose token states are this alike, or whose logits are this flat, says the same thing
# for every token: it has collapsed (a learning one stays far below; docs/what-models-learn.md, "RTD at small").
COLLAPSED_TOKEN_COSINE = 0.9
COLLAPSED_LOGIT_STD = 0.05


def sample_from_softmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """One token per row (N, V) from softmax(logits / T), as ELECTRA's Gumbel-max samples, by the inverse of
    each row's cumulative distribution: one uniform per row instead of V (on the CPU torch draws them one
    at a time; the timings: docs/speed.md, "Where it comes from"), without a host sync."""
    cumulative = torch.softmax(logits.float() / temperature, -1).cumsum_(-1)
    uniform = torch.rand(logits.shape[0], 1, device=logits.device, generator=generator) * cumulative[:, -1:]
    # the first token whose cumulative probability exceeds the uniform: a token of probability 0 never is
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def masked_positions(mask: torch.Tensor, batch: dict) -> torch.Tensor:
    """The positions (a bool tensor shaped like `mask`) the MLM masking chose, from their flat indices."""
    return torch.zeros_like(mask, dtype=torch.bool).reshape(-1).index_fill(0, batch["mlm_positions"], True).view_as(mask)


class RTDModule(ObjectiveModule):
    def __init__(self, encoder: EncoderConfig, optim: OptimConfig, rtd: RTDConfig, masking_probability: float = 0.15):
        super().__init__(optim)
        rtd.validate()
        self.save_hyperparameters()
        self.rtd = rtd
        discriminator_config = encoder.replace(emd=False)  # the EMD belongs to an MLM head; D has none
        self.generator = Encoder(generator_config(encoder, rtd)) if rtd.sharing != "all" else Encoder(discriminator_config)
        self.generator_head = init_head(MLMHead(self.generator.config))
        self.discriminator = self.generator if rtd.sharing == "all" else Encoder(discriminator_config)
        share_embeddings(self.generator, self.discriminator, rtd.sharing)
        if rtd.variant in ("replace-mlm", "all-tokens-mlm"):
            self.discriminator_mlm_head = init_head(MLMHead(discriminator_config))
        if rtd.variant in ("electra", "electra-15", "all-tokens-mlm"):
            self.rtd_head = init_head(RTDHead(discriminator_config))  # for all-tokens-mlm: the copy gate
        if rtd.head_bias_prior and rtd.variant in BINARY_HEAD_VARIANTS:
            torch.nn.init.constant_(self.rtd_head.out.bias,
                                    head_bias_at_prior(masking_probability, encoder.vocab_size, rtd.variant))
        # where the tables start (DeBERTaV3's cosine claims are about what training changed)
        self.initial_embedding_similarity = self.embedding_similarity()
        self.heldout = HeldoutMLM()
        self.val_metrics = torch.nn.ModuleDict({name: MeanMetric() for name in (
            "disc_acc", "disc_loss", "replaced_fraction", "precision", "recall")})
        self.val_auc = BinaryAUROC()
        # ELECTRA 15% is trained at the masked positions only, and is judged there: elsewhere it never saw a
        # token and calls nearly all of them replaced (its AUC over every token was 0.52 where this one was 0.75)
        self.val_auc_masked = BinaryAUROC()
        self.val_masked_replaced = MeanMetric()  # logged as replaced_fraction_masked; the AUC needs both classes
        # the learning check: are D's token states still distinct, and do its logits still differ?
        self.val_token_cosine = TokenCosine(discriminator_config.hidden_size)
        self.val_logit_mean, self.val_logit_square = MeanMetric(), MeanMetric()
        self.collapse_reported = False
        self.val_sampler_seed = 0

    def learning_rate_scale(self, name: str) -> float:
        owned_by_discriminator = name.startswith(("discriminator.", "rtd_head.", "discriminator_mlm_head."))
        scale = self.rtd.discriminator_lr_scale if owned_by_discriminator else 1.0
        return super().learning_rate_scale(name) * scale

    # -- the step -----------------------------------------------------------------------------------

    def corrupt(self, batch, generator_logits, sampler: torch.Generator | None = None):
        """Fill every masked position with a generator sample; return (corrupted ids, originals, replaced)."""
        positions = batch["mlm_positions"]
        with torch.no_grad():
            samples = sample_from_softmax(generator_logits.detach(), self.rtd.temperature, sampler)
        original = batch["input_ids"].reshape(-1).index_copy(0, positions, batch["mlm_labels"]).view_as(batch["input_ids"])
        corrupted = batch["input_ids"].reshape(-1).index_copy(0, positions, samples).view_as(batch["input_ids"])
        replaced = (corrupted != original) & batch["attention_mask"]
        return corrupted, original, replaced

    def losses(self, batch, sampler: torch.Generator | None = None):
        return self.forward_step(batch, sampler)[0]

    def forward_step(self, batch, sampler: torch.Generator | None = None):
        """The losses and stats, plus what validation reuses: generator logits, RTD logits, replaced."""
        generator_logits, _ = masked_lm(self.generator, self.generator_head, batch)
        labels = batch["mlm_labels"]
        mlm, generator_accuracy = mlm_loss_and_accuracy(generator_logits, labels)
        corrupted, original, replaced = self.corrupt(batch, generator_logits, sampler)
        mask = batch["attention_mask"]
        hidden = self.discriminator(corrupted, mask, batch["token_type_ids"])
        out = {"generator_mlm_loss": mlm,
               "generator_mlm_acc": generator_accuracy,
               "replaced_fraction": replaced.sum() / max(1, labels.numel())}
        variant = self.rtd.variant
        extras = {"generator_logits": generator_logits, "replaced": replaced, "hidden": hidden}
        if variant in ("electra", "electra-15"):
            logits = self.rtd_head(hidden)
            weights = masked_positions(mask, batch).float() if variant == "electra-15" else mask.float()
            per_token = F.binary_cross_entropy_with_logits(logits.float(), replaced.float(), reduction="none")
            disc = (per_token * weights).sum() / weights.sum().clamp(min=1)
            predicted = logits > 0
            out |= self._detection_stats(predicted, replaced, mask)
            out["disc_loss"] = disc
            out["loss"] = mlm + self.rtd.rtd_weight * disc
            extras["rtd_logits"] = logits
        elif variant == "replace-mlm":
            logits = self.discriminator_mlm_head(hidden, batch["mlm_positions"], self.discriminator.embeddings.word.weight)
            disc, disc_accuracy = mlm_loss_and_accuracy(logits, labels)
            out |= {"disc_mlm_loss": disc, "disc_mlm_acc": disc_accuracy}
            out["loss"] = mlm + disc
        else:  # all-tokens-mlm with the copy mechanism
            disc = self._all_tokens_loss(hidden, corrupted, original, mask)
            out["disc_mlm_loss"] = disc
            out["loss"] = mlm + disc
        return out, extras

    def _all_tokens_loss(self, hidden, corrupted, original, mask):
        flat_mask = mask.reshape(-1)
        log_p_mlm = F.log_softmax(
            self.discriminator_mlm_head(hidden, None, self.discriminator.embeddings.word.weight).float(), -1)
        log_p_mlm = log_p_mlm.reshape(-1, log_p_mlm.shape[-1]).gather(1, original.reshape(-1, 1)).squeeze(1)
        copy_logit = self.rtd_head(hidden).float().reshape(-1)
        is_copy = (corrupted == original).reshape(-1)
        # log(sigma * 1[copy] + (1 - sigma) p_mlm), computed in log space
        log_copy = F.logsigmoid(copy_logit)
        log_no_copy = F.logsigmoid(-copy_logit) + log_p_mlm
        log_p = torch.where(is_copy, torch.logaddexp(log_copy, log_no_copy), log_no_copy)
        return -(log_p * flat_mask).sum() / flat_mask.sum().clamp(min=1)

    @staticmethod
    def _detection_stats(predicted, replaced, mask):
        true_positive = (predicted & replaced).sum().float()
        return {
            "disc_acc": ((predicted == replaced) & mask).sum() / mask.sum().clamp(min=1),
            "precision": true_positive / (predicted & mask).sum().clamp(min=1),
            "recall": true_positive / replaced.sum().clamp(min=1),
        }

    # -- validation -----------------------------------------------------------------------------------

    def on_validation_epoch_start(self):
        # the same generator samples for every validation pass, so rows are compared on equal inputs
        self._sampler = torch.Generator(device=self.device).manual_seed(self.val_sampler_seed)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx != 0:
            return
        out, extras = self.forward_step(batch, sampler=self._sampler)
        self.heldout.update(extras["generator_logits"], batch["mlm_labels"])
        weight = batch["attention_mask"].sum()
        for name, metric in self.val_metrics.items():
            if name in out:
                metric.update(out[name], weight=weight)
        mask = batch["attention_mask"]
        self.val_token_cosine.update(extras["hidden"][mask])
        if "rtd_logits" in extras:
            logits = extras["rtd_logits"][mask].float()  # fp32 from the head (see RTDHead)
            self.val_auc.update(logits, extras["replaced"][mask].long())
            if self.rtd.variant == "electra-15":
                at = masked_positions(mask, batch)
                self.val_auc_masked.update(extras["rtd_logits"][at].float(), extras["replaced"][at].long())
                self.val_masked_replaced.update(extras["replaced"][at].float())
            self.val_logit_mean.update(logits), self.val_logit_square.update(logits.square())

    def on_validation_epoch_end(self):
        self.heldout.log_to(self, "val/generator_mlm")
        for name, metric in self.val_metrics.items():
            if metric.update_count:
                self.log(f"val/{name}", metric.compute(), sync_dist=True)
                metric.reset()
        if self.rtd.variant in ("electra", "electra-15") and self.val_auc.update_count:
            self.log("val/disc_auc", self.val_auc.compute(), sync_dist=True)
            self.val_auc.reset()
        self._log_masked_auc()
        for name, value in self.embedding_similarity().items():
            self.log(f"val/{name}", value)
        self._learning_check()

    def _log_masked_auc(self):
        """ELECTRA 15%'s AUC at its masked positions, where both classes occur; none where one does not.

        An untrained generator's sample almost never equals the original, so at a smoke budget every masked
        position is replaced: an AUC of one class is undefined (torchmetrics returns 0), not a measure. The
        share replaced is logged either way (`replaced_fraction_masked`), so a row shows why it has no AUC."""
        if not self.val_auc_masked.update_count:
            return
        replaced_share = self.val_masked_replaced.compute()
        self.log("val/replaced_fraction_masked", replaced_share, sync_dist=True)
        if 0.0 < float(replaced_share) < 1.0:
            self.log("val/disc_auc_masked", self.val_auc_masked.compute(), sync_dist=True)
        self.val_auc_masked.reset(), self.val_masked_replaced.reset()

    def _learning_check(self):
        """Log D's token-state similarity and logit spread; say once, in one line, if D has collapsed."""
        cosine = float(self.val_token_cosine.compute())
        self.log("val/disc_token_cosine", cosine, sync_dist=True)
        self.val_token_cosine.reset()
        logit_std = None
        if self.val_logit_mean.update_count:
            mean, square = self.val_logit_mean.compute(), self.val_logit_square.compute()
            logit_std = float((square - mean.square()).clamp(min=0).sqrt())
            self.log("val/disc_logit_std", logit_std, sync_dist=True)
            self.val_logit_mean.reset(), self.val_logit_square.reset()
        collapsed = cosine > COLLAPSED_TOKEN_COSINE or (logit_std is not None and logit_std < COLLAPSED_LOGIT_STD)
        if collapsed and not self.collapse_reported and not self.trainer.sanity_checking:
            self.collapse_reported = True
            if self.trainer.is_global_zero:
                spread = f", logit std {logit_std:.3f}" if logit_std is not None else ""
                print(f"warning: the RTD discriminator has collapsed at step {self.global_step}: held-out token "
                      f"states have mean cosine {cosine:.3f}{spread} (it gives every token nearly the same "
                      f"output; see docs/what-models-learn.md, 'RTD at small')", file=sys.stderr, flush=True)

    def embedding_similarity(self) -> dict[str, float]:
        """Average pairwise cosine similarity of E_G and of E_D (non-special tokens), DeBERTaV3 §3."""
        return {
            "cosine_generator": average_cosine_similarity(self.generator.embeddings.word.weight, NUM_SPECIAL),
            "cosine_discriminator": average_cosine_similarity(self.discriminator.embeddings.word.weight, NUM_SPECIAL),
        }

    def encoder_state(self) -> dict:
        """D's weights for fine-tuning, with GDES tables materialised as E_G + E_Delta."""
        return materialized_discriminator(self.discriminator)

    def discriminator_config(self) -> EncoderConfig:
        return self.discriminator.config
