"""Does a trained encoder use word order? Where each layer attends, and which regime a row is in.

Held-out MLM loss against count models (experiments.evaluations.heldout) says whether the row predicts
better than a bag of words could; the attention says whether it reads by position. On held-out blocks,
per layer: the attention's entropy as a share of a uniform distribution over the block (1.0: every token
mixes the whole block evenly, a bag of words), and the attention on the adjacent tokens (i - 1, i + 1) as
a multiple of what uniform attention gives them (the mean head and the most local head; a head that reads
its neighbours is well above 1).

A row has **learned word order** when some layer's most local head puts at least
`LEARNED_ADJACENT_MULTIPLE` times the uniform share on adjacent tokens AND its held-out MLM loss is at most
the midpoint between the unigram and the left-bigram count models (issue 23). Otherwise it is still a
**bag of words**, and it decides no claim (experiments.verdicts.judging.learning_problems). The attention is the
encoder a row fine-tunes (an RTD row's discriminator), the MLM loss the row's MLM (an RTD row's generator).
"""
from __future__ import annotations

import numpy as np
import torch

# the most local head's attention on adjacent tokens over the uniform share, in its best layer, from which a
# row reads by position: bag-of-words rows at small measured 0.7-1.2x, DeBERTa's rows 14-20x (README)
LEARNED_ADJACENT_MULTIPLE = 3.0
# where between the unigram (0) and the left-bigram (1) count models the held-out MLM loss must be at least
MLM_LOSS_SHARE_OF_THE_WAY = 0.5


@torch.no_grad()
def attention_profile(encoder, batches) -> list[dict[str, float]]:
    """Per layer: entropy / log(block length) averaged over heads and real tokens, and the attention on the
    adjacent real tokens over what uniform attention would give them, for the mean head and the most local."""
    totals = None
    device = next(encoder.parameters()).device
    for batch in batches:
        mask = batch["attention_mask"].bool().to(device)
        x = encoder.embeddings(batch["input_ids"].to(device), batch["token_type_ids"].to(device))
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
    offsets = torch.arange(length, device=mask.device)
    neighbours = ((offsets[:, None] - offsets[None, :]).abs() == 1)[None] & mask[:, None, :] & mask[:, :, None]
    on_neighbours = (probabilities * neighbours[None]).sum(-1)  # (h, B, L)
    uniform = neighbours.sum(-1) / lengths[:, None]  # (B, L)
    real = mask[None].float()
    return {"entropy": (entropy * real).sum((1, 2)).cpu(), "tokens": real.sum().cpu(),
            "adjacent": (on_neighbours * real).sum((1, 2)).cpu(),
            "uniform_adjacent": (uniform[None] * real).sum((1, 2)).cpu()}


def word_order_report(encoder, batches, count_models: dict[str, float], mlm_loss: float, mlm_of: str) -> dict:
    """The figures a row file and `python -m experiments word-order` record: the held-out cross-entropies
    and each layer's attention profile, with the verdict."""
    layers = attention_profile(encoder, batches)
    most_local = max(layer["adjacent_vs_uniform_most_local_head"] for layer in layers)
    return {"heldout_cross_entropy": {"mlm": mlm_loss, "mlm_of": mlm_of, **count_models},
            "layers": layers,
            "learned": learned_word_order(most_local, mlm_loss, count_models["unigram"], count_models["left_bigram"])}


def word_order_metrics(report: dict) -> dict[str, float]:
    """The row's metrics from a report: the best layer's most local head, and the count models' figures."""
    entropy = report["heldout_cross_entropy"]
    return {"adjacent_attention": max(layer["adjacent_vs_uniform_most_local_head"] for layer in report["layers"]),
            "unigram_loss": entropy["unigram"], "bigram_loss": entropy["left_bigram"]}


def mlm_loss_threshold(unigram: float, bigram: float) -> float:
    return unigram + MLM_LOSS_SHARE_OF_THE_WAY * (bigram - unigram)


def learned_word_order(adjacent: float, mlm_loss: float, unigram: float, bigram: float) -> bool:
    return adjacent >= LEARNED_ADJACENT_MULTIPLE and mlm_loss <= mlm_loss_threshold(unigram, bigram)


def _per_seed(values: dict[str, list[float]]) -> list[tuple[bool, float, float, float]] | None:
    """(learned, adjacent multiple, MLM loss, threshold) per seed; None for a row that did not record them
    (a row file from before rows measured word order)."""
    mlm = values.get("mlm_loss") or values.get("generator_mlm_loss")
    figures = [values.get(m) for m in ("adjacent_attention", "unigram_loss", "bigram_loss")]
    if not mlm or not all(figures) or len({len(mlm), *map(len, figures)}) != 1:
        return None
    return [(learned_word_order(a, m, u, b), a, m, mlm_loss_threshold(u, b)) for a, m, u, b in zip(figures[0], mlm, *figures[1:])]


def word_order_cell(values: dict[str, list[float]]) -> str:
    """The table's "word order" column: `learned (4.2x)`, `bag of words (1.0x)`, or `learned in 2 of 3 seeds
    (2.9x)`, with the mean most-local-head multiple; `-` when the row did not measure it."""
    seeds = _per_seed(values)
    if seeds is None:
        return "-"
    learned = sum(s[0] for s in seeds)
    multiple = f"{np.mean([s[1] for s in seeds]):.1f}x"
    if learned == len(seeds):
        return f"learned ({multiple})"
    if learned:
        return f"learned in {learned} of {len(seeds)} seeds ({multiple})"
    # local attention without the MLM loss to show for it yet (the `cpu` preset's absolute-position rows): not a
    # bag of words by its attention, not yet word order by its predictions; it decides no claim either way
    if all(s[1] >= LEARNED_ADJACENT_MULTIPLE for s in seeds):
        return f"attends locally, MLM not yet ({multiple}, {np.mean([s[2] for s in seeds]):.2f} > {seeds[0][3]:.2f})"
    return f"bag of words ({multiple})"


def word_order_problem(values: dict[str, list[float]], brief: bool = False) -> str | None:
    """Why a row is still a bag of words (in any of its seeds), or None when it learned word order or did not
    measure it; `brief`: only which of the two it is (a claim's line names it, the table gives the figures)."""
    seeds = _per_seed(values)
    if seeds is None or all(s[0] for s in seeds):
        return None
    unlearned = [s for s in seeds if not s[0]]
    where = "" if len(unlearned) == len(seeds) else f" in {len(unlearned)} of {len(seeds)} seeds"
    adjacent, mlm, threshold = (float(np.mean([s[i] for s in unlearned])) for i in (1, 2, 3))
    local = all(s[1] >= LEARNED_ADJACENT_MULTIPLE for s in unlearned)
    if brief:
        return f"{'not yet word order' if local else 'still a bag of words'}{where}"
    # an RTD row's attention is its discriminator's, its MLM loss its generator's: one can learn without the other
    loss = "held-out MLM loss" if values.get("mlm_loss") else "its generator's held-out MLM loss"
    return (f"{'not yet word order' if local else 'still a bag of words'}{where}: most local head {adjacent:.1f}x "
            f"({'>=' if local else '<'} {LEARNED_ADJACENT_MULTIPLE:g}x), {loss} {mlm:.3f} "
            f"({'<=' if mlm <= threshold else '>'} {threshold:.3f}, the count models' midpoint)")
