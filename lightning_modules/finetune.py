"""Fine-tuning for sequence classification, regression and token classification (tagging), with DeBERTa's SiFT
as an option (§3.3).

Starts from any pretrained encoder of the suite (for RTD, the discriminator with GDES materialised).
Validation reports the task's official GLUE metric x100: accuracy, F1, Matthews correlation, or the
mean of Pearson and Spearman correlations. A tagging task (`kind="tokens"`: a label at each word's first
sub-token, -100 elsewhere) reports its accuracy over the labelled tokens as its score, and over the labelled
tokens the batch marks `ambiguous` as `val/ambiguous` (Brown POS: `pos` and `pos_ambiguous`).

SiFT (scale-invariant fine-tuning): virtual adversarial training on the *normalised* word embeddings
(the output of the embedding LayerNorm, as in the reference code). A perturbation starts as Gaussian
noise (scale `sift_init_scale`), takes one normalised gradient-ascent step on the symmetric KL between
clean and perturbed predictions, and that KL, weighted by `sift_weight`, is added to the task loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryF1Score, MatthewsCorrCoef, MulticlassAccuracy
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from ablations.heads import ClassificationHead, TokenClassificationHead, init_head
from lightning_modules.base import ObjectiveModule, OptimConfig


@dataclass(frozen=True)
class FineTuneConfig:
    """How each downstream task is fine-tuned (the same for every row of a table)."""

    peak_lr: float = 1e-4
    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = 128
    warmup_fraction: float = 0.1
    max_train_examples: int | None = None  # cap the training set (quick presets)
    max_validation_examples: int | None = None
    # the word-order tasks' own caps (TaskSpec.word_order: pos, bigram_shift; Brown has 57K sentences), tightened
    # further by the caps above: 1,500 training sentences keep the two tasks under 15% of a `cpu` row's time (2,000
    # took 14-17%, issue 47); 1,000 dev sentences (~20K tagged words; 500 bigram-shift pairs) keep their noise small
    word_order_max_train_examples: int | None = 1500
    word_order_max_validation_examples: int | None = 1000
    seeds: int = 1  # fine-tuning runs per task, each with its own seed; the row reports their median
    group_by_length: bool = True  # batches of similar lengths (fairseq's batch_by_size); False: uniform shuffling
    sift: bool = False  # DeBERTa's scale-invariant fine-tuning
    sift_weight: float = 1.0  # weight of the adversarial symmetric KL
    sift_init_scale: float = 1e-2  # std of the initial perturbation of the normalised embeddings
    sift_step: float = 1e-3  # size of the (normalised) ascent step


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) for classification; squared error for regression (one output)."""
    if logits_a.shape[-1] == 1:
        return F.mse_loss(logits_a, logits_b)
    log_p, log_q = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    return (F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
            + F.kl_div(log_p, log_q, log_target=True, reduction="batchmean"))


class FineTuneModule(ObjectiveModule):
    def __init__(self, encoder: EncoderConfig, num_labels: int, metric: str, config: FineTuneConfig,
                 max_steps: int, encoder_state: dict | None = None, kind: str = "sequence"):
        super().__init__(OptimConfig(peak_lr=config.peak_lr, warmup_fraction=config.warmup_fraction,
                                     max_steps=max_steps))
        self.encoder = Encoder(encoder.replace(emd=False))
        if encoder_state is not None:
            missing, unexpected = self.encoder.load_state_dict(encoder_state, strict=False)
            if [k for k in missing if not k.startswith("emd.")]:
                raise ValueError(f"pretrained encoder state lacks {missing}")
        self.tokens = kind == "tokens"
        head = TokenClassificationHead if self.tokens else ClassificationHead
        self.head = init_head(head(encoder, num_labels))
        self.config, self.num_labels, self.metric = config, num_labels, metric
        # a tagger's accuracy over every labelled token and over the ambiguous ones: means of 0/1 per token
        self.scores = torch.nn.ModuleDict({"accuracy": MeanMetric(), "ambiguous": MeanMetric()}) if self.tokens \
            else self._metrics(metric, num_labels)
        self.val_loss = MeanMetric()

    @staticmethod
    def _metrics(metric: str, num_labels: int) -> torch.nn.ModuleDict:
        if metric == "accuracy":
            return torch.nn.ModuleDict({"accuracy": MulticlassAccuracy(num_labels, average="micro")})
        if metric == "f1":
            return torch.nn.ModuleDict({"f1": BinaryF1Score(), "accuracy": MulticlassAccuracy(2, average="micro")})
        if metric == "matthews":
            return torch.nn.ModuleDict({"matthews": MatthewsCorrCoef(task="multiclass", num_classes=num_labels)})
        return torch.nn.ModuleDict({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()})

    def forward(self, batch, noise=None):
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], noise)
        return self.head(hidden)

    def task_loss(self, logits, labels):
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if self.tokens:  # the mean over the labelled tokens of the batch (-100 elsewhere)
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return F.cross_entropy(logits.float(), labels)

    def scored(self, logits, batch):
        """The logits that are scored: every example's, or a tagger's at its labelled tokens only (N, labels)."""
        return logits[batch["labels"] != -100] if self.tokens else logits

    def losses(self, batch):
        logits = self(batch)
        out = {"task_loss": self.task_loss(logits, batch["labels"])}
        out["loss"] = out["task_loss"]
        if self.config.sift:
            out["sift_loss"] = self.sift_loss(batch, logits)
            out["loss"] = out["loss"] + self.config.sift_weight * out["sift_loss"]
        return out

    def sift_loss(self, batch, clean_logits):
        """One ascent step on a perturbation of the normalised embeddings, then the symmetric KL there."""
        shape = (*batch["input_ids"].shape, self.encoder.config.embedding_dim)
        noise = (torch.randn(shape, device=self.device) * self.config.sift_init_scale).requires_grad_()
        clean = self.scored(clean_logits, batch)
        divergence = symmetric_kl(self.scored(self(batch, noise), batch), clean.detach())
        (gradient,) = torch.autograd.grad(divergence, noise)
        step = gradient / (gradient.norm(dim=-1, keepdim=True) + 1e-6)
        noise = (noise + self.config.sift_step * step).detach()
        return symmetric_kl(self.scored(self(batch, noise), batch), clean)

    def validation_step(self, batch, batch_idx):
        logits = self(batch)
        self.val_loss.update(self.task_loss(logits, batch["labels"]), weight=len(logits))
        if self.tokens:
            labelled = batch["labels"] != -100
            right = (logits.argmax(-1) == batch["labels"]).float()
            self.scores["accuracy"].update(right[labelled])
            if (ambiguous := labelled & batch["ambiguous"]).any():
                self.scores["ambiguous"].update(right[ambiguous])
        elif self.num_labels == 1:
            for metric in self.scores.values():
                metric.update(logits.squeeze(-1).float(), batch["labels"].float())
        else:
            for metric in self.scores.values():
                metric.update(logits.argmax(-1), batch["labels"])

    def on_validation_epoch_end(self):
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)
        self.val_loss.reset()
        values = {name: metric.compute() * 100 for name, metric in self.scores.items() if metric.update_count}
        for name, value in values.items():
            self.log(f"val/{name}", value, sync_dist=True)
        main = (values["pearson"] + values["spearman"]) / 2 if self.metric == "pearson_spearman" else values[self.metric]
        self.log("val/score", main, sync_dist=True)
        for metric in self.scores.values():
            metric.reset()
