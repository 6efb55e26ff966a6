"""One Transformer encoder for every ablation: BERT/RoBERTa absolute attention or DeBERTa's disentangled
attention with the Enhanced Mask Decoder (He et al. 2021, §3). Read top to bottom:

    Embeddings -> N x Block(Attention, FFN) -> hidden states    [-> EMD for the MLM head (DeBERTa)]

Attention is `scaled_dot_product_attention`. Disentangled attention is the same call with the
content-to-position and position-to-content scores passed as an additive bias:

    A[i,j] = Qc[i].Kc[j] + Qc[i].Kr[delta(i,j)] + Kc[j].Qr[delta(j,i)],   softmax(A / sqrt(d (1 + #terms)))

where delta(i,j) = clip(i - j, -k, k - 1) + k. The reference code (and HF) index the p2c term with
delta(i,j); `p2c_index` names that choice. Nothing here calls .item() or loops over tokens.

This file is the math. The faster routes to the same numbers (q, k and v in one GEMM, the position scores
by a shift, the keys shared by the EMD's steps, attention written out around the CPU's dropout mask) are
in `ablations.attention_paths`, where `route` chooses among them.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ablations import attention_paths as paths
from ablations.config import EncoderConfig
from ablations.fast_ops import Dropout, Linear, dropout_add, residual_stream


def log_bucket_position(relative: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa v2's buckets: exact for |distance| <= bucket_size/2, log-spaced beyond, up to max_position."""
    mid = bucket_size // 2
    sign = torch.sign(relative)
    distance = relative.abs().clamp(min=mid)  # avoids log(0); those values are replaced below anyway
    log_position = torch.ceil(torch.log(distance / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    return torch.where(relative.abs() <= mid, relative, (log_position * sign).to(relative.dtype))


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of (B, L, H) at flat indices into B*L, as (len(rows), H), without a boolean mask (which would
    sync the host)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, rows)


def relative_position_index(query_length: int, key_length: int, config: EncoderConfig, device) -> torch.Tensor:
    """delta(i, j): the row of the relative table used for query i and key j, shape (query_length, key_length)."""
    relative = torch.arange(query_length, device=device)[:, None] - torch.arange(key_length, device=device)[None, :]
    span = config.position_buckets or config.relative_span
    if config.position_buckets:
        relative = log_bucket_position(relative, config.position_buckets, config.relative_span)
    return (relative + span).clamp(0, 2 * span - 1)


class Embeddings(nn.Module):
    """Word (+ absolute position for BERT/RoBERTa) (+ segment) embeddings -> LayerNorm -> dropout
    [-> projection to the hidden size, ELECTRA-Small]. DeBERTa has no absolute positions at the input."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        dim = config.embedding_dim
        # `word` may be replaced by a shared table (ES) or a gradient-disentangled one (GDES), see sharing.py
        self.word = nn.Embedding(config.vocab_size, dim)
        self.position = nn.Embedding(config.max_positions, dim) if config.attention == "absolute" else None
        self.token_type = nn.Embedding(config.type_vocab_size, dim) if config.type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)
        self.project = Linear(dim, config.hidden_size) if dim != config.hidden_size else None

    def forward(self, input_ids, token_type_ids=None, noise=None):
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position.weight[: input_ids.shape[1]]
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        x = self.norm(x)
        if noise is not None:  # SiFT perturbs the normalised embeddings (DeBERTa §3.3)
            x = x + noise
        x = self.dropout(x)
        return self.project(x) if self.project is not None else x


class RelativePositions(NamedTuple):
    """What attention needs to know about positions, built once per batch by `Encoder.attention_inputs`."""
    table: torch.Tensor | None  # (2k, H) the relative embeddings (disentangled attention); None with relative_bias
    index: torch.Tensor  # (L, L) delta(i, j) for every query i and key j
    rows: torch.Tensor | None = None  # (B, M) the queries' positions when they are not all L (`Block.at_rows`)


class Attention(nn.Module):
    """Multi-head self-attention; with `disentangled`, adds DeBERTa's c2p / p2c scores as a bias. How each
    part is computed (q, k and v in one GEMM, the position scores by a shift or by gathers, the keys shared
    by the EMD's steps, the CPU's dropout) is `attention_paths`' choice, made by `attention_paths.route`."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.query, self.key, self.value = (Linear(hidden, hidden) for _ in range(3))
        self.output = Linear(hidden, hidden)
        self.disentangled = config.attention == "disentangled"
        self.position_terms = int(config.c2p) + int(config.p2c) if self.disentangled else 0
        if self.disentangled and not config.share_position_projections:
            # each switched-off term removes its projection: -C2P has no position keys, -P2C no position queries
            self.position_key = Linear(hidden, hidden) if config.c2p else None
            self.position_query = Linear(hidden, hidden) if config.p2c else None
        self.scale = 1.0 / math.sqrt(config.head_size * (1 + self.position_terms))
        # the relative_bias departure: one learned scalar per head and (clipped) distance, zero at the start
        self.distance_bias = nn.Parameter(torch.zeros(config.num_heads, config.relative_table_size)) \
            if config.relative_bias else None

    def forward(self, x, key_padding_bias, relative: RelativePositions | None = None, query_input=None,
                key_side=None):
        """x: keys/values (B, L, H); query_input: queries if they differ (B, M, H), else x.
        key_padding_bias: (1, B, 1, L) additive, -inf at padded keys (head-major, like q, k, v).
        relative: the positions, with `rows` set when query_input's rows are not all L (the rows read by
        the loss: the last block's and the EMD's, see `Block.at_rows`).
        key_side: `self.key_side(x, relative)` computed once for several calls on the same x (the EMD's steps);
        x is then not read."""
        q, k, v, p2c = paths.project(self, x, query_input, key_side)
        p = self.config.attention_dropout if self.training else 0.0
        chosen = paths.route(self.config, k.shape[2], q.device, p)
        bias = self.score_bias(key_padding_bias.to(q.dtype), relative)  # cast the small tensor, never the (h, B, L, L) one
        if self.position_terms:
            bias = self.position_scores(q, k, relative, p2c) + bias  # already scaled: see paths.scaled_positions
        return self.output(paths.merge_heads(paths.attend(q, k, v, bias, self.scale, p, chosen)))

    def probabilities(self, x, key_padding_bias, relative: RelativePositions | None = None):
        """The self-attention probabilities (h, B, L, L) that `forward` would use without dropout, written out
        in full (forward never materialises them on the SDPA path); for diagnostics, not for training."""
        q, k, _, _ = paths.project(self, x)
        scores = q @ k.transpose(-1, -2) * self.scale + self.score_bias(key_padding_bias.to(q.dtype), relative)
        if self.position_terms:
            scores = scores + self.position_scores(q, k, relative)
        return scores.float().softmax(-1)

    def score_bias(self, key_padding_bias, relative: RelativePositions | None):
        """The additive bias before the position terms: key padding (1, B, 1, L), plus with relative_bias each
        head's learned bias for the distance between query and key, (h, 1, Lq, L), or (h, B, M, L) for queries
        at given positions per sequence: together (h, B, Lq, L)."""
        if self.distance_bias is None:
            return key_padding_bias
        index = relative.index if relative.rows is None else relative.index[relative.rows]  # (Lq, L) or (B, M, L)
        distance_bias = self.distance_bias[:, index] * self.config.relative_bias_gain
        if distance_bias.dim() == 3:
            distance_bias = distance_bias.unsqueeze(1)
        return distance_bias.to(key_padding_bias.dtype) + key_padding_bias

    def position_scores(self, q, k, relative: RelativePositions, p2c=None):
        """The disentangled terms for queries q (h, B, Lq, d) and keys k (h, B, L, d), each times the attention
        scale, (h, B, Lq, L):

            c2p[i,j] = Qc[i].Kr[delta(i,j)],   p2c[i,j] = Kc[j].Qr[delta(j,i)] (paper) or Kc[j].Qr[delta(i,j)] (code)

        with Kr, Qr the relative table through `position_key_projection` and `position_query_projection`.
        relative.rows: (B, M), where each sequence's Lq = M queries sit when they are not all L positions (the
        EMD at the masked rows only); p2c: from `key_side`, if already computed (it depends on the keys only)."""
        return paths.position_scores(self, q, k, relative, p2c)

    def key_side(self, x, relative: RelativePositions | None = None) -> tuple:
        """What attention computes from x alone, for queries that change while x does not (the EMD's steps all
        attend to H): keys and values as heads (h, B, L, d), and the scaled p2c scores at the queries'
        positions (relative.rows) or None. `forward(..., key_side=...)` then projects only the queries."""
        return paths.key_side(self, x, relative)

    def position_key_projection(self) -> nn.Linear:
        """Kr's projection: the content key's when shared (DeBERTa v2's share_att_key)."""
        return self.key if self.config.share_position_projections else self.position_key

    def position_query_projection(self) -> nn.Linear:
        return self.query if self.config.share_position_projections else self.position_query


class Block(nn.Module):
    """Attention and feed-forward sub-layers, each with a residual; post-LN (papers) or pre-LN."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pre_norm = config.pre_layer_norm
        self.attention = Attention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = Linear(config.hidden_size, config.ffn_size)
        self.ffn_out = Linear(config.ffn_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.dropout  # applied with the residual add, see dropout_add

    def forward(self, x, key_padding_bias, relative=None, query_input=None, key_side=None):
        """(B, L, H) -> (B, L, H); with query_input (B, M, H), the queries' states (B, M, H) against x's keys
        and values; with key_side (`self.key_side(x, relative)`), those keys and values as already computed."""
        residual = x if query_input is None else query_input
        p, training = self.dropout_p, self.training
        if self.pre_norm:
            keys_input = self.attention_norm(x) if key_side is None else None
            attended = self.attention(keys_input, key_padding_bias, relative,
                                      None if query_input is None else self.attention_norm(query_input), key_side)
            h = dropout_add(residual, attended, p, training)
            return dropout_add(h, self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(h)))), p, training)
        attended = self.attention(x, key_padding_bias, relative, query_input, key_side)
        h = self.attention_norm(dropout_add(residual, attended, p, training))
        return self.ffn_norm(dropout_add(h, self.ffn_out(F.gelu(self.ffn_in(h))), p, training))

    def key_side(self, x, relative=None) -> tuple:
        """The attention's keys, values and p2c scores for x (`Attention.key_side`), after the pre-LN norm."""
        return self.attention.key_side(self.attention_norm(x) if self.pre_norm else x, relative)

    def at_rows(self, x, key_padding_bias, relative, rows):
        """The block's output at `rows` only (flat indices into B*L), (len(rows), H). Each row's state depends
        on its own query and every key, so only those rows are queries (each sequence's laid out in a grid
        padded to the longest list, `query_slots`): the others skip the query projection, their attention
        scores, the output projection, the feed-forward and the norms."""
        batch, length, hidden_size = x.shape
        grid, slots = query_slots(rows, batch, length)
        query = x[torch.arange(batch, device=x.device)[:, None], grid]  # (B, M, H)
        relative = None if relative is None else relative._replace(rows=grid)
        return self(x, key_padding_bias, relative, query_input=query).reshape(-1, hidden_size).index_select(0, slots)


class EnhancedMaskDecoder(nn.Module):
    """DeBERTa's EMD (§3.2): absolute positions enter only here, after all layers, before the MLM softmax.
    `emd_layers` steps share one layer's weights; the first queries with H + P, each next with the
    previous output; keys and values are the encoder output H. Since every step attends to the same H with
    the same weights, its keys, values and p2c scores are computed once (`Block.key_side`) and shared by the
    steps: the same result as computing them in each step, for about half their cost."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.steps = config.emd_layers
        self.positions = nn.Embedding(config.max_positions, config.hidden_size)
        self.layer = Block(config)

    def forward(self, hidden, key_padding_bias, relative, rows=None):
        """(B, L, H), or with `rows` (flat indices into B*L) the states at those rows only, (len(rows), H).
        Every step's keys and values are H, so a step's output at row i depends on the previous step's at row
        i alone: with `rows` each step computes only those rows, each sequence's padded to the longest list
        (a padded slot repeats position 0 and is never returned)."""
        batch, length, hidden_size = hidden.shape
        positions = self.positions.weight[:length]
        if rows is None:
            query = hidden + positions
        else:
            grid, slots = query_slots(rows, batch, length)
            query = hidden[torch.arange(batch, device=rows.device)[:, None], grid] + positions[grid]  # (B, M, H)
            relative = relative._replace(rows=grid)
        key_side = self.layer.key_side(hidden, relative)
        for _ in range(self.steps):
            query = self.layer(hidden, key_padding_bias, relative, query_input=query, key_side=key_side)
        return query if rows is None else query.reshape(-1, hidden_size).index_select(0, slots)


def query_slots(rows: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat rows of (B, L) laid out per sequence: (grid, slots) with grid (B, M) each sequence's positions
    in the order `rows` lists them, padded with 0 up to M (the most rows any sequence has), and slots (N,)
    where each row of `rows` sits in the flattened grid."""
    sequence = rows // length
    counts = torch.bincount(sequence, minlength=batch)
    width = int(counts.max()) if rows.numel() else 0  # the one host sync: the grid's size
    order = torch.argsort(sequence, stable=True)
    first_of_sequence = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(rows)
    slot[order] = torch.arange(rows.numel(), device=rows.device) - first_of_sequence[sequence[order]]
    grid = torch.zeros(batch, width, dtype=rows.dtype, device=rows.device)
    grid[sequence, slot] = rows % length
    return grid, sequence * width + slot


class Encoder(nn.Module):
    """Embeddings and blocks. `forward` returns the last hidden states; `mask_decoder_states` runs the EMD
    (DeBERTa) or returns the hidden states unchanged (no EMD), for the MLM head."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_layer_norm else None
        disentangled = config.attention == "disentangled"
        self.relative_table = nn.Embedding(config.relative_table_size, config.hidden_size) if disentangled else None
        self.relative_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) \
            if disentangled and config.normalize_relative_embeddings else None
        self.emd = EnhancedMaskDecoder(config) if config.uses_emd else None
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def attention_inputs(self, attention_mask, length: int, device):
        """The additive key-padding bias and the `RelativePositions` (relative table and delta index for
        disentangled attention, the delta index alone for relative_bias; None for absolute attention)."""
        if attention_mask is None:
            bias = torch.zeros(1, 1, 1, length, device=device)
        else:
            bias = torch.zeros(attention_mask.shape, device=device).masked_fill(~attention_mask.bool(), float("-inf"))
            bias = bias[None, :, None, :]  # (1, B, 1, L): head-major, see attention_paths.heads
        relative = None
        if self.relative_table is not None:
            table = self.relative_table.weight
            if self.relative_norm is not None:
                table = self.relative_norm(table)
            relative = RelativePositions(table, relative_position_index(length, length, self.config, device))
        elif self.config.relative_bias:
            relative = RelativePositions(None, relative_position_index(length, length, self.config, device))
        return bias, relative

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, embedding_noise=None, rows=None):
        """The last hidden states (B, L, H). With `rows` (flat indices into B*L), only those rows of them,
        (len(rows), H), and the last block computes only those rows (`Block.at_rows`): an MLM loss reads ~15%
        of the rows, so this skips most of one layer, with the same result at every row it returns. Not with
        the EMD, which reads every row."""
        if rows is not None and self.emd is not None:
            raise ValueError("rows: the enhanced mask decoder reads every row of the last hidden states")
        x = self.embeddings(input_ids, token_type_ids, embedding_noise)
        x = residual_stream(x)
        bias, relative = self.attention_inputs(attention_mask, input_ids.shape[1], input_ids.device)
        *blocks, last = self.blocks
        for block in blocks:
            x = block(x, bias, relative)
        x = last(x, bias, relative) if rows is None else last.at_rows(x, bias, relative, rows)
        return self.final_norm(x) if self.final_norm is not None else x

    def mask_decoder_states(self, hidden, attention_mask=None, rows=None):
        """The states the MLM head reads: the EMD's output (DeBERTa) or the hidden states unchanged; with
        `rows`, only those rows (flat indices into B*L), as (len(rows), H)."""
        if self.emd is None:
            return hidden if rows is None else gather_rows(hidden, rows)
        bias, relative = self.attention_inputs(attention_mask, hidden.shape[1], hidden.device)
        return self.emd(hidden, bias, relative, rows)
