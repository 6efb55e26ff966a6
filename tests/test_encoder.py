"""The encoder's invariants: the disentangled attention formula, EMD, ablation switches, padding, bf16, heads."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ablations.config import EncoderConfig
from ablations.attention_paths import heads, project, route
from ablations.encoder import Encoder, RelativePositions, log_bucket_position, relative_position_index
from ablations.heads import MLMHead
from datamodules.errors import UsageError
from datamodules.tokenization import PAD_ID

TINY = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_positions=64,
            dropout=0.0, attention_dropout=0.0)
DEBERTA = EncoderConfig(**TINY, attention="disentangled", relative_span=6)
RELATIVE_BIAS = EncoderConfig(**TINY, relative_bias=True, relative_span=4)  # the cpu preset's departure


def random_weights(module, seed=0, std=0.3):
    """Larger-than-init weights so that every term of the attention matters numerically."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module


def direct_disentangled_attention(attention, x, table, config):
    """The paper's formula, one query/key pair at a time (He et al. 2021, eq. 4):
    A[i,j] = Qc[i].Kc[j] + Qc[i].Kr[delta(i,j)] + Kc[j].Qr[delta(j,i)],  H = softmax(A / sqrt(3d)) Vc."""
    k = config.relative_span
    delta = lambda i, j: 0 if i - j <= -k else (2 * k - 1 if i - j >= k else i - j + k)  # noqa: E731
    heads, d = config.num_heads, config.head_size
    q_c, k_c, v_c = attention.query(x[0]), attention.key(x[0]), attention.value(x[0])
    k_r, q_r = attention.position_key(table), attention.position_query(table)
    length = x.shape[1]
    outputs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        scores = torch.zeros(length, length)
        for i in range(length):
            for j in range(length):
                scores[i, j] = (q_c[i, part] @ k_c[j, part] + q_c[i, part] @ k_r[delta(i, j), part]
                                + k_c[j, part] @ q_r[delta(j, i), part])
        outputs.append(torch.softmax(scores / math.sqrt(3 * d), -1) @ v_c[:, part])
    return attention.output(torch.cat(outputs, -1))[None]


