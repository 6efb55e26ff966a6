"""Does a trained row's encoder use word order? `python -m experiments word-order <experiment> --row NAME`

An encoder can lower its MLM loss from which words occur together in a block (a bag of words) without
learning where they occur; replaced token detection against a generator that samples plausible words
needs where. Two measurements tell the two apart:

- **Held-out cross-entropy against count models** fitted on the training text: a unigram model (no
  context) and the best interpolated left-bigram (the previous token only). An MLM that reads its context in
  order, on both sides, does better than the bigram; a bag-of-words MLM lands between the two. The row's
  figure is its held-out MLM loss at masked positions (an RTD row's: its generator's), the count models'
  are over every held-out token, so the comparison is close but not exact.
- **Where each layer attends**, on held-out blocks: the attention's entropy as a share of a uniform
  distribution over the block (1.0: every token mixes the whole block evenly, a bag of words), and the
  attention on the adjacent tokens (i - 1, i + 1) as a multiple of what uniform attention gives them
  (the mean head and the most local head; a head that reads its neighbours is well above 1).

The encoder inspected is the one a row fine-tunes: an RTD row's discriminator, an MLM row's encoder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from datamodules.tokenization import TokenizedCorpus

# the bigram's interpolation weights tried; the best on the held-out tokens is reported (the yardstick
# is the bigram at its best, so a row that beats it has surely used the order of its context)
BIGRAM_WEIGHTS = np.linspace(0.1, 0.9, 9)


def count_model_cross_entropy(tokenized: TokenizedCorpus) -> dict[str, float]:
    """Held-out cross-entropy (nats per token) of add-1/2 unigram and interpolated left-bigram models fitted
    on the training tokens. Bigrams are counted by sorting pair codes, so the vocabulary size never makes a
    V x V table."""
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
    return {"unigram": float(-np.log(unigram[heldout]).mean()), "left_bigram": bigram_entropy}


@torch.no_grad()
def attention_profile(encoder, batches) -> list[dict[str, float]]:
    """Per layer: entropy / log(block length) averaged over heads and real tokens, and the attention on the
    adjacent real tokens over what uniform attention would give them, for the mean head and the most local."""
    totals = None
    for batch in batches:
        mask = batch["attention_mask"].bool()
        x = encoder.embeddings(batch["input_ids"], batch["token_type_ids"])
        bias, relative = encoder.attention_inputs(mask, x.shape[1], x.device)
        lengths = mask.sum(1).float()  # (B,)
        layers = []
        for block in encoder.blocks:
            attention_input = block.attention_norm(x) if block.pre_norm else x
            probabilities = block.attention.probabilities(attention_input, bias, relative)  # (h, B, L, L)
            layers.append(_layer_sums(probabilities, mask, lengths))
            x = block(x, bias, relative)
        totals = layers if totals is None else [{k: t[k] + s[k] for k in t} for t, s in zip(totals, layers)]
    return [{"entropy_share": float(t["entropy"].mean() / t["tokens"]),
             "adjacent_vs_uniform_mean_head": float((t["adjacent"] / t["uniform_adjacent"]).mean()),
             "adjacent_vs_uniform_most_local_head": float((t["adjacent"] / t["uniform_adjacent"]).max())}
            for t in totals]


def _layer_sums(probabilities, mask, lengths) -> dict[str, torch.Tensor]:
    """Sums over the real query tokens, per head: normalised entropy, attention on the real neighbours, and
    the attention uniform weights would put on them (their number / block length)."""
    length = mask.shape[1]
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1) / lengths.clamp(min=2).log()[None, :, None]
    offsets = torch.arange(length)
    neighbours = ((offsets[:, None] - offsets[None, :]).abs() == 1)[None] & mask[:, None, :] & mask[:, :, None]
    on_neighbours = (probabilities * neighbours[None]).sum(-1)  # (h, B, L)
    uniform = neighbours.sum(-1) / lengths[:, None]  # (B, L)
    real = mask[None].float()
    return {"entropy": (entropy * real).sum((1, 2)), "tokens": real.sum(),
            "adjacent": (on_neighbours * real).sum((1, 2)), "uniform_adjacent": (uniform[None] * real).sum((1, 2))}


@torch.no_grad()
def heldout_mlm_loss(module, batches, rtd: bool) -> float:
    """The row's held-out MLM loss over masked tokens, as its validation computes it (an RTD row's generator)."""
    from lightning_modules.mlm import HeldoutMLM, masked_lm

    encoder, head = (module.generator, module.generator_head) if rtd else (module.encoder, module.mlm_head)
    heldout = HeldoutMLM()
    for batch in batches:
        heldout.update(masked_lm(encoder, head, batch)[0], batch["mlm_labels"])
    return float(heldout.loss.compute())


def inspect(experiment, preset, row: str, seed: int, overrides: dict | None, results_dir: Path) -> dict:
    """Measure a trained row on its held-out blocks, write `<table>/word-order/<row>__seed<k>.json` and return
    what it holds."""
    from experiments.durable import write_json_atomically
    from experiments.runner import load_trained_row

    p, module, data = load_trained_row(experiment, preset, row, seed, overrides, results_dir)
    data.setup()
    batches = list(data.val_dataloader()[0])  # the held-out blocks every row of a table is measured on
    rtd = p.config.objective == "rtd"
    report = {"experiment": experiment.id, "preset": preset.name, "row": row, "seed": seed,
              "heldout_cross_entropy": {"mlm": heldout_mlm_loss(module, batches, rtd),
                                        "mlm_of": "the generator" if rtd else "the encoder",
                                        **count_model_cross_entropy(data.load())},
              "layers": attention_profile(module.discriminator if rtd else module.encoder, batches)}
    path = p.directory / "word-order" / f"{p.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, report, "word-order report")
    return report | {"path": str(path)}


def describe(report: dict) -> str:
    """The report as a few readable lines, with the verdict on word order."""
    entropy = report["heldout_cross_entropy"]
    mlm, unigram, bigram = entropy["mlm"], entropy["unigram"], entropy["left_bigram"]
    if mlm < bigram:
        verdict = "uses word order: its MLM beats the best left-bigram"
    elif mlm < unigram:
        verdict = "a bag of words so far: its MLM beats the unigram model but not the left-bigram"
    else:
        verdict = "learned no context: its MLM does not beat the unigram model"
    lines = [f"{report['row']} (seed {report['seed']}, preset {report['preset']}): {verdict}",
             f"  held-out cross-entropy, nats/token: MLM ({entropy['mlm_of']}) {mlm:.3f} | unigram {unigram:.3f} | "
             f"left bigram {bigram:.3f}",
             "  layer  entropy/uniform  adjacent tokens vs uniform (mean head, most local head)"]
    for number, layer in enumerate(report["layers"]):
        lines.append(f"  {number:>5}  {layer['entropy_share']:>15.2f}  "
                     f"{layer['adjacent_vs_uniform_mean_head']:.1f}x, {layer['adjacent_vs_uniform_most_local_head']:.1f}x")
    return "\n".join(lines)
