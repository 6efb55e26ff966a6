"""Model FLOPs, counted analytically (a multiply-add = 2 FLOPs; training = 3x forward: forward + 2x backward).

Used to match ELECTRA's rows at equal training compute (ELECTRA §3.3, Table 1, Table 5) and to report
achieved FLOP/s in `make bench`. Embedding lookups, norms and softmax are ignored, as in ELECTRA's count.
"""
from __future__ import annotations

from ablations.config import EncoderConfig


def encoder_forward_flops_per_token(config: EncoderConfig, sequence_length: int) -> float:
    h, f, s = config.hidden_size, config.ffn_size, sequence_length
    per_layer = 2 * (4 * h * h + 2 * h * f)  # Q, K, V, output projections and the feed-forward
    per_layer += 2 * 2 * s * h  # scores and weighted values
    if config.attention == "disentangled":
        terms = int(config.c2p) + int(config.p2c)
        span = config.relative_table_size
        per_layer += terms * 2 * span * h  # Qc.Kr^T / Kc.Qr^T against the relative table
        per_layer += terms * 2 * span * h * h / max(s, 1)  # projecting the table, shared by the sequence
    total = config.num_layers * per_layer
    if config.embedding_dim != h:
        total += 2 * config.embedding_dim * h
    return total


def mlm_head_forward_flops(config: EncoderConfig, positions: float) -> float:
    """The MLM head at `positions` positions: transform and the tied projection to the vocabulary."""
    e = config.embedding_dim
    per_position = 2 * config.hidden_size * e + 2 * e * config.vocab_size
    return positions * per_position


def emd_forward_flops_per_token(config: EncoderConfig, sequence_length: int) -> float:
    if not config.uses_emd:
        return 0.0
    one_layer = config.replace(num_layers=1, embedding_size=None)
    return config.emd_layers * encoder_forward_flops_per_token(one_layer, sequence_length)


def mlm_training_flops_per_token(config: EncoderConfig, sequence_length: int, mask_fraction: float = 0.15) -> float:
    forward = encoder_forward_flops_per_token(config, sequence_length) + emd_forward_flops_per_token(config, sequence_length)
    forward += mlm_head_forward_flops(config, mask_fraction)
    return 3 * forward


def rtd_training_flops_per_token(discriminator: EncoderConfig, generator: EncoderConfig, sequence_length: int,
                                 mask_fraction: float = 0.15, variant: str = "electra") -> float:
    """Generator MLM + the discriminator's forward/backward with its head: RTD (per token), an MLM head at
    the masked positions (Replace MLM) or an MLM head and copy gate at every token (All-Tokens MLM)."""
    total = mlm_training_flops_per_token(generator, sequence_length, mask_fraction)
    h = discriminator.hidden_size
    rtd_head = 2 * (h * h + h)
    disc_forward = encoder_forward_flops_per_token(discriminator, sequence_length)
    disc_forward += {"replace-mlm": mlm_head_forward_flops(discriminator, mask_fraction),
                     "all-tokens-mlm": mlm_head_forward_flops(discriminator, 1.0) + rtd_head}.get(variant, rtd_head)
    return total + 3 * disc_forward