@pytest.mark.parametrize("length", [5, 32], ids=["one-block", "blocks-of-16"])
def test_shifted_scores_read_each_rows_diagonal_and_carry_its_gradient(length):
    from ablations.attention_paths import SHIFT_BLOCK, shifted_scores

    heads, batch, head_size = 2, 3, 4
    x = torch.randn(heads, batch, length, head_size, dtype=torch.double, requires_grad=True)
    positions = torch.randn(heads, 2 * length - 1, head_size, dtype=torch.double, requires_grad=True)
    out = shifted_scores(x, positions)
    m = SHIFT_BLOCK if length % SHIFT_BLOCK == 0 else length
    assert out.shape == (heads, length // m, batch, m, length)
    a, b = torch.arange(length)[:, None], torch.arange(length)[None, :]
    expected = (x[:, :, :, None, :] * positions[:, None, length - 1 - a + b, :]).sum(-1)  # [a, b]: x[a].p[L-1-a+b]
    assert torch.allclose(out.permute(0, 2, 1, 3, 4).reshape(heads, batch, length, length), expected)
    assert torch.autograd.gradcheck(shifted_scores, (x, positions))


@pytest.mark.parametrize("span, length", [(6, 15), (16, 12), (40, 32)],
                         ids=["clipped-gather", "unclipped-shift", "unclipped-shift-in-blocks"])
def test_fast_disentangled_attention_equals_the_papers_formula(span, length):
    config = DEBERTA.replace(relative_span=span)
    encoder = random_weights(Encoder(config)).eval()
    attention = encoder.blocks[0].attention
    assert route(config, length, torch.device("cpu")).shift == (length <= span)
    x = torch.randn(1, length, config.hidden_size)
    with torch.no_grad():  # the relative table as a constant: the gradients compared are x's
        bias, relative = encoder.attention_inputs(None, length, "cpu")
    upstream = torch.randn(1, length, config.hidden_size)
    gradients = []
    for formula in (lambda x: attention(x, bias, relative), lambda x: direct_disentangled_attention(attention, x, relative.table, config)):
        x.grad = None
        out = formula(x.requires_grad_())
        (out * upstream).sum().backward()
        gradients.append((out.detach(), x.grad.clone()))
    (fast, fast_gradient), (slow, slow_gradient) = gradients
    assert torch.allclose(fast, slow, atol=1e-4)
    assert torch.allclose(fast_gradient, slow_gradient, atol=1e-4)  # the shift's views carry the gradient too
    # the code's p2c index gives a different (also tested against HF) result
    code = Encoder(config.replace(p2c_index="code")).eval()
    code.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        assert not torch.allclose(code.blocks[0].attention(x, bias, relative), slow, atol=1e-3)


def test_relative_index_clips_at_k_and_log_buckets_are_exact_near_zero():
    index = relative_position_index(10, 10, EncoderConfig(attention="disentangled", relative_span=3), "cpu")
    assert index[5, 5] == 3 and index[9, 0] == 5 and index[0, 9] == 0 and index[4, 3] == 4
    relative = torch.arange(-300, 301)
    buckets = log_bucket_position(relative, 32, 256)
    near = relative.abs() <= 16
    assert torch.equal(buckets[near], relative[near])
    assert buckets.abs().max() == 32 and (buckets[1:] >= buckets[:-1]).all()  # monotone, log-compressed
    index = relative_position_index(300, 300, EncoderConfig(attention="disentangled", relative_span=256,
                                                            position_buckets=32), "cpu")
    assert index.min() == 0 and index.max() == 63  # always inside the 2 x 32 table


@pytest.mark.parametrize("off, removed", [
    ({"c2p": False}, {"position_key"}),
    ({"p2c": False}, {"position_query"}),
    ({"emd": False}, {"emd."}),
    ({"c2p": False, "p2c": False}, {"position_key", "position_query"}),
])
def test_switching_off_a_component_removes_exactly_its_parameters(off, removed):
    full = {name for name, _ in Encoder(DEBERTA).named_parameters()}
    ablated = {name for name, _ in Encoder(DEBERTA.replace(**off)).named_parameters()}
    gone = full - ablated
    assert not ablated - full and gone
    assert all(any(marker in name for marker in removed) for name in gone)
    if off == {"c2p": False, "p2c": False}:
        assert Encoder(DEBERTA.replace(**off)).blocks[0].attention.scale == pytest.approx(1 / math.sqrt(16))


@pytest.mark.parametrize("span, length", [(6, 12), (40, 32)], ids=["clipped-gather", "unclipped-shift-in-blocks"])
def test_switching_off_a_term_removes_exactly_that_term(span, length):
    """With the same weights, score(-C2P) + score(-P2C) == score(full): each switch drops one term only."""
    config = DEBERTA.replace(relative_span=span)
    x = torch.randn(1, length, config.hidden_size)
    full = random_weights(Encoder(config)).eval()

    def position_scores(config):
        model = Encoder(config).eval()
        model.load_state_dict(full.state_dict(), strict=False)
        attention = model.blocks[0].attention
        table = model.relative_norm(model.relative_table.weight)
        relative = RelativePositions(table, relative_position_index(length, length, config, "cpu"))
        q, k = heads(attention.query(x), config.num_heads), heads(attention.key(x), config.num_heads)
        return attention.position_scores(q, k, relative) / attention.scale  # each config has its scale

    with torch.no_grad():
        both = position_scores(config)
        p2c_only = position_scores(config.replace(c2p=False))
        c2p_only = position_scores(config.replace(p2c=False))
    assert p2c_only.abs().mean() > 0.1 and c2p_only.abs().mean() > 0.1
    assert torch.allclose(p2c_only + c2p_only, both, atol=1e-4)


def test_emd_changes_only_the_masked_position_predictions():
    with_emd = random_weights(Encoder(DEBERTA), std=0.1).eval()
    without = Encoder(DEBERTA.replace(emd=False)).eval()
    without.load_state_dict(with_emd.state_dict(), strict=False)
    head = MLMHead(DEBERTA)
    ids = torch.randint(5, 300, (2, 16))
    positions = torch.tensor([3, 7, 20])
    with torch.no_grad():
        hidden_a, hidden_b = with_emd(ids), without(ids)
        assert torch.equal(hidden_a, hidden_b)  # the encoder itself is untouched by EMD
        logits_a = head(with_emd.mask_decoder_states(hidden_a), positions, with_emd.embeddings.word.weight)
        logits_b = head(without.mask_decoder_states(hidden_b), positions, without.embeddings.word.weight)
    assert logits_a.shape == (3, 300) and not torch.allclose(logits_a, logits_b)
    assert with_emd.emd.positions.weight.shape == (64, 32) and without.emd is None


@pytest.mark.parametrize("changes", [{"relative_span": 16}, {"relative_span": 6}, {"relative_span": 16, "p2c_index": "code"},
                                     {"relative_span": 16, "pre_layer_norm": True}, {"relative_span": 16, "c2p": False},
                                     {"relative_span": 16, "p2c": False}, {"relative_span": 16, "emd_layers": 3}],
                         ids=["shift", "clipped-gather", "code-p2c", "pre-ln", "p2c-only", "c2p-only", "three-steps"])
@pytest.mark.parametrize("rows", [None, [1, 4, 13, 20, 22, 5]], ids=["every-row", "some-rows"])
def test_the_emd_steps_sharing_keys_values_and_p2c_equal_steps_computing_their_own(changes, rows):
    """The EMD computes its keys, values and p2c scores once for all its steps (`Block.key_side`): its states
    and every gradient must be those of steps that each compute their own, as `Block.forward` alone does."""
    config = DEBERTA.replace(**changes)
    encoder = random_weights(Encoder(config), std=0.2).double()
    emd = encoder.emd
    hidden = torch.randn(2, 12, config.hidden_size, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 10:] = False
    rows = None if rows is None else torch.tensor(rows)
    bias, relative = encoder.attention_inputs(mask, 12, "cpu")

    def steps_on_their_own():
        query = hidden + emd.positions.weight[:12]
        for _ in range(emd.steps):
            query = emd.layer(hidden, bias, relative, query_input=query)
        return query if rows is None else query.reshape(-1, config.hidden_size)[rows]

    shared, own = emd(hidden, bias, relative, rows), steps_on_their_own()
    assert shared.shape == own.shape and torch.allclose(shared, own, atol=1e-12)
    upstream = torch.randn_like(own)
    inputs = [hidden, *emd.parameters()]
    for a, b in zip(torch.autograd.grad((shared * upstream).sum(), inputs, allow_unused=True),
                    torch.autograd.grad((own * upstream).sum(), inputs, allow_unused=True)):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-12))


