"""The evaluations of a trained encoder (experiments.evaluations), each on a model built so that the right
answer is known: probes on labels the features determine (and on shuffled ones), minimal pairs on an encoder
that prefers the original order (and one that cannot see order), the word-order check on an encoder that
attends to its neighbours (and one that attends evenly). Fast: tiny models, no corpus."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from ablations.heads import MLMHead, init_head

TINY = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_positions=64,
            dropout=0.0, attention_dropout=0.0)


# -- linear probes ------------------------------------------------------------------------------------


def _items(rng, count):
    """Random token sequences of 8-24 tokens (no padding inside), as fine-tuning encodes them."""
    return [np.array([rng.integers(5, 300, n), np.zeros(n, int)]) for n in rng.integers(8, 25, count)]


def _task(train, dev, labels_train, labels_dev):
    from datamodules.downstream import TaskSpec

    spec = TaskSpec("linear", 2, "accuracy")
    majority = float(100 * max(np.mean(labels_dev), 1 - np.mean(labels_dev)))
    task = SimpleNamespace(spec=spec, majority_score=lambda: majority)
    return SimpleNamespace(task=task, train_items=list(zip(train, labels_train)), val_items=list(zip(dev, labels_dev)))


def test_a_probe_reads_a_label_its_features_determine_and_not_a_shuffled_one():
    from experiments.evaluations.probes import FEATURES, PROBE_FEATURE, encoder_features, probe_metrics

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(**TINY, initializer_range=0.1)).eval()
    rng = np.random.default_rng(0)
    examples = _items(rng, 900)
    features = encoder_features(encoder, [(x, 0) for x in examples])[PROBE_FEATURE]
    projection = features @ rng.normal(size=features.shape[1])
    distance = projection - np.median(projection)
    keep = np.argsort(np.abs(distance))[150:]  # a margin: drop the examples nearest the boundary
    examples, labels = [examples[i] for i in keep], (distance[keep] > 0).astype(np.int64)
    linear = _task(examples[:500], examples[500:], labels[:500], labels[500:])
    metrics, details = probe_metrics(encoder, {"linear": linear})
    assert metrics["linear_probe"] >= 97, metrics
    assert metrics["probe_avg"] == metrics["linear_probe"] == metrics[f"linear_probe_{PROBE_FEATURE}"]
    assert {f"probe_avg_{f}" for f in FEATURES} <= set(metrics) and details["linear"]["train"] == 500
    shuffled = _task(examples[:500], examples[500:], rng.permutation(labels[:500]), labels[500:])
    score = probe_metrics(encoder, {"shuffled": shuffled}, every_feature=False)[0]["shuffled_probe"]
    assert 40 <= score <= 60, score  # chance on 250 dev examples, whose classes are balanced
    assert probe_metrics(encoder, {"linear": linear})[0] == metrics  # deterministic for an encoder and data


def test_a_regression_task_is_probed_by_ridge_regression_with_its_correlation_metric():
    from experiments.evaluations.probes import fit_probe

    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 16))
    target = features @ rng.normal(size=16) + 0.1 * rng.normal(size=600)
    score, c = fit_probe(features[:400], target[:400], features[400:], target[400:], "pearson_spearman", regression=True)
    assert score > 95 and c in (1.0, 10.0, 100.0)  # a linear target: the weakest regularisation wins
    noise, _ = fit_probe(features[:400], rng.permutation(target[:400]), features[400:], target[400:],
                         "pearson_spearman", regression=True)
    assert abs(noise) < 25, noise


# -- minimal pairs ------------------------------------------------------------------------------------

CYCLE, FIRST = 20, 5  # a language whose every token is followed by the next one, mod 20


def _counting(rng, count, length):
    starts = rng.integers(0, CYCLE, count)
    return (FIRST + (starts[:, None] + np.arange(length)) % CYCLE).astype(np.int64)


def _trained_on_counting(steps=120):
    """A tiny MLM trained on the counting language until it predicts a masked token from its neighbours. Its
    attention is disentangled (relative positions): with absolute ones a model this small stays on the unigram
    plateau for hundreds of steps, as the suite's small rows do."""
    from lightning_modules.mlm import masked_lm

    torch.manual_seed(0)
    config = EncoderConfig(**TINY | {"num_layers": 1}, attention="disentangled", relative_span=16, emd=False)
    encoder, rng = Encoder(config), np.random.default_rng(1)
    head = init_head(MLMHead(encoder.config))
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(steps):
        ids = torch.from_numpy(_counting(rng, 32, 12))
        masked = torch.from_numpy(rng.random(ids.shape) < 0.2)
        masked[:, 0] |= ~masked.any(1)
        positions = torch.nonzero(masked.reshape(-1))[:, 0]
        batch = {"input_ids": ids.masked_fill(masked, 4), "attention_mask": torch.ones_like(ids, dtype=torch.bool),
                 "token_type_ids": torch.zeros_like(ids), "mlm_positions": positions}
        loss = torch.nn.functional.cross_entropy(masked_lm(encoder, head, batch)[0], ids.reshape(-1)[positions])
        optimiser.zero_grad(), loss.backward(), optimiser.step()
    return encoder.eval(), head.eval()


