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


def bigram_corruption(tokenized: TokenizedCorpus, batches: list[dict], seed: int) -> list[dict]:
    """The held-out batches with every masked position refilled by a sample of the left-bigram count model
    (fitted on the training tokens) given the original token before it: one fixed replaced-token-detection
    task for every RTD row. A row's own AUC is measured against its own generator's samples, so a row with a
    weaker generator faces an easier task; this one is the same for all rows and all points of a run. A
    sample equal to the original is labelled original, as in RTD; a position whose left token never starts a
    training bigram (a special token) is refilled from the unigram model."""
    vocabulary = tokenized.vocab_size
    train = np.asarray(tokenized.train.tokens, dtype=np.int64)
    pairs, pair_counts = np.unique(train[:-1] * vocabulary + train[1:], return_counts=True)
    cumulative_pairs = np.cumsum(pair_counts)
    cumulative_unigram = np.cumsum(np.bincount(train, minlength=vocabulary))
    rng = np.random.default_rng(seed)
    corrupted = []
    for batch in batches:
        positions, labels = batch["mlm_positions"].numpy(), batch["mlm_labels"].numpy()
        original = batch["input_ids"].reshape(-1).numpy().copy()
        original[positions] = labels
        previous = original[positions - 1]  # no block starts with a masked token: it starts with a special
        start = np.searchsorted(pairs, previous * vocabulary)
        end = np.searchsorted(pairs, (previous + 1) * vocabulary)
        below = np.where(start > 0, cumulative_pairs[np.maximum(start - 1, 0)], 0)
        drawn = below + rng.random(len(positions)) * (cumulative_pairs[np.maximum(end - 1, 0)] - below)
        from_bigram = pairs[np.searchsorted(cumulative_pairs, drawn, side="right").clip(max=len(pairs) - 1)] % vocabulary
        from_unigram = np.searchsorted(cumulative_unigram, rng.random(len(positions)) * cumulative_unigram[-1], side="right")
        samples = np.where(end > start, from_bigram, from_unigram)
        filled = original.copy()
        filled[positions] = samples
        shape = batch["input_ids"].shape
        corrupted.append({"input_ids": torch.from_numpy(filled).view(shape), "attention_mask": batch["attention_mask"],
                          "token_type_ids": batch["token_type_ids"],
                          "replaced": torch.from_numpy(filled != original).view(shape) & batch["attention_mask"].bool()})
    return corrupted


@torch.no_grad()
def detection_auc(module, corrupted: list[dict]) -> float | None:
    """An RTD row's discriminator's AUC (replaced against original, over real tokens) on fixed corrupted
    batches (`bigram_corruption`); None for a row whose discriminator has no replaced-token head."""
    from torchmetrics.functional.classification import binary_auroc

    if getattr(module, "rtd_head", None) is None or module.rtd.variant not in ("electra", "electra-15"):
        return None
    device = next(module.discriminator.parameters()).device
    scores, labels = [], []
    for batch in corrupted:
        mask = batch["attention_mask"].to(device)
        hidden = module.discriminator(batch["input_ids"].to(device), mask, batch["token_type_ids"].to(device))
        real = mask.bool()
        scores.append(module.rtd_head(hidden).float()[real])
        labels.append(batch["replaced"].to(device)[real])
    return float(binary_auroc(torch.cat(scores), torch.cat(labels).long()))