@pytest.mark.parametrize("config", [EncoderConfig(**TINY), DEBERTA, EncoderConfig(**TINY, pre_layer_norm=True),
                                    RELATIVE_BIAS], ids=["absolute", "disentangled", "pre-ln", "relative-bias"])
def test_padding_never_changes_outputs_at_real_positions(config):
    encoder = random_weights(Encoder(config), std=0.1).eval()
    ids = torch.randint(5, 300, (1, 10))
    padded = torch.cat([ids, torch.full((1, 6), PAD_ID)], 1)
    mask = padded != PAD_ID
    with torch.no_grad():
        alone = encoder(ids, torch.ones_like(ids, dtype=torch.bool))
        with_padding = encoder(padded, mask)
    assert torch.allclose(alone, with_padding[:, :10], atol=1e-5)


@pytest.mark.parametrize("length, changes", [(32, {"relative_span": 32}), (12, {"relative_span": 16}),
                                             (12, {"relative_span": 6}), (12, {"relative_span": 8, "position_buckets": 4}),
                                             (32, {"relative_span": 32, "p2c_index": "code"}),
                                             (32, {"relative_span": 32, "c2p": False}), (32, {"relative_span": 32, "p2c": False})],
                         ids=["shift-blocks", "shift-one-block", "clipped", "buckets", "shift-code-p2c", "p2c-only", "c2p-only"])