def _swap_pairs(rng, count):
    from experiments.evaluations.minimal_pairs import MinimalPairs, _swap

    sentences, pairs = [], []
    for original in _counting(rng, count, 10):
        variant = np.array(_swap(tuple(original.tolist()), rng))
        pairs.append((len(sentences), len(sentences) + 1))
        sentences += [original, variant]
    return MinimalPairs(sentences, [np.arange(len(s)) for s in sentences], {"swap": pairs})


def test_minimal_pairs_near_100_for_an_encoder_that_learned_the_order_and_50_for_one_that_cannot_see_it():
    from experiments.evaluations.minimal_pairs import minimal_pair_metrics

    pairs = _swap_pairs(np.random.default_rng(2), 200)
    encoder, head = _trained_on_counting()
    metrics, details = minimal_pair_metrics(encoder, head, pairs)
    assert metrics["minimal_pairs_swap"] >= 95 and metrics["minimal_pairs"] == metrics["minimal_pairs_swap"], metrics
    assert details["pairs"] == {"swap": 200}
    with torch.no_grad():  # every distance gets the same embedding: the encoder sees a set of tokens, each swap ties
        encoder.relative_table.weight.copy_(encoder.relative_table.weight.mean(0))
    assert minimal_pair_metrics(encoder, head, pairs)[0]["minimal_pairs_swap"] == 50.0


def test_pll_word_l2r_masks_the_rest_of_a_word_to_the_right_of_the_token_scored():
    from datamodules.tokenization import CLS_ID, MASK_ID, SEP_ID
    from experiments.evaluations.minimal_pairs import _masked_copies

    ids, positions = _masked_copies(np.array([10, 11, 12, 13]), np.array([0, 0, 1, 1]), 8)
    assert positions.tolist() == [1, 2, 3, 4] and ids.shape == (4, 8)
    assert ids[0, :6].tolist() == [CLS_ID, MASK_ID, MASK_ID, 12, 13, SEP_ID]  # the word's second piece too
    assert ids[1, :6].tolist() == [CLS_ID, 10, MASK_ID, 12, 13, SEP_ID]  # its first piece stays visible
    assert ids[2, :6].tolist() == [CLS_ID, 10, 11, MASK_ID, MASK_ID, SEP_ID]
    assert ids[3, :6].tolist() == [CLS_ID, 10, 11, 12, MASK_ID, SEP_ID]


