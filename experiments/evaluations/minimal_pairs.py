"""Minimal pairs: a zero-shot grammar score that needs no downstream task (issue 24, item 2).

From held-out sentences of the pretraining corpus, a fixed set of pairs of (the sentence, a variant):

- **swap**: two adjacent words swapped. An encoder that cannot see order gives both the same score (it sees
  the same tokens), so this kind is a second, independent check that a row learned word order;
- **replace**: one lower-case word replaced by another lower-case word of the same frequency band in the
  training text (a band is a power of two of counts: a word seen 40 times shares it with words seen 32-63
  times), so that how common a word is cannot tell the two apart.

Each sentence is scored by its pseudo-log-likelihood (PLL; Salazar et al. 2020, "Masked Language Model
Scoring"): the sum over its tokens of log p(token | the sentence with that token masked). A word split into
several tokens inflates the plain PLL, since its first piece is predicted from its own continuation
("souv" from "##enir"); Kauf & Ivanova 2023 ("A Better Way to Do Masked Language Model Scoring") fix it by
also masking the rest of the word to the right of the token scored (PLL-word-l2r), which is what this does.
`minimal_pairs` is the share of pairs whose original scores higher, x100, with a tie counting half, so 50 is
chance; each kind is also reported. The pairs are drawn once with a fixed seed from the corpus alone, so
every row of a table (and every seed) is scored on the same pairs; the score is deterministic for a given
encoder. An RTD row is scored through its generator, the only part of it that predicts tokens.

Cost: one forward pass per token of every sentence scored (the masked copies of a sentence go through the
encoder together, in batches of similar length), so only sentences of at most `MAX_WORDS` words are used
and each original is scored once for both kinds: on the news corpus 5,264 sentences, 2.6M token positions.
At cpu (4 x 128, bf16, 2 cores) that took 16-19 s per NSP row, against 354-435 s of pretraining (2026-12-03).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.tokenization import CLS_ID, MASK_ID, PAD_ID, SEP_ID, encode_sentences

KINDS = ("swap", "replace")
PAIRS_PER_KIND = 2000  # the binomial sampling error of a share near 75% is then about 1 point
# A preset's held-out budget (the tokens of its `data.max_heldout_blocks` held-out blocks: smoke 32 x 64, small
# 256 x 128, base every block) scales this held-out evaluation too: a pair per 16 of those tokens, at most
# PAIRS_PER_KIND. Smoke gets 128 pairs per kind (its tiny models learn nothing; CI runs every row), small and
# larger 2,000.
HELDOUT_TOKENS_PER_PAIR = 16
MIN_WORDS, MAX_WORDS = 5, 15  # short sentences: a sentence of n tokens costs n forward passes of n tokens
PAIR_SEED = 0
MAX_VARIANTS = 3  # variants of one kind per original, used only when the corpus has too few short sentences
WORD_COUNT_LIMIT = 5_000_000  # training words counted for the frequency bands (a sample of a huge corpus)
MIN_WORD_COUNT = 2  # replacement words seen at least this often (a word seen once is often a typo)
TIE = 1e-3  # nats: two PLLs closer than this are a tie (an order-blind encoder differs by float rounding only)
TOKENS_PER_BATCH = 16384  # padded tokens of masked copies per forward pass


@dataclass(frozen=True)
class MinimalPairs:
    sentences: list[np.ndarray]  # token ids of every distinct sentence scored (no special tokens)
    words: list[np.ndarray]  # per sentence: the word each token belongs to
    pairs: dict[str, list[tuple[int, int]]]  # kind -> (original, variant) indices into `sentences`


_BUILT: dict[tuple, MinimalPairs] = {}


def pairs_per_kind(data_config) -> int:
    if data_config.max_heldout_blocks is None:
        return PAIRS_PER_KIND
    return min(PAIRS_PER_KIND, data_config.max_heldout_blocks * data_config.block_size // HELDOUT_TOKENS_PER_PAIR)


def build_pairs(data_config, tokenized) -> MinimalPairs:
    """The fixed pairs for a corpus and tokenizer (built once per process), from held-out sentences of
    MIN_WORDS to MAX_WORDS words whose tokens fit a block with [CLS] and [SEP]."""
    from datamodules.corpus import load_corpus

    per_kind, max_length = pairs_per_kind(data_config), data_config.block_size
    key = (str(tokenized.directory), max_length, per_kind)
    if key in _BUILT:
        return _BUILT[key]
    corpus = load_corpus(data_config.corpus)
    heldout = [s.split() for batch in corpus.val.iter(batch_size=64) for document in batch["sentences"]
               for s in document]
    pairs = make_pairs([w for w in heldout if MIN_WORDS <= len(w) <= MAX_WORDS], word_counts(corpus.train), per_kind)
    built = tokenize_pairs(pairs, tokenized, max_length)
    _BUILT[key] = built
    return built


def word_counts(documents) -> Counter:
    """How often each whitespace word occurs in (up to WORD_COUNT_LIMIT words of) the training text."""
    counts, seen = Counter(), 0
    for batch in documents.iter(batch_size=64):
        for document in batch["sentences"]:
            for sentence in document:
                words = sentence.split()
                counts.update(words)
                seen += len(words)
        if seen >= WORD_COUNT_LIMIT:
            break
    return counts


def _replaceable(word: str) -> bool:
    return word.isalpha() and word.islower()  # no capital or punctuation that would give the variant away


def make_pairs(sentences: list[list[str]], counts: Counter, per_kind: int = PAIRS_PER_KIND,
               seed: int = PAIR_SEED) -> dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]]:
    """Up to `per_kind` (original, variant) word sequences of each kind, drawn with `seed` from `sentences`:
    one variant of each kind per sentence, in a seeded order, and a second (third) round of new variants
    only when there are fewer sentences than pairs wanted."""
    bands: dict[int, list[str]] = {}
    for word, count in sorted(counts.items()):
        if count >= MIN_WORD_COUNT and _replaceable(word):
            bands.setdefault(int(math.log2(count)), []).append(word)
    band_of = {w: b for b, members in bands.items() for w in members}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    pairs: dict[str, list] = {kind: [] for kind in KINDS}
    made: set[tuple] = set()
    for _ in range(MAX_VARIANTS):
        for index in order:
            original = tuple(sentences[index])
            for kind in KINDS:
                if len(pairs[kind]) >= per_kind:
                    continue
                variant = _swap(original, rng) if kind == "swap" else _replace(original, rng, bands, band_of)
                if variant is not None and (kind, original, variant) not in made:
                    made.add((kind, original, variant))
                    pairs[kind].append((original, variant))
        if all(len(found) >= per_kind for found in pairs.values()):
            break
    return pairs


def _swap(words: tuple[str, ...], rng) -> tuple[str, ...] | None:
    positions = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
    if not positions:
        return None
    i = positions[rng.integers(len(positions))]
    return words[:i] + (words[i + 1], words[i]) + words[i + 2:]


def _replace(words: tuple[str, ...], rng, bands: dict[int, list[str]], band_of: dict[str, int]):
    positions = [i for i, w in enumerate(words) if w in band_of and len(bands[band_of[w]]) > 1]
    if not positions:
        return None
    i = positions[rng.integers(len(positions))]
    members = bands[band_of[words[i]]]
    replacement = members[rng.integers(len(members) - 1)]
    if replacement == words[i]:  # drawn from the band without the word itself
        replacement = members[-1]
    return words[:i] + (replacement,) + words[i + 1:]


def tokenize_pairs(pairs: dict[str, list], tokenized, max_length: int) -> MinimalPairs:
    """Token ids and word indices of every distinct sentence. Each word is encoded on its own (with the space
    before it, for byte-level BPE), which is how the corpus's sentences tokenize: neither tokenizer's
    pre-tokenisation lets a token cross a space."""
    vocabulary = sorted({w for found in pairs.values() for pair in found for sentence in pair for w in sentence})
    ids = dict(zip(vocabulary, encode_sentences(tokenized.tokenizer, tokenized.config.kind, vocabulary)))
    index: dict[tuple[str, ...], int] = {}
    sentences, words = [], []

    def sentence_index(sentence: tuple[str, ...]) -> int | None:
        if sentence not in index:
            pieces = [ids[w] for w in sentence]
            tokens = np.array([t for piece in pieces for t in piece], dtype=np.int64)
            if not 0 < len(tokens) <= max_length - 2:
                return None
            index[sentence] = len(sentences)
            sentences.append(tokens)
            words.append(np.repeat(np.arange(len(pieces)), [len(p) for p in pieces]))
        return index[sentence]

    kept = {kind: [] for kind in pairs}
    for kind, found in pairs.items():
        for original, variant in found:
            a, b = sentence_index(original), sentence_index(variant)
            if a is not None and b is not None:
                kept[kind].append((a, b))
    return MinimalPairs(sentences, words, kept)


def _masked_copies(tokens: np.ndarray, words: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """n copies of [CLS] tokens [SEP] (padded to `length`); copy k masks token k and the tokens of its word to
    its right (PLL-word-l2r). Returns the copies and the position each one is scored at."""
    n = len(tokens)
    ids = np.full((n, length), PAD_ID, np.int64)
    ids[:, 0], ids[:, 1:n + 1], ids[:, n + 1] = CLS_ID, tokens, SEP_ID
    k, j = np.arange(n)[:, None], np.arange(n)[None, :]
    masked = (j == k) | ((j > k) & (words[None, :] == words[:, None]))
    ids[:, 1:n + 1][masked] = MASK_ID
    return ids, np.arange(n) + 1


@torch.no_grad()
def pseudo_log_likelihoods(encoder, head, sentences: list[np.ndarray], words: list[np.ndarray],
                           autocast_dtype: torch.dtype | None = None,
                           tokens_per_batch: int = TOKENS_PER_BATCH) -> np.ndarray:
    """PLL-word-l2r of every sentence (nats), from the MLM `head` over `encoder`, the masked copies of several
    sentences of similar length batched together."""
    from lightning_modules.mlm import masked_lm

    device = next(encoder.parameters()).device
    totals = np.zeros(len(sentences))
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    start = 0
    while start < len(order):
        length = -(-(len(sentences[order[start]]) + 2) // 8) * 8
        group, copies = [], 0
        for i in order[start:]:  # the longest sentence of the group decides the padded length
            needed = -(-(len(sentences[i]) + 2) // 8) * 8
            if group and (copies + len(sentences[i])) * needed > tokens_per_batch:
                break
            group.append(i)
            copies, length = copies + len(sentences[i]), needed
        start += len(group)
        built = [_masked_copies(sentences[i], words[i], length) for i in group]
        ids = torch.from_numpy(np.concatenate([b[0] for b in built])).to(device)
        rows = np.concatenate([np.full(len(sentences[i]), i) for i in group])
        positions = np.concatenate([b[1] for b in built]) + np.arange(len(rows)) * length
        labels = torch.from_numpy(np.concatenate([sentences[i] for i in group])).to(device)
        batch = {"input_ids": ids, "attention_mask": ids != PAD_ID, "token_type_ids": torch.zeros_like(ids),
                 "mlm_positions": torch.from_numpy(positions).to(device)}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = masked_lm(encoder, head, batch)[0]
        scores = torch.log_softmax(logits.float(), -1).gather(1, labels[:, None])[:, 0]
        np.add.at(totals, rows, scores.double().cpu().numpy())
    return totals


def pair_scores(likelihoods: np.ndarray, pairs: dict[str, list[tuple[int, int]]]) -> dict[str, float]:
    """Per kind, the share (x100) of pairs whose original has the higher PLL, a tie counting half."""
    shares = {}
    for kind, found in pairs.items():
        if found:
            original, variant = (likelihoods[[p[i] for p in found]] for i in (0, 1))
            difference = original - variant
            shares[kind] = float(100 * np.mean(np.where(np.abs(difference) <= TIE, 0.5, difference > 0)))
    return shares


def minimal_pair_metrics(encoder, head, pairs: MinimalPairs, autocast_dtype=None) -> tuple[dict[str, float], dict]:
    """`minimal_pairs` (the mean of the kinds' shares) and `minimal_pairs_<kind>`, and what they were measured on."""
    was_training = encoder.training
    encoder.eval(), head.eval()
    shares = pair_scores(pseudo_log_likelihoods(encoder, head, pairs.sentences, pairs.words, autocast_dtype), pairs.pairs)
    encoder.train(was_training), head.train(was_training)
    metrics = {f"minimal_pairs_{kind}": share for kind, share in shares.items()}
    if shares:
        metrics["minimal_pairs"] = float(np.mean(list(shares.values())))
    details = {"pairs": {kind: len(found) for kind, found in pairs.pairs.items()}, "sentences": len(pairs.sentences),
               "scoring": "PLL-word-l2r (Kauf & Ivanova 2023)", "words": [MIN_WORDS, MAX_WORDS], "seed": PAIR_SEED}
    return metrics, details