def test_position_scores_at_some_query_positions_are_those_rows_of_the_full_scores(length, changes):
    """The EMD computes only the masked rows: its c2p + p2c scores for queries at given positions per sequence
    (unsorted, repeated, a different number per sequence once padded) are exactly the full matrix's rows there,
    and so are their gradients, on the shift path (blocks of 16 and one block) and the gather path."""
    config = DEBERTA.replace(**changes)
    encoder = random_weights(Encoder(config), std=0.1)
    attention = encoder.blocks[0].attention
    x = torch.randn(2, length, config.hidden_size, dtype=torch.float64, requires_grad=True)
    attention, encoder = attention.double(), encoder.double()
    _, relative = encoder.attention_inputs(None, length, "cpu")
    query_positions = torch.tensor([[length - 1, 3, 0, 3], [7, 1, 0, 0]])
    q, k, _, _ = project(attention, x)
    full = attention.position_scores(q, k, relative)  # (h, B, L, L)
    picked_q = q[:, torch.arange(2)[:, None], query_positions]  # (h, B, M, d)
    some = attention.position_scores(picked_q, k, relative._replace(rows=query_positions))
    expected = full[:, torch.arange(2)[:, None], query_positions]
    assert some.shape == expected.shape and torch.allclose(some, expected, atol=1e-12)
    weights = torch.randn_like(some)
    assert torch.allclose(torch.autograd.grad((some * weights).sum(), x, retain_graph=True)[0],
                          torch.autograd.grad((expected * weights).sum(), x)[0], atol=1e-12)


@pytest.mark.parametrize("config", [EncoderConfig(**TINY), DEBERTA.replace(relative_span=4), RELATIVE_BIAS],
                         ids=["absolute", "disentangled-clipped", "relative-bias"])
def test_attention_probabilities_are_the_ones_forward_uses(config):
    """The diagnostic's probabilities (word-order check), applied to the values, give forward's output;
    padded keys get none."""
    encoder = random_weights(Encoder(config), std=0.1).eval()
    attention = encoder.blocks[0].attention
    mask = torch.tensor([[True] * 10 + [False] * 6, [True] * 16])
    x = torch.randn(2, 16, config.hidden_size)
    bias, relative = encoder.attention_inputs(mask, 16, "cpu")
    with torch.no_grad():
        probabilities = attention.probabilities(x, bias, relative)  # (h, B, L, L)
        _, _, v, _ = project(attention, x)
        mixed = (probabilities @ v).permute(1, 2, 0, 3).reshape(2, 16, config.hidden_size)
        assert torch.allclose(attention.output(mixed), attention(x, bias, relative), atol=1e-5)
    assert torch.allclose(probabilities.sum(-1), torch.ones(()), atol=1e-5)
    assert probabilities[:, 0, :, 10:].abs().max() == 0