def test_pseudo_log_likelihood_batches_give_each_sentence_its_own_sum():
    from experiments.evaluations.minimal_pairs import pseudo_log_likelihoods

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(**TINY)).eval()
    head = init_head(MLMHead(encoder.config)).eval()
    rng = np.random.default_rng(0)
    sentences = [rng.integers(5, 300, n) for n in (3, 9, 14, 5, 22)]
    words = [np.arange(len(s)) // 2 for s in sentences]
    together = pseudo_log_likelihoods(encoder, head, sentences, words, tokens_per_batch=10_000)
    alone = [pseudo_log_likelihoods(encoder, head, [s], [w])[0] for s, w in zip(sentences, words)]
    small_batches = pseudo_log_likelihoods(encoder, head, sentences, words, tokens_per_batch=64)
    assert np.allclose(together, alone, atol=1e-4) and np.allclose(small_batches, alone, atol=1e-4)


def test_minimal_pairs_are_fixed_and_each_kind_changes_what_it_says(tiny_tokenizer):
    from collections import Counter

    from datamodules.tokenization import encode_sentences
    from experiments.evaluations.minimal_pairs import make_pairs, tokenize_pairs

    text = ["The company said its profit rose in the third quarter .", "Shares of the bank fell sharply on Monday .",
            "The minister said the plan would cut costs .", "Prices rose as demand grew in the region ."]
    sentences = [s.split() for s in text]
    counts = Counter({"profit": 40, "costs": 35, "demand": 50, "bank": 9, "plan": 12, "region": 8, "third": 60,
                      "rose": 70, "fell": 64, "said": 300, "the": 2000, "its": 100, "in": 900, "cut": 33})
    pairs = make_pairs(sentences, counts, per_kind=6, seed=0)
    assert pairs == make_pairs(sentences, counts, per_kind=6, seed=0)  # seeded: the same pairs every time
    assert pairs != make_pairs(sentences, counts, per_kind=6, seed=1)
    assert len(pairs["swap"]) == 6 and len(set(pairs["swap"])) == 6  # a second round of new variants
    for original, variant in pairs["swap"]:
        changed = [i for i, (a, b) in enumerate(zip(original, variant)) if a != b]
        assert sorted(original) == sorted(variant) and len(changed) == 2 and changed[1] == changed[0] + 1
    for original, variant in pairs["replace"]:
        (i,) = [i for i, (a, b) in enumerate(zip(original, variant)) if a != b]
        assert variant[i].islower() and variant[i].isalpha()
        assert int(np.log2(counts[original[i]])) == int(np.log2(counts[variant[i]]))  # the same frequency band
    tokenized = SimpleNamespace(tokenizer=tiny_tokenizer, config=SimpleNamespace(kind="bpe"))
    built = tokenize_pairs(pairs, tokenized, max_length=64)
    for kind, found in pairs.items():
        for (original, _), (a, _) in zip(found, built.pairs[kind]):
            # word by word, a sentence tokenizes as the corpus tokenized it: whole
            assert built.sentences[a].tolist() == encode_sentences(tiny_tokenizer, "bpe", [" ".join(original)])[0]
            assert built.words[a][-1] == len(original) - 1


# -- word order ---------------------------------------------------------------------------------------


def _neighbour_attention(strength: float) -> Encoder:
    """Disentangled attention whose every head scores only the relative distance: content queries and keys
    give nothing (zero weights), and the content-to-position term gives `strength` to distances -1 and +1."""
    config = EncoderConfig(**TINY, attention="disentangled", relative_span=16, p2c=False, emd=False,
                           normalize_relative_embeddings=False)
    encoder = Encoder(config).eval()
    with torch.no_grad():
        for block in encoder.blocks:
            attention = block.attention
            attention.query.weight.zero_(), attention.key.weight.zero_(), attention.key.bias.zero_()
            attention.query.bias.fill_(1.0)
            attention.position_key.weight.copy_(torch.eye(config.hidden_size)), attention.position_key.bias.zero_()
        encoder.relative_table.weight.zero_()
        span = config.relative_span
        encoder.relative_table.weight[[span - 1, span + 1]] = strength  # delta(i, j) = i - j + k
    return encoder


def test_the_word_order_check_sees_an_encoder_that_reads_its_neighbours_and_one_that_does_not():
    from experiments.evaluations.word_order import LEARNED_ADJACENT_MULTIPLE, word_order_metrics, word_order_report

    ids = torch.randint(5, 300, (3, 16))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 12:] = False
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    counts = {"unigram": 7.0, "left_bigram": 5.0}
    local = word_order_report(_neighbour_attention(2.0), [batch], counts, mlm_loss=5.5, mlm_of="the encoder")
    for layer in local["layers"]:  # nearly all the attention on the 2 neighbours of 12-16 tokens: about 6-8x
        assert layer["adjacent_vs_uniform_most_local_head"] > 5 and layer["adjacent_vs_uniform_mean_head"] > 5
        assert layer["entropy_share"] < 0.5
    assert local["learned"] and word_order_metrics(local)["adjacent_attention"] > 2 * LEARNED_ADJACENT_MULTIPLE
    even = word_order_report(_neighbour_attention(0.0), [batch], counts, mlm_loss=5.5, mlm_of="the encoder")
    for layer in even["layers"]:  # every score ties: uniform attention, 1.0x on the neighbours
        assert layer["adjacent_vs_uniform_most_local_head"] == pytest.approx(1.0, abs=1e-4)
        assert layer["entropy_share"] == pytest.approx(1.0, abs=1e-4)
    assert not even["learned"]
    # attending locally is not enough: the MLM loss must also be past the count models' midpoint (6.0)
    assert not word_order_report(_neighbour_attention(2.0), [batch], counts, 6.2, "the encoder")["learned"]


