"""Masked language modelling, with or without next sentence prediction (BERT; RoBERTa §4.2, Table 2).

    loss = L_MLM                    (FULL-SENTENCES, DOC-SENTENCES)
    loss = L_MLM + L_NSP            (SEGMENT-PAIR+NSP, SENTENCE-PAIR+NSP)

The MLM head computes logits only at the masked positions listed by the collator. For DeBERTa the
Enhanced Mask Decoder runs between the encoder and the head. Validation reports held-out MLM loss,
perplexity and accuracy on the shared held-out blocks (dataloader 0) and NSP accuracy (dataloader 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from ablations.fast_ops import cross_entropy_and_argmax
from ablations.heads import MLMHead, NSPHead, init_head
from lightning_modules.base import ObjectiveModule, OptimConfig


def masked_lm(encoder: Encoder, head: MLMHead, batch: dict, input_ids=None, first_tokens: bool = False):
    """Logits at the masked positions (N, V) of `input_ids` (default: the batch's masked input) and, with
    `first_tokens`, each sequence's last hidden state at its first token (B, H), which NSP reads (else None).
    Only the rows read are computed in the last block (`Encoder.forward`'s `rows`), or with DeBERTa's EMD in
    its steps."""
    ids, mask, positions = batch["input_ids"] if input_ids is None else input_ids, batch["attention_mask"], batch["mlm_positions"]
    word_embeddings = encoder.embeddings.word.weight
    if encoder.emd is not None:  # the EMD reads every row of H as keys, but computes only the masked rows
        hidden = encoder(ids, mask, batch["token_type_ids"])
        logits = head(encoder.mask_decoder_states(hidden, mask, rows=positions), None, word_embeddings)
        return logits, hidden[:, 0] if first_tokens else None
    rows = positions
    if first_tokens:
        batch_size, length = ids.shape
        rows = torch.cat([positions, torch.arange(batch_size, device=ids.device) * length])
    states = encoder(ids, mask, batch["token_type_ids"], rows=rows)
    masked = positions.numel()
    return head(states[:masked], None, word_embeddings), states[masked:] if first_tokens else None


def mlm_loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy in fp32 and accuracy, both from one softmax over one fp32 copy of the (possibly
    bf16) logits (`cross_entropy_and_argmax`)."""
    loss, predicted = cross_entropy_and_argmax(logits.float(), labels)
    return loss, (predicted == labels).float().mean()


class HeldoutMLM(torch.nn.Module):
    """Held-out MLM loss / perplexity / accuracy, averaged over masked tokens (not batches)."""

    def __init__(self):
        super().__init__()
        self.loss, self.accuracy = MeanMetric(), MeanMetric()

    def update(self, logits, labels):
        count = labels.numel()
        if count:
            loss, accuracy = mlm_loss_and_accuracy(logits, labels)
            self.loss.update(loss, weight=count)
            self.accuracy.update(accuracy, weight=count)

    def log_to(self, module, prefix: str = "val/mlm"):
        loss = self.loss.compute()
        module.log(f"{prefix}_loss", loss, sync_dist=True)
        module.log(f"{prefix}_ppl", torch.exp(loss), sync_dist=True)
        module.log(f"{prefix}_acc", self.accuracy.compute(), sync_dist=True)
        self.loss.reset(), self.accuracy.reset()


class MLMModule(ObjectiveModule):
    def __init__(self, encoder: EncoderConfig, optim: OptimConfig, nsp: bool = False):
        super().__init__(optim)
        self.save_hyperparameters()
        self.encoder = Encoder(encoder)
        self.mlm_head = init_head(MLMHead(encoder))
        self.nsp_head = init_head(NSPHead(encoder)) if nsp else None
        self.heldout = HeldoutMLM()
        self.nsp_accuracy = MeanMetric()

    def losses(self, batch):
        logits, first_token_states = masked_lm(self.encoder, self.mlm_head, batch, first_tokens=self.nsp_head is not None)
        mlm, accuracy = mlm_loss_and_accuracy(logits, batch["mlm_labels"])
        out = {"mlm_loss": mlm, "mlm_acc": accuracy}
        loss = mlm
        if self.nsp_head is not None:
            nsp_logits = self.nsp_head(first_token_states)
            out["nsp_loss"] = F.cross_entropy(nsp_logits.float(), batch["nsp_labels"])
            out["nsp_acc"] = (nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean()
            loss = loss + out["nsp_loss"]
        out["loss"] = loss
        return out

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:
            logits, _ = masked_lm(self.encoder, self.mlm_head, batch)
            self.heldout.update(logits, batch["mlm_labels"])
        elif self.nsp_head is not None:
            hidden = self.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            correct = (self.nsp_head(hidden[:, 0]).argmax(-1) == batch["nsp_labels"]).float()
            self.nsp_accuracy.update(correct.mean(), weight=correct.numel())

    def on_validation_epoch_end(self):
        self.heldout.log_to(self)
        if self.nsp_head is not None and self.nsp_accuracy.update_count:
            self.log("val/nsp_acc", self.nsp_accuracy.compute(), sync_dist=True)
            self.nsp_accuracy.reset()

    def encoder_state(self) -> dict:
        """The weights a fine-tuning run starts from."""
        return self.encoder.state_dict()