def test_relative_bias_adds_each_heads_learned_value_for_the_clipped_distance():
    """softmax(q.k / sqrt(d) + b[h, clip(i - j, -k, k - 1)]) one pair at a time; starting at zero it changes
    nothing, and training moves it (it is a parameter of the departure, not a fixed locality prior)."""
    encoder = random_weights(Encoder(RELATIVE_BIAS), std=0.3).eval()
    attention, k, d = encoder.blocks[0].attention, RELATIVE_BIAS.relative_span, RELATIVE_BIAS.head_size
    x = torch.randn(1, 9, RELATIVE_BIAS.hidden_size)
    bias, relative = encoder.attention_inputs(None, 9, "cpu")
    with torch.no_grad():
        probabilities = attention.probabilities(x, bias, relative)[:, 0]
        q, key = attention.query(x[0]), attention.key(x[0])
        for h in range(RELATIVE_BIAS.num_heads):
            part = slice(h * d, (h + 1) * d)
            scores = torch.tensor([[q[i, part] @ key[j, part] / math.sqrt(d)
                                    + attention.distance_bias[h, min(max(i - j, -k), k - 1) + k] * RELATIVE_BIAS.relative_bias_gain
                                    for j in range(9)] for i in range(9)])
            assert torch.allclose(probabilities[h], scores.softmax(-1), atol=1e-5)
    fresh, plain = Encoder(RELATIVE_BIAS), Encoder(RELATIVE_BIAS.replace(relative_bias=False))
    plain.load_state_dict({n: p for n, p in fresh.state_dict().items() if "distance_bias" not in n})
    ids = torch.randint(5, 300, (2, 9))
    assert torch.allclose(fresh.eval()(ids), plain.eval()(ids), atol=1e-6)
    (fresh.train()(ids) @ torch.randn(RELATIVE_BIAS.hidden_size)).square().sum().backward()
    assert fresh.blocks[0].attention.distance_bias.grad.abs().sum() > 0


