"""How `ablations.encoder.Attention` is computed: the same math as the formula there, by faster routes.
`route` is the one place that chooses among them; everything else here carries a route out.

- **q, k, v in one GEMM** (`project`): self-attention runs the three projections over their concatenated
  weights (one pass over x and, backwards, one gradient GEMM instead of three and two adds).
- **Heads head-major** (`heads`): (h, B, L, d), which is (h*B, L, d) for the per-sequence attention GEMMs
  and (h, B*L, d) for the position GEMMs, both as views.
- **Position scores by a shift or by gathers** (`position_scores`): with no distance clipped (no buckets and
  L <= k), c2p and p2c are read off the relative table by Transformer-XL's shift (`shifted_scores`), else
  each query's entries are gathered from its scores against the whole table. The attention scale is folded
  into the few projected table rows rather than applied to every (h, B, L, L) score.
- **Keys computed once for the EMD** (`key_side`): keys, values and p2c scores depend on the keys' input
  alone, so the EMD's steps, which all attend to the same H, share them.
- **Attention on the CPU with dropout** (`attend`): the math CPU SDPA runs then anyway, written out so that
  the dropout mask is `fast_ops.keep_mask`'s; elsewhere `scaled_dot_product_attention`.

The figures behind these choices: docs/speed.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ablations.fast_ops import keep_mask, linear

if TYPE_CHECKING:
    from ablations.config import EncoderConfig
    from ablations.encoder import Attention, RelativePositions


class Route(NamedTuple):
    """Which way one attention call goes where there is a choice."""
    shift: bool  # position scores by the shift (no distance clipped), else by gathers
    cpu_dropout: bool  # scores, softmax and the cheap dropout mask written out, else SDPA


def route(config: EncoderConfig, key_length: int, device: torch.device, dropout_p: float = 0.0) -> Route:
    """The one selector. The shift needs every delta(i, j) = i - j + k exactly: without buckets and with
    L <= k no distance is clipped. The written-out attention pays only on the CPU and only with dropout."""
    shift = not config.position_buckets and key_length <= config.relative_span
    return Route(shift=shift, cpu_dropout=bool(dropout_p) and device.type == "cpu")


# ----------------------------------------------------------------------------------- projections


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H) -> (h, B, L, d), contiguous (head-major, see the module docstring)."""
    batch, length, hidden = x.shape
    return x.view(batch, length, num_heads, hidden // num_heads).permute(2, 0, 1, 3).contiguous()


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(h, B, L, d) -> (B, L, h*d)."""
    heads_, batch, length, head_size = x.shape
    return x.permute(1, 2, 0, 3).reshape(batch, length, heads_ * head_size)


def one_gemm(layers, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Several projections of the same x as one GEMM over their concatenated weights, split again."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return linear(x, weight, bias).split(layers[0].out_features, -1)


def project(attention: Attention, x, query_input=None, key_side=None):
    """q, k, v as heads (h, B, L, d) and the p2c scores if `key_side` carries them (else None). Queries from
    query_input where given, keys and values from x, or from `key_side` (x is then not read)."""
    h = attention.config.num_heads
    if key_side is not None:
        return (heads(attention.query(query_input), h), *key_side)
    if query_input is not None:
        projected = (attention.query(query_input), *one_gemm((attention.key, attention.value), x))
    else:
        projected = one_gemm((attention.query, attention.key, attention.value), x)
    return (*(heads(t, h) for t in projected), None)


def key_side(attention: Attention, x, relative: RelativePositions | None = None) -> tuple:
    """Keys and values as heads (h, B, L, d) and the scaled p2c scores at the queries' positions
    (relative.rows) or None: what attention computes from x alone, for queries that change while x does not."""
    k, v = (heads(t, attention.config.num_heads) for t in one_gemm((attention.key, attention.value), x))
    p2c = p2c_scores(attention, k, relative) if attention.position_terms and attention.config.p2c else None
    return k, v, p2c


# ------------------------------------------------------------------------------- position scores


def position_scores(attention: Attention, q, k, relative: RelativePositions, p2c=None):
    """`Attention.position_scores`: c2p plus p2c, each times the attention scale, (h, B, Lq, L); p2c:
    `p2c_scores`' result if already computed (it depends on the keys only)."""
    config = attention.config
    if config.p2c and p2c is None:
        p2c = p2c_scores(attention, k, relative)
    if not config.c2p:
        return p2c.reshape(*q.shape[:3], k.shape[2])
    heads_, batch, q_len, _ = q.shape
    table, index, rows = relative
    if rows is not None:
        c2p = c2p_by_gather(attention, q, table, index[rows])
    elif route(config, k.shape[2], k.device).shift:
        # [t, b, r, j] = c2p[i = t*m + r, j] (row k + i - j): the query blocks back in order, one copy
        keys = scaled_positions(attention, attention.position_key_projection(), window(table, k.shape[2], config).flip(0))
        c2p = shifted_scores(q, keys).permute(0, 2, 1, 3, 4).reshape(heads_, batch, q_len, k.shape[2])
    else:
        c2p = c2p_by_gather(attention, q, table, index)
    if p2c is None:
        return c2p
    return (c2p.view(p2c.shape) + p2c).view(c2p.shape)  # p2c may be a strided 5-d view: no copy of it first


def p2c_scores(attention: Attention, k, relative: RelativePositions):
    """The scaled p2c scores of every key for each query position, (h, B, Lq, L), or by the shift
    (h, B, Lq, blocks, m) as a view: they depend on the keys and the queries' positions, not the queries."""
    config, (table, index, query_positions) = attention.config, relative
    heads_, batch, length, _ = k.shape
    query_projection = attention.position_query_projection()
    if route(config, length, k.device).shift:
        # p2c by Transformer-XL's shift (`shifted_scores`): [t, b, r, i] = the score of key j = t*m + r for
        # query i, with row k + j - i (paper, window flipped) or k - j + i (code, window as is); permuted,
        # (h, B, i, blocks, m) is (h, B, i, j). Every query position's row, then the queries' own.
        rows = window(table, length, config)
        rows = rows.flip(0) if config.p2c_index == "paper" else rows
        p2c = shifted_scores(k, scaled_positions(attention, query_projection, rows)).permute(0, 2, 4, 1, 3)
        if query_positions is not None:
            p2c = p2c[:, torch.arange(batch, device=k.device)[:, None], query_positions]
        return p2c
    # (h, B, Lk, 2k): row j holds Kc[j].Qr[r]; entry [j, i] must hold Kc[j].Qr[delta(j,i)] (paper), or
    # Kc[j].Qr[delta(i,j)] (code)
    if query_positions is None:
        c2p_index, reverse = index, index  # reverse[j, i] = delta(j, i)
    else:  # per sequence: (B, M, L) and (B, L, M)
        c2p_index, reverse = index[query_positions], index[:, query_positions].permute(1, 0, 2)
    p2c_index = reverse if config.p2c_index == "paper" else c2p_index.transpose(-1, -2)
    p2c = against_positions(k, scaled_positions(attention, query_projection, table))
    return torch.gather(p2c, -1, p2c_index.expand(heads_, batch, length, p2c_index.shape[-1])).transpose(-1, -2)


def c2p_by_gather(attention: Attention, q, table, index):
    """c2p against the whole relative table (h, B, Lq, 2k), then each query's entries at index (Lq, L) or
    (B, Lq, L)."""
    heads_, batch, q_len, _ = q.shape
    c2p = against_positions(q, scaled_positions(attention, attention.position_key_projection(), table))
    return torch.gather(c2p, -1, index.expand(heads_, batch, q_len, index.shape[-1]))


def scaled_positions(attention: Attention, projection: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """Projected relative embeddings as heads (h, R, d), times the attention scale: folding the
    scale into these few rows spares a pass over every (h, B, L, L) score tensor."""
    return heads((projection(rows) * attention.scale)[None], attention.config.num_heads)[:, 0]


def against_positions(x, positions):
    """(h, B, L, d) x (h, R, d) -> (h, B, L, R): one GEMM per head over all B*L rows (no copy of the
    positions per sequence, and their gradient is one GEMM, not B of them summed)."""
    heads_, batch, length, _ = x.shape
    return torch.bmm(x.flatten(1, 2), positions.transpose(1, 2)).view(heads_, batch, length, positions.shape[1])


def window(table, length: int, config: EncoderConfig):
    """The only 2L - 1 table rows that L positions use: row c <-> distance c - (L - 1)."""
    span = config.relative_span
    return table[span - length + 1: span + length]


# Query rows per block in `shifted_scores`: a block of m rows reads L + m - 1 relative rows instead of all
# 2L, so the position GEMMs shrink towards half as m falls, while smaller blocks mean more, smaller GEMMs.
# At L = 128, 16 rows was the fastest block size measured (docs/speed.md, "Where it comes from", links the
# timings of each size).
SHIFT_BLOCK = 16


def shifted_scores(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """out[a, b] = x[a] . positions[L - 1 - a + b] for x (h, B, L, d) and positions (h, >= 2L - 1, d),
    returned as (h, blocks, B, m, L) with a = block * m + row: for each block of m query rows one GEMM over
    the L + m - 1 position rows it reads, then each row's diagonal read as a view (a flat row re-read with
    a stride one shorter: no copy, no gather). Blocks of SHIFT_BLOCK rows when L divides, else one block."""
    heads_, batch, length, head_size = x.shape
    m = SHIFT_BLOCK if length % SHIFT_BLOCK == 0 else length
    # one spare position row (never read) makes each GEMM L + m wide: MKL ran a width of 143 much slower than
    # 144 (the same measurements as SHIFT_BLOCK's)
    blocks, width = length // m, length + m
    positions = F.pad(positions[:, :2 * length - 1], (0, 0, 0, 1))
    rows = x.view(heads_, batch, blocks, m, head_size).transpose(1, 2).reshape(heads_ * blocks, batch * m, head_size)
    # block t reads position rows L - m - t*m .. 2L - 2 - t*m (and the spare): unfold's windows, last one first
    windows = positions.unfold(1, width, m).flip(1).reshape(heads_ * blocks, head_size, width)
    scores = torch.bmm(rows, windows).view(heads_, blocks, batch, m * width)
    # row r of a block starts at column m - 1 - r: the flat (m x width) block re-read with row stride width - 1
    return scores[..., m - 1: m - 1 + m * (width - 1)].unflatten(-1, (m, width - 1))[..., :length]


# ------------------------------------------------------------------------------------- attention


def attend(q, k, v, bias, scale: float, dropout_p: float, chosen: Route) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with dropout on the probabilities, (h, B, Lq, d); bias broadcasts
    to (h, B, Lq, L)."""
    if not chosen.cpu_dropout:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    # CPU SDPA runs exactly this math whenever dropout is on; doing it here swaps in the cheap mask.
    # A key-padding bias stays (h*B, 1, L) and is broadcast by baddbmm, never materialised per query.
    bias = bias.expand(*q.shape[:2], *bias.shape[2:]).flatten(0, 1)
    scores = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores.view(*q.shape[:3], k.shape[2]), -1).to(q.dtype)
    # dropout's 1/(1-p) is applied to the (h, B, L, d) output, half the size of the probabilities
    return ((probs * keep_mask(probs.shape, dropout_p, probs.dtype)) @ v).mul_(1.0 / (1.0 - dropout_p))
