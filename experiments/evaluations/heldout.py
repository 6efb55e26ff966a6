"""Held-out figures of a trained row: its MLM loss beside count models fitted on the training text.

An encoder can lower its MLM loss from which words occur together in a block (a bag of words) without
learning where they occur. Count models fitted on the training text give the yardsticks: a unigram model
(no context) and the best interpolated left-bigram (the previous token only). An MLM that reads its
context in order, on both sides, does better than the bigram; a bag-of-words MLM lands between the two.
The row's figure is its held-out MLM loss at masked positions (an RTD row's: its generator's); the count
models' are over every held-out token, so the comparison is close but not exact.
"""
from __future__ import annotations

import numpy as np
import torch

from datamodules.tokenization import UNK_ID, TokenizedCorpus

# the bigram's interpolation weights tried; the best on the held-out tokens is reported (the yardstick
# is the bigram at its best, so a row that beats it has surely used the order of its context)
BIGRAM_WEIGHTS = np.linspace(0.1, 0.9, 9)

# per tokenized corpus (its cache directory): every row of a sweep on the same tokens shares the counts
_COUNT_MODELS: dict[str, dict[str, float]] = {}


def count_model_cross_entropy(tokenized: TokenizedCorpus) -> dict[str, float]:
    """Held-out cross-entropy (nats per token) of add-1/2 unigram and interpolated left-bigram models fitted
    on the training tokens, computed once per tokenized corpus in a process. Bigrams are counted by sorting
    pair codes, so the vocabulary size never makes a V x V table."""
    key = str(getattr(tokenized, "directory", ""))
    if key and key in _COUNT_MODELS:
        return dict(_COUNT_MODELS[key])
    vocabulary = tokenized.vocab_size
    train = np.asarray(tokenized.train.tokens, dtype=np.int64)
    heldout = np.asarray(tokenized.val.tokens, dtype=np.int64)
    unigram = np.bincount(train, minlength=vocabulary) + 0.5
    unigram /= unigram.sum()
    pairs, pair_counts = np.unique(train[:-1] * vocabulary + train[1:], return_counts=True)
    previous_counts = np.bincount(train[:-1], minlength=vocabulary)
    codes = heldout[:-1] * vocabulary + heldout[1:]
    found = np.searchsorted(pairs, codes).clip(max=len(pairs) - 1)
    seen = pairs[found] == codes
    previous = previous_counts[heldout[:-1]]
    bigram = np.where(seen, pair_counts[found], 0) / np.maximum(previous, 1)
    following = unigram[heldout[1:]]
    bigram_entropy = min(float(-np.log(w * bigram + (1 - w) * following).mean()) for w in BIGRAM_WEIGHTS)
    result = {"unigram": float(-np.log(unigram[heldout]).mean()), "left_bigram": bigram_entropy}
    if key:
        _COUNT_MODELS[key] = result
    return dict(result)


@torch.no_grad()
def heldout_mlm_loss(module, batches, rtd: bool) -> float:
    """The row's held-out MLM loss over masked tokens, as its validation computes it (an RTD row's generator)."""
    from lightning_modules.mlm import HeldoutMLM, masked_lm

    encoder, head = (module.generator, module.generator_head) if rtd else (module.encoder, module.mlm_head)
    device = next(encoder.parameters()).device
    heldout = HeldoutMLM().to(device)
    for batch in batches:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        heldout.update(masked_lm(encoder, head, batch)[0], batch["mlm_labels"])
    return float(heldout.loss.compute())


def heldout_figures(module, data, config) -> dict[str, float]:
    """What a row's held-out MLM figures rest on: the unknown-token rate, the passes over the training text,
    how many masked tokens they average over (the resolution of any held-out-loss comparison), the learning
    check's floor (the accuracy of always predicting the most frequent masked token), and the parameters
    (shared tensors once) and peak learning rate as used (some tables set it per row)."""
    tokenized = data.load()
    heldout_tokens = np.asarray(tokenized.val.tokens)
    heldout_labels = np.concatenate([b["mlm_labels"].numpy() for b in data.val_dataloader()[0]])
    return {"unk_rate": float((heldout_tokens == UNK_ID).mean()) if len(heldout_tokens) else 0.0,
            "epochs": module.tokens_seen / max(1, len(tokenized.train.tokens)),
            "heldout_masked_tokens": float(len(heldout_labels)),
            "mlm_unigram_acc": float(np.bincount(heldout_labels).max() / max(1, len(heldout_labels))),
            "parameters": float(sum(param.numel() for param in module.parameters())),
            "peak_lr": config.optim.peak_lr}
