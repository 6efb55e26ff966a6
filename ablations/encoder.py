"""One Transformer encoder for every ablation: BERT/RoBERTa absolute attention or DeBERTa's disentangled
attention with the Enhanced Mask Decoder (He et al. 2021, §3). Read top to bottom:

    Embeddings -> N x Block(Attention, FFN) -> hidden states    [-> EMD for the MLM head (DeBERTa)]

All attention goes through `scaled_dot_product_attention`. Disentangled attention is the same call with
the content-to-position and position-to-content scores passed as an additive bias:

    A[i,j] = Qc[i].Kc[j] + Qc[i].Kr[delta(i,j)] + Kc[j].Qr[delta(j,i)],   softmax(A / sqrt(d (1 + #terms)))

where delta(i,j) = clip(i - j, -k, k - 1) + k. The reference code (and HF) index the p2c term with
delta(i,j); `p2c_index` names that choice. Nothing here calls .item() or loops over tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ablations.config import EncoderConfig
from ablations.fast_ops import Dropout, Linear, dropout_add, keep_mask, linear


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


class Attention(nn.Module):
    """Multi-head self-attention; with `disentangled`, adds DeBERTa's c2p / p2c scores as a bias."""

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

    def _heads(self, x):
        """(B, L, H) -> (h, B, L, d), contiguous. Head-major: the same tensor is (h*B, L, d) for the
        per-sequence attention GEMMs and (h, B*L, d) for DeBERTa's position GEMMs, both as views."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.config.num_heads, self.config.head_size).permute(2, 0, 1, 3).contiguous()

    def forward(self, x, key_padding_bias, relative=None, query_input=None, key_side=None):
        """x: keys/values (B, L, H); query_input: queries if they differ (B, M, H), else x.
        key_padding_bias: (1, B, 1, L) additive, -inf at padded keys (head-major, like q, k, v).
        relative: (table (2k, H), index (L, L)) for disentangled attention, (None, index) for relative_bias; a
        third item (B, M) gives the positions of query_input's rows when they are not all L (the rows read by
        the loss: the last block's and the EMD's, see `Block.at_rows`).
        key_side: `self.key_side(x, relative)` computed once for several calls on the same x (the EMD's steps);
        x is then not read."""
        if key_side is None:
            q, k, v = (self._heads(t) for t in self._project(x, query_input))
            p2c = None
        else:
            q, (k, v, p2c) = self._heads(self.query(query_input)), key_side
        bias = self._bias(key_padding_bias.to(q.dtype), relative)  # cast the small tensor, never the (h, B, L, L) one
        if self.position_terms:
            bias = self._position_scores(q, k, *relative, p2c=p2c) + bias  # already scaled: see _scaled_positions
        p = self.config.attention_dropout if self.training else 0.0
        if p and q.device.type == "cpu":
            # CPU SDPA runs exactly this math whenever dropout is on; doing it here swaps in the cheap mask.
            # A key-padding bias stays (h*B, 1, L) and is broadcast by baddbmm, never materialised per query.
            bias = bias.expand(*q.shape[:2], *bias.shape[2:]).flatten(0, 1)
            scores = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), alpha=self.scale)
            probs = torch.softmax(scores.view(*q.shape[:3], k.shape[2]), -1).to(q.dtype)
            # dropout's 1/(1-p) is applied to the (h, B, L, d) output, half the size of the probabilities
            out = ((probs * keep_mask(probs.shape, p, probs.dtype)) @ v).mul_(1.0 / (1.0 - p))
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=self.scale)
        _, batch, length, _ = out.shape
        return self.output(out.permute(1, 2, 0, 3).reshape(batch, length, self.config.hidden_size))

    def probabilities(self, x, key_padding_bias, relative=None):
        """The self-attention probabilities (h, B, L, L) that `forward` would use without dropout, written out
        in full (forward never materialises them on the SDPA path); for diagnostics, not for training."""
        q, k, _ = (self._heads(t) for t in self._project(x))
        scores = q @ k.transpose(-1, -2) * self.scale + self._bias(key_padding_bias.to(q.dtype), relative)
        if self.position_terms:
            scores = scores + self._position_scores(q, k, *relative)
        return scores.float().softmax(-1)

    def _bias(self, key_padding_bias, relative):
        """The additive bias before the position terms: key padding (1, B, 1, L), plus with relative_bias each
        head's learned bias for the distance between query and key, (h, 1, Lq, L), or (h, B, M, L) for queries
        at given positions per sequence: together (h, B, Lq, L)."""
        if self.distance_bias is None:
            return key_padding_bias
        index = relative[1] if len(relative) == 2 else relative[1][relative[2]]  # (Lq, L) or (B, M, L)
        distance_bias = self.distance_bias[:, index] * self.config.relative_bias_gain
        if distance_bias.dim() == 3:
            distance_bias = distance_bias.unsqueeze(1)
        return distance_bias.to(key_padding_bias.dtype) + key_padding_bias

    def key_side(self, x, relative=None) -> tuple:
        """What attention computes from x alone, for queries that change while x does not (the EMD's steps all
        attend to H): keys and values as heads (h, B, L, d), and the scaled p2c scores at the queries' positions
        (relative's third item) or None. `forward(..., key_side=...)` then projects only the queries."""
        k, v = (self._heads(t) for t in self._one_gemm((self.key, self.value), x))
        p2c = self._p2c(k, *relative) if self.position_terms and self.config.p2c else None
        return k, v, p2c

    def _project(self, x, query_input=None):
        """q, k, v (B, L, H). Self-attention runs the three projections as one GEMM over the concatenated
        weights (one pass over x and, backwards, one gradient GEMM instead of three and two adds)."""
        if query_input is not None:
            return (self.query(query_input), *self._one_gemm((self.key, self.value), x))
        return self._one_gemm((self.query, self.key, self.value), x)

    def _one_gemm(self, layers, x):
        """Several projections of the same x as one GEMM over their concatenated weights, split again."""
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat([layer.bias for layer in layers])
        return linear(x, weight, bias).split(self.config.hidden_size, -1)

    def _scaled_positions(self, projection: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
        """Projected relative embeddings as heads (h, R, d), times the attention scale: folding the
        scale into these few rows spares a pass over every (h, B, L, L) score tensor."""
        return self._heads((projection(rows) * self.scale)[None])[:, 0]

    @staticmethod
    def _against_positions(x, positions):
        """(h, B, L, d) x (h, R, d) -> (h, B, L, R): one GEMM per head over all B*L rows (no copy of the
        positions per sequence, and their gradient is one GEMM, not B of them summed)."""
        heads, batch, length, _ = x.shape
        return torch.bmm(x.flatten(1, 2), positions.transpose(1, 2)).view(heads, batch, length, positions.shape[1])

    def _position_scores(self, q, k, table, index, query_positions=None, p2c=None):
        """Scaled c2p[i,j] = Qc[i].Kr[delta(i,j)] plus p2c[i,j] = Kc[j].Qr[delta(j,i)] (paper) or [delta(i,j)]
        (code), each times the attention scale, (h, B, Lq, L). index: delta over all positions (L, L);
        query_positions: (B, M), where each sequence's M queries sit when they are not all L positions (the
        EMD at the masked rows only); p2c: `_p2c`'s result if already computed (it depends on the keys only)."""
        if self.config.p2c and p2c is None:
            p2c = self._p2c(k, table, index, query_positions)
        if not self.config.c2p:
            return p2c.reshape(*q.shape[:3], k.shape[2])
        heads, batch, q_len, _ = q.shape
        if query_positions is not None:
            c2p = self._c2p_by_gather(q, table, index[query_positions])
        elif self._can_shift(k.shape[2]):
            # [t, b, r, j] = c2p[i = t*m + r, j] (row k + i - j): the query blocks back in order, one copy
            keys = self._scaled_positions(self._position_key_projection(), self._window(table, k.shape[2]).flip(0))
            c2p = shifted_scores(q, keys).permute(0, 2, 1, 3, 4).reshape(heads, batch, q_len, k.shape[2])
        else:
            c2p = self._c2p_by_gather(q, table, index)
        if p2c is None:
            return c2p
        return (c2p.view(p2c.shape) + p2c).view(c2p.shape)  # p2c may be a strided 5-d view: no copy of it first

    def _p2c(self, k, table, index, query_positions=None):
        """The scaled p2c scores of every key for each query position, (h, B, Lq, L), or by the shift
        (h, B, Lq, blocks, m) as a view: they depend on the keys and the queries' positions, not the queries."""
        heads, batch, length, _ = k.shape
        if self._can_shift(length):
            # p2c by Transformer-XL's shift (`shifted_scores`): [t, b, r, i] = the score of key j = t*m + r for
            # query i, with row k + j - i (paper, window flipped) or k - j + i (code, window as is); permuted,
            # (h, B, i, blocks, m) is (h, B, i, j). Every query position's row, then the queries' own.
            window = self._window(table, length)
            rows = window.flip(0) if self.config.p2c_index == "paper" else window
            p2c = shifted_scores(k, self._scaled_positions(self._position_query_projection(), rows)).permute(0, 2, 4, 1, 3)
            if query_positions is not None:
                p2c = p2c[:, torch.arange(batch, device=k.device)[:, None], query_positions]
            return p2c
        # (h, B, Lk, 2k): row j holds Kc[j].Qr[r]; entry [j, i] must hold Kc[j].Qr[delta(j,i)] (paper), or
        # Kc[j].Qr[delta(i,j)] (code)
        if query_positions is None:
            c2p_index, reverse = index, index  # reverse[j, i] = delta(j, i)
        else:  # per sequence: (B, M, L) and (B, L, M)
            c2p_index, reverse = index[query_positions], index[:, query_positions].permute(1, 0, 2)
        p2c_index = reverse if self.config.p2c_index == "paper" else c2p_index.transpose(-1, -2)
        p2c = self._against_positions(k, self._scaled_positions(self._position_query_projection(), table))
        return torch.gather(p2c, -1, p2c_index.expand(heads, batch, length, p2c_index.shape[-1])).transpose(-1, -2)

    def _c2p_by_gather(self, q, table, index):
        """c2p against the whole relative table (h, B, Lq, 2k), then each query's entries at index (Lq, L) or
        (B, Lq, L)."""
        heads, batch, q_len, _ = q.shape
        c2p = self._against_positions(q, self._scaled_positions(self._position_key_projection(), table))
        return torch.gather(c2p, -1, index.expand(heads, batch, q_len, index.shape[-1]))

    def _position_key_projection(self) -> nn.Linear:
        return self.key if self.config.share_position_projections else self.position_key

    def _position_query_projection(self) -> nn.Linear:
        return self.query if self.config.share_position_projections else self.position_query

    def _can_shift(self, length: int) -> bool:
        """Without buckets and with L <= k no distance is clipped, so delta(i,j) = i - j + k exactly, and the
        scores can be read off the table by a shift instead of gathers."""
        return not self.config.position_buckets and length <= self.config.relative_span

    def _window(self, table, length: int):
        """The only 2L - 1 table rows that L positions use: row c <-> distance c - (L - 1)."""
        span = self.config.relative_span
        return table[span - length + 1: span + length]


# Query rows per block in `shifted_scores`: a block of m rows reads L + m - 1 relative rows instead of all
# 2L, so the position GEMMs shrink towards half as m falls, while smaller blocks mean more, smaller GEMMs.
# At L = 128, 16 rows was the fastest block size measured (the timings of each size:
# studies/bench/runs/2026-12-04-epyc-zen3-avx2-relative-shift.txt; docs/speed.md).
SHIFT_BLOCK = 16


def shifted_scores(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """out[a, b] = x[a] . positions[L - 1 - a + b] for x (h, B, L, d) and positions (h, >= 2L - 1, d),
    returned as (h, blocks, B, m, L) with a = block * m + row: for each block of m query rows one GEMM over
    the L + m - 1 position rows it reads, then each row's diagonal read as a view (a flat row re-read with
    a stride one shorter: no copy, no gather). Blocks of SHIFT_BLOCK rows when L divides, else one block."""
    heads, batch, length, head_size = x.shape
    m = SHIFT_BLOCK if length % SHIFT_BLOCK == 0 else length
    # one spare position row (never read) makes each GEMM L + m wide: MKL ran a width of 143 much slower than
    # 144 (studies/bench/runs/2026-12-04-epyc-zen3-avx2-relative-shift.txt)
    blocks, width = length // m, length + m
    positions = F.pad(positions[:, :2 * length - 1], (0, 0, 0, 1))
    rows = x.view(heads, batch, blocks, m, head_size).transpose(1, 2).reshape(heads * blocks, batch * m, head_size)
    # block t reads position rows L - m - t*m .. 2L - 2 - t*m (and the spare): unfold's windows, last one first
    windows = positions.unfold(1, width, m).flip(1).reshape(heads * blocks, head_size, width)
    scores = torch.bmm(rows, windows).view(heads, blocks, batch, m * width)
    # row r of a block starts at column m - 1 - r: the flat (m x width) block re-read with row stride width - 1
    return scores[..., m - 1: m - 1 + m * (width - 1)].unflatten(-1, (m, width - 1))[..., :length]


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
        relative = None if relative is None else (*relative, grid)
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
            relative = (*relative, grid)
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
        """The additive key-padding bias and, for disentangled attention, (relative table, delta index); with
        relative_bias, (None, delta index)."""
        if attention_mask is None:
            bias = torch.zeros(1, 1, 1, length, device=device)
        else:
            bias = torch.zeros(attention_mask.shape, device=device).masked_fill(~attention_mask.bool(), float("-inf"))
            bias = bias[None, :, None, :]  # (1, B, 1, L): head-major, see Attention._heads
        relative = None
        if self.relative_table is not None:
            table = self.relative_table.weight
            if self.relative_norm is not None:
                table = self.relative_norm(table)
            relative = (table, relative_position_index(length, length, self.config, device))
        elif self.config.relative_bias:
            relative = (None, relative_position_index(length, length, self.config, device))
        return bias, relative

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, embedding_noise=None, rows=None):
        """The last hidden states (B, L, H). With `rows` (flat indices into B*L), only those rows of them,
        (len(rows), H), and the last block computes only those rows (`Block.at_rows`): an MLM loss reads ~15%
        of the rows, so this skips most of one layer, with the same result at every row it returns. Not with
        the EMD, which reads every row."""
        if rows is not None and self.emd is not None:
            raise ValueError("rows: the enhanced mask decoder reads every row of the last hidden states")
        x = self.embeddings(input_ids, token_type_ids, embedding_noise)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU autocast keeps LayerNorm in its input's dtype, so an fp32 residual stream would be cast
            # to bf16 again at every Linear (q, k and v each) and every gradient cast back. Carrying the
            # stream in the autocast dtype, as bf16 training usually does, removes those copies; weights,
            # optimizer state and losses stay fp32. (On GPUs autocast runs LayerNorm in fp32 anyway.)
            x = x.to(torch.get_autocast_dtype("cpu"))
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