def test_the_word_order_column_and_problem_follow_each_seed():
    from experiments.evaluations.word_order import word_order_cell, word_order_problem

    def values(adjacent, mlm):
        return {"adjacent_attention": adjacent, "mlm_loss": mlm, "unigram_loss": [7.0] * len(mlm),
                "bigram_loss": [5.0] * len(mlm)}

    assert word_order_cell(values([4.0, 4.4], [5.5, 5.6])) == "learned (4.2x)"
    assert word_order_problem(values([4.0, 4.4], [5.5, 5.6])) is None
    assert word_order_cell(values([1.0, 1.0], [6.6, 6.7])) == "bag of words (1.0x)"
    assert word_order_problem(values([1.0, 1.0], [6.6, 6.7])) == \
        "still a bag of words: most local head 1.0x (< 3x), held-out MLM loss 6.650 (> 6.000, the count models' midpoint)"
    assert word_order_cell(values([4.0, 1.0, 3.5], [5.5, 6.6, 5.9])) == "learned in 2 of 3 seeds (2.8x)"
    assert " in 1 of 3 seeds" in word_order_problem(values([4.0, 1.0, 3.5], [5.5, 6.6, 5.9]))
    # local attention whose MLM loss has not followed (the cpu preset's rows): neither learned nor a bag of words
    assert word_order_cell(values([8.0], [6.37])) == "attends locally, MLM not yet (8.0x, 6.37 > 6.00)"
    assert word_order_problem(values([8.0], [6.37])).startswith("not yet word order: most local head 8.0x (>= 3x), held")
    rtd = {"adjacent_attention": [3.1], "generator_mlm_loss": [5.9], "unigram_loss": [7.0], "bigram_loss": [5.0]}
    assert word_order_cell(rtd) == "learned (3.1x)"  # the discriminator's attention, the generator's loss
    collapsed = rtd | {"adjacent_attention": [1.1]}  # All-Tokens MLM, copy gate at 0
    assert word_order_problem(collapsed) == ("still a bag of words: most local head 1.1x (< 3x), its generator's "
                                             "held-out MLM loss 5.900 (<= 6.000, the count models' midpoint)")
    assert word_order_cell({"mlm_loss": [6.0]}) == "-" and word_order_problem({"mlm_loss": [6.0]}) is None


def test_the_count_models_are_counted_once_per_tokenized_corpus(tmp_path):
    import math

    from experiments.evaluations.heldout import count_model_cross_entropy

    cycle = np.tile(np.arange(4, 8, dtype=np.int32), 200)
    corpus = SimpleNamespace(vocab_size=10, directory=tmp_path / "tokens-a", train=SimpleNamespace(tokens=cycle),
                             val=SimpleNamespace(tokens=cycle[:80]))
    first = count_model_cross_entropy(corpus)
    assert first["unigram"] == pytest.approx(math.log(4), abs=0.01) and first["left_bigram"] < 0.1
    corpus.train = SimpleNamespace(tokens=np.random.default_rng(0).integers(4, 8, 800).astype(np.int32))
    assert count_model_cross_entropy(corpus) == first  # the same corpus (its cache directory): not counted again
    corpus.directory = tmp_path / "tokens-b"  # another tokenized corpus: counted on its own tokens
    assert count_model_cross_entropy(corpus)["left_bigram"] > 1.0


