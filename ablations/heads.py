"""Small heads over the encoder: MLM (tied, masked positions only), NSP, RTD, sequence and token classification."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ablations.config import EncoderConfig
from ablations.encoder import gather_rows
from ablations.fast_ops import Dropout, Linear, linear


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> logits against the (tied) word embeddings, at masked positions only:
    with 15% masking this skips 85% of the largest matmul of the step (hidden x vocabulary)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.embedding_dim)
        self.norm = nn.LayerNorm(config.embedding_dim, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden, flat_positions, word_embeddings: torch.Tensor):
        x = gather_rows(hidden, flat_positions) if flat_positions is not None else hidden
        x = self.norm(F.gelu(self.dense(x)))
        return linear(x, word_embeddings, self.bias)


class NSPHead(nn.Module):
    """BERT's pooler (dense + tanh on the first token) and a two-way classifier: IsNext / NotNext."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pooler = Linear(config.hidden_size, config.hidden_size)
        self.classifier = Linear(config.hidden_size, 2)

    def forward(self, first_token_states):
        """(B, H): each sequence's last hidden state at its first token ([CLS])."""
        return self.classifier(torch.tanh(self.pooler(first_token_states)))


class RTDHead(nn.Module):
    """ELECTRA's discriminator head: dense -> GELU -> dense to one logit per token (replaced or not).

    The one-unit projection runs in fp32 even under bf16 autocast: bf16 keeps 8 bits of mantissa, so
    logits that differ by less than ~0.4% tie, and a collapsed or barely trained discriminator then
    reads as AUC 0.5000 exactly. It is one dot product per token, so the cost is nil."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.out = Linear(config.hidden_size, 1)

    def forward(self, hidden):
        features = F.gelu(self.dense(hidden))
        with torch.autocast(hidden.device.type, enabled=False):
            return self.out(features.float()).squeeze(-1)


class ClassificationHead(nn.Module):
    """Sequence classification (num_labels > 1) or regression (num_labels == 1) from the first token."""

    def __init__(self, config: EncoderConfig, num_labels: int):
        super().__init__()
        self.pooler = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.dropout)
        self.out = Linear(config.hidden_size, num_labels)

    def forward(self, hidden):
        return self.out(self.dropout(torch.tanh(self.pooler(self.dropout(hidden[:, 0])))))


class TokenClassificationHead(nn.Module):
    """A label per token (BERT §4.3, tagging): dropout and a linear layer on each token's last hidden state."""

    def __init__(self, config: EncoderConfig, num_labels: int):
        super().__init__()
        self.dropout = Dropout(config.dropout)
        self.out = Linear(config.hidden_size, num_labels)

    def forward(self, hidden):
        return self.out(self.dropout(hidden))


def init_head(module: nn.Module, std: float = 0.02) -> nn.Module:
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            nn.init.zeros_(sub.bias)
    return module