def test_word_order_measures_uniform_attention_and_a_determined_next_token():
    from types import SimpleNamespace

    from experiments.running.word_order import attention_profile, count_model_cross_entropy

    encoder = Encoder(EncoderConfig(**TINY)).eval()
    with torch.no_grad():
        for block in encoder.blocks:  # queries and keys at zero: every score ties, attention is uniform
            block.attention.query.weight.zero_(), block.attention.key.weight.zero_()
    ids = torch.randint(5, 300, (2, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 8:] = False
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    for layer in attention_profile(encoder, [batch]):
        assert layer["entropy_share"] == pytest.approx(1.0, abs=1e-5)
        assert layer["adjacent_vs_uniform_mean_head"] == pytest.approx(1.0, abs=1e-5)
    # a text whose next token is always determined: the bigram is nearly exact, the unigram pays log 4
    cycle = np.tile(np.arange(4, 8, dtype=np.int32), 200)
    corpus = SimpleNamespace(vocab_size=10, train=SimpleNamespace(tokens=cycle), val=SimpleNamespace(tokens=cycle[:80]))
    entropy = count_model_cross_entropy(corpus)
    assert entropy["unigram"] == pytest.approx(math.log(4), abs=0.01) and entropy["left_bigram"] < 0.1


@pytest.mark.parametrize("config", [EncoderConfig(**TINY), DEBERTA], ids=["absolute", "disentangled"])
def test_bf16_autocast_stays_close_to_fp32(config):
    encoder = Encoder(config).eval()
    ids = torch.randint(5, 300, (4, 32))
    with torch.no_grad():
        full = encoder(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = encoder(ids)
    relative = (half.float() - full).norm() / full.norm()
    assert 0 < relative < 0.02  # autocast really ran in bf16 (not bit-identical), and stayed close


def test_mlm_head_computes_logits_only_at_masked_positions():
    config = EncoderConfig(**TINY)
    head = MLMHead(config)
    hidden = torch.randn(3, 20, config.hidden_size)
    positions = torch.tensor([0, 21, 59])
    word = torch.randn(300, config.hidden_size)
    logits = head(hidden, positions, word)
    assert logits.shape == (3, 300)
    flat = hidden.reshape(-1, config.hidden_size)
    assert torch.allclose(logits[1], head(flat[21:22], None, word)[0], atol=1e-4)


@pytest.mark.parametrize("config", [EncoderConfig(**TINY), RELATIVE_BIAS, EncoderConfig(**TINY, pre_layer_norm=True),
                                    EncoderConfig(**TINY, attention="disentangled", relative_span=6, emd=False),
                                    EncoderConfig(**TINY, attention="disentangled", relative_span=6),
                                    EncoderConfig(**TINY, attention="disentangled", relative_span=6, p2c_index="code"),
                                    EncoderConfig(**TINY, attention="disentangled", relative_span=8, position_buckets=4),
                                    EncoderConfig(**TINY, attention="disentangled", relative_span=16)],
                         ids=["absolute", "relative-bias", "pre-ln", "deberta-without-emd", "deberta-with-emd",
                              "deberta-with-emd-code-p2c", "deberta-with-emd-buckets", "deberta-with-emd-unclipped"])
@pytest.mark.parametrize("nsp", [False, True])
@pytest.mark.parametrize("positions", [[1, 4, 13, 20, 30, 33], [5, 1, 4, 30, 33, 7]], ids=["two-each", "uneven-unsorted"])
def test_the_last_block_at_the_read_rows_only_gives_the_same_losses_and_gradients(config, nsp, positions):
    """masked_lm runs the last block (and every EMD step) only at the masked rows (and each [CLS] for NSP): the
    loss and every gradient must be those of the full computation, and padding must not matter, nor how many
    rows each sequence has (the second sequence none) or their order."""
    from lightning_modules.base import OptimConfig
    from lightning_modules.mlm import MLMModule, masked_lm

    module = random_weights(MLMModule(config, OptimConfig(), nsp=nsp), std=0.2)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, config.vocab_size, (3, 12), generator=generator)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 9:] = False
    positions = torch.tensor(positions)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "mlm_positions": positions,
             "mlm_labels": torch.randint(5, config.vocab_size, (6,), generator=generator),
             "nsp_labels": torch.tensor([0, 1, 1])}

    def full_losses():  # what masked_lm computed before: every row of the last block and EMD steps, then the gather
        hidden = module.encoder(ids, mask, batch["token_type_ids"])
        states = module.encoder.mask_decoder_states(hidden, mask)
        loss = F.cross_entropy(module.mlm_head(states, positions, module.encoder.embeddings.word.weight), batch["mlm_labels"])
        return loss + (F.cross_entropy(module.nsp_head(hidden[:, 0]), batch["nsp_labels"]) if nsp else 0.0)

    reference = full_losses()
    reference_grads = torch.autograd.grad(reference, list(module.parameters()), allow_unused=True)
    sparse = module.losses(batch)["loss"]
    sparse_grads = torch.autograd.grad(sparse, list(module.parameters()), allow_unused=True)
    assert torch.allclose(sparse, reference, atol=1e-5)
    for (name, _), a, b in zip(module.named_parameters(), sparse_grads, reference_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    logits, first = masked_lm(module.encoder, module.mlm_head, batch, first_tokens=True)
    assert logits.shape == (6, config.vocab_size) and first.shape == (3, config.hidden_size)


@pytest.mark.parametrize("changes", [{}, {"relative_bias": True}, {"attention": "disentangled", "relative_span": 6, "emd": False},
                                     {"attention": "disentangled", "relative_span": 6}],
                         ids=["absolute", "relative-bias", "deberta-without-emd", "deberta-with-emd"])
def test_no_rows_read_is_an_empty_result_with_dropout_on(changes):
    """A batch with no masked position asks the last block (or the EMD) for no rows: an empty (0, H) result
    whose backward runs, not a failed reshape of an empty grid of queries."""
    config = EncoderConfig(**{**TINY, "dropout": 0.1, "attention_dropout": 0.1, **changes})
    encoder = Encoder(config).train()
    ids = torch.randint(5, 300, (2, 8))
    none = torch.tensor([], dtype=torch.long)
    if encoder.emd is None:
        states = encoder(ids, rows=none)
    else:
        states = encoder.mask_decoder_states(encoder(ids), rows=none)
    assert states.shape == (0, config.hidden_size)
    states.sum().backward()
    assert not encoder.embeddings.word.weight.grad.any()


def test_an_encoder_with_the_emd_refuses_to_compute_only_some_rows():
    encoder = Encoder(EncoderConfig(**TINY, attention="disentangled", relative_span=6))
    with pytest.raises(ValueError, match="enhanced mask decoder"):
        encoder(torch.randint(5, 300, (2, 8)), rows=torch.tensor([0, 3]))


def test_invalid_encoder_configs_are_reported_together():
    with pytest.raises(UsageError) as error:
        EncoderConfig(hidden_size=30, num_heads=4, attention="sparse").validate()
    assert "not divisible" in str(error.value) and "unknown attention" in str(error.value)
    with pytest.raises(UsageError, match="relative_bias=false"):
        EncoderConfig(attention="disentangled", relative_bias=True).validate()


def test_cpu_dropout_drops_a_fraction_p_and_keeps_the_mean():
    from ablations.fast_ops import dropout, dropout_add

    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, 0.1, training=True)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.003
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.9])
    assert abs(y.mean().item() - 1.0) < 0.005
    # the fused residual form draws the same mask from the same generator state
    residual = torch.randn_like(x)
    torch.manual_seed(1)
    fused = dropout_add(residual, x, 0.1, training=True)
    torch.manual_seed(1)
    assert torch.allclose(fused, residual + dropout(x, 0.1, training=True))
    assert torch.equal(dropout_add(residual, x, 0.1, training=False), residual + x)