def _masked_batch(ids: list[list[int]], masked: list[int], pad_from: int | None = None) -> dict:
    """A held-out batch as the data module makes it: masked positions (flat) hold [MASK] (4), labels the originals."""
    input_ids = torch.tensor(ids)
    positions = torch.tensor(masked)
    labels = input_ids.reshape(-1)[positions].clone()
    masked_ids = input_ids.reshape(-1).index_fill(0, positions, 4).view_as(input_ids)
    attention = torch.ones_like(input_ids, dtype=torch.bool)
    if pad_from is not None:
        attention[:, pad_from:] = False
    return {"input_ids": masked_ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(input_ids),
            "mlm_positions": positions, "mlm_labels": labels}


def test_bigram_corruption_refills_only_masked_positions_from_the_left_tokens_successors():
    from experiments.evaluations.heldout import bigram_corruption

    # training text where 5 is always followed by 6 and 7 by 8 or 9 (never 7 by itself)
    train = np.array([5, 6, 7, 8, 5, 6, 7, 9] * 50, dtype=np.int32)
    corpus = SimpleNamespace(vocab_size=10, train=SimpleNamespace(tokens=train))
    batch = _masked_batch([[0, 5, 6, 7, 8, 5, 6, 7, 9, 2]], masked=[2, 3, 4, 8, 6])
    refilled = bigram_corruption(corpus, [batch] * 40, seed=0)
    ids = torch.stack([r["input_ids"][0] for r in refilled])
    replaced = torch.stack([r["replaced"][0] for r in refilled])
    original = torch.tensor([0, 5, 6, 7, 8, 5, 6, 7, 9, 2])
    assert torch.equal(ids[:, [0, 1, 5, 7, 9]], original[[0, 1, 5, 7, 9]].expand(40, 5))  # unmasked: as they were
    # 3 is masked after a masked 2: the model reads the original left token (6, always followed by 7), not [MASK]
    assert (ids[:, 3] == 7).all() and not replaced[:, 3].any()
    assert (ids[:, 2] == 6).all() and (ids[:, 6] == 6).all() and not replaced[:, [2, 6]].any()  # 5 -> 6 only
    # after 7 the model draws 8 or 9: a draw equal to the original is labelled original, as in RTD
    assert set(ids[:, 4].tolist()) == {8, 9} and set(ids[:, 8].tolist()) == {8, 9}
    assert torch.equal(replaced[:, 4], ids[:, 4] != 8) and torch.equal(replaced[:, 8], ids[:, 8] != 9)
    assert not replaced[:, [0, 1, 5, 7, 9]].any()
    again = bigram_corruption(corpus, [batch] * 40, seed=0)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(refilled, again))  # one fixed task


def test_detection_auc_reads_the_discriminators_scores_over_real_tokens_only():
    from experiments.evaluations.heldout import detection_auc

    class Scorer(torch.nn.Module):  # D's "state" is the token id; the head scores it with a sign
        def __init__(self, sign):
            super().__init__()
            self.sign, self.weight = sign, torch.nn.Parameter(torch.zeros(1))
            self.rtd = SimpleNamespace(variant="electra")
            self.discriminator = lambda ids, mask, types: ids.float().unsqueeze(-1)
            self.discriminator.parameters = self.parameters
            self.rtd_head = lambda hidden: self.sign * hidden.squeeze(-1)

    # replaced tokens carry high ids; the padded tail would be scored highest of all, and labelled original
    ids = torch.tensor([[1, 2, 90, 3, 91, 99, 99]])
    replaced = torch.tensor([[False, False, True, False, True, False, False]])
    mask = torch.tensor([[True] * 5 + [False] * 2])
    corrupted = [{"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "replaced": replaced}]
    assert detection_auc(Scorer(1.0), corrupted) == pytest.approx(1.0)
    assert detection_auc(Scorer(-1.0), corrupted) == pytest.approx(0.0)
    mlm_discriminator = Scorer(1.0)
    mlm_discriminator.rtd = SimpleNamespace(variant="replace-mlm")
    assert detection_auc(mlm_discriminator, corrupted) is None