@pytest.mark.parametrize("capability, expected", [("AVX512", True), ("AVX512_BF16", True), ("avx512", True),
                                                  ("AVX2", False), ("DEFAULT", False), ("NO AVX", False)])
def test_oneDNN_linear_is_used_only_where_avx512_makes_it_pay(capability, expected):
    from ablations import fast_ops

    assert fast_ops.onednn_linear_pays(capability) is expected


@pytest.mark.parametrize("shape", [(3, 7, 24), (5, 24)])
@pytest.mark.parametrize("out_features", [40, 16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cpu_linear_matches_torch_in_value_and_gradients(shape, out_features, with_bias, monkeypatch):
    from ablations import fast_ops

    if not fast_ops._onednn_linear_available():
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(fast_ops, "ONEDNN_LINEAR", True)  # on an AVX2-only CPU the path is off by default
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(out_features, shape[-1], requires_grad=True)
    bias = torch.randn(out_features, requires_grad=True) if with_bias else None
    ours = fast_ops.linear(x, weight, bias)
    assert type(ours.grad_fn).__name__ == "_OneDNNLinearBackward"  # the oneDNN path ran, not F.linear
    grad = torch.randn_like(ours)
    inputs = [x, weight] + ([bias] if with_bias else [])
    ours_grads = torch.autograd.grad(ours, inputs, grad)
    reference = F.linear(x, weight, bias)
    reference_grads = torch.autograd.grad(reference, inputs, grad)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ours_grads, reference_grads):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    # under autocast (and on other devices) it is F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_ops.linear(x, weight, bias).dtype == torch.bfloat16
    # no rows (say, no masked position in a batch) is an empty result with zero weight gradient
    empty = fast_ops.linear(x[:0], weight, bias)
    assert empty.shape == (0, *ours.shape[1:])
    empty.sum().backward()
    assert weight.grad is not None and not weight.grad.any()


def test_cpu_random_words_are_splitmix64_keyed_by_torchs_generator():
    from ablations.fast_ops import random_words

    def splitmix64(state: int) -> int:  # the published algorithm, on Python integers
        z = state % 2**64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB % 2**64
        return z ^ (z >> 31)

    torch.manual_seed(3)
    key = torch.empty((), dtype=torch.int64).random_(-(2**63), 2**63 - 1).item()
    torch.manual_seed(3)
    words = random_words(1000)
    expected = [splitmix64(key + i * 0x9E3779B97F4A7C15) for i in (0, 1, 2, 999)]
    assert [w % 2**64 for w in words[[0, 1, 2, 999]].tolist()] == expected
    # the 16-bit lanes the dropout masks use are uniform and uncorrelated with their neighbours
    lanes = random_words(250_000).view(torch.int16).double().view(-1, 4)
    assert lanes.mean(0).abs().max() < 150  # uniform on [-32768, 32767]: sd of a mean of 250k is 38
    assert lanes.std(0).sub(65536 / math.sqrt(12)).abs().max() < 100
    within_word = torch.corrcoef(lanes.T) - torch.eye(4, dtype=torch.double)
    next_word = torch.corrcoef(torch.stack([lanes[:-1, 0], lanes[1:, 0]]))[0, 1]
    assert within_word.abs().max() < 0.01 and abs(next_word) < 0.01  # sd of a correlation over 250k is 0.002
    assert not torch.equal(random_words(8), random_words(8))  # each call draws a new key


def test_compiled_encoder_matches_eager_and_trains():
    """`--compile` (speed only) must give the eager model's outputs; the CPU fast paths step aside for it."""
    torch.manual_seed(0)
    config = EncoderConfig(num_layers=2, hidden_size=64, num_heads=2, ffn_size=128, vocab_size=500, max_positions=64)
    eager = Encoder(config).eval()
    compiled = Encoder(config).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    ids = torch.randint(5, 500, (2, 16))
    out = compiled(ids)
    torch.testing.assert_close(out, eager(ids), rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    assert all(p.grad is not None for p in compiled.blocks.parameters())


@pytest.mark.parametrize("scale", [1.0, 80.0], ids=["init-like", "a label's probability underflows fp32"])
def test_cross_entropy_and_argmax_match_torch_in_value_gradient_and_argmax(scale):
    from ablations.fast_ops import cross_entropy_and_argmax

    torch.manual_seed(0)
    logits = (torch.randn(37, 500) * scale).requires_grad_()
    labels = torch.randint(0, 500, (37,))
    loss, predicted = cross_entropy_and_argmax(logits, labels)
    reference_logits = logits.detach().clone().requires_grad_()
    reference = F.cross_entropy(reference_logits, labels)
    torch.testing.assert_close(loss, reference)
    assert torch.equal(predicted, logits.argmax(-1))
    (loss * 3).backward()  # an upstream gradient other than 1
    (reference * 3).backward()
    torch.testing.assert_close(logits.grad, reference_logits.grad, rtol=1e-5, atol=1e-7)
    # the gradient overwrites the saved softmax: a second backward through the graph is refused
    loss, _ = cross_entropy_and_argmax(logits, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()



def test_attention_written_out_for_the_cpus_dropout_is_sdpas_math(monkeypatch):
    """`attention_paths.attend` on the CPU with dropout: with every mask entry kept it is SDPA's output times
    1/(1-p), padding bias included; `route` takes that path only on the CPU and only with dropout."""
    from ablations import attention_paths

    assert route(DEBERTA, 8, torch.device("cpu"), 0.1).cpu_dropout
    assert not route(DEBERTA, 8, torch.device("cpu"), 0.0).cpu_dropout
    assert not route(DEBERTA, 8, torch.device("cuda"), 0.1).cpu_dropout
    q, k, v = (torch.randn(2, 3, 8, 4) for _ in range(3))
    bias = torch.zeros(1, 3, 1, 8)
    bias[:, 1, :, 6:] = float("-inf")
    monkeypatch.setattr(attention_paths, "keep_mask", lambda shape, p, dtype: torch.ones(shape, dtype=dtype))
    written = attention_paths.attend(q, k, v, bias, 0.5, 0.1, route(DEBERTA, 8, torch.device("cpu"), 0.1))
    assert torch.allclose(written * 0.9, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5), atol=1e-6)
