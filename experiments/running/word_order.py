"""Does a trained row's encoder use word order? `python -m experiments word-order <experiment> --row NAME`

Loads a row trained earlier and runs the word-order check every row runs when it finishes
(experiments.evaluations.word_order: held-out MLM loss against unigram and left-bigram count models, and
each layer's attention on adjacent tokens against uniform), on the table's held-out blocks; it also works
on a row whose sweep is still fine-tuning. The encoder inspected is the one a row fine-tunes: an RTD row's
discriminator (its MLM loss: its generator's), an MLM row's encoder.
"""
from __future__ import annotations

from pathlib import Path

# the escape study (studies/plateau.py) and the encoder tests read these here
from experiments.evaluations.heldout import count_model_cross_entropy  # noqa: F401
from experiments.evaluations.word_order import (LEARNED_ADJACENT_MULTIPLE, attention_profile,  # noqa: F401
                                                mlm_loss_threshold)


def inspect(experiment, preset, row: str, seed: int, overrides: dict | None, results_dir: Path) -> dict:
    """Measure a trained row on its held-out blocks, write `<table>/word-order/<row>__seed<k>.json` and return
    what it holds."""
    from experiments.running.durable import write_json_atomically
    from experiments.evaluations import word_order_of
    from experiments.running.trained import load_trained_row

    p, module, data = load_trained_row(experiment, preset, row, seed, overrides, results_dir)
    data.setup()
    report = {"experiment": experiment.id, "preset": preset.name, "row": row, "seed": seed,
              **word_order_of(module, data, p.config.objective == "rtd")}
    path = p.directory / "word-order" / f"{p.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, report, "word-order report")
    return report | {"path": str(path)}


def describe(report: dict) -> str:
    """The report as a few readable lines, with the verdict on word order (the rule every row's is decided by)."""
    entropy = report["heldout_cross_entropy"]
    mlm, unigram, bigram = entropy["mlm"], entropy["unigram"], entropy["left_bigram"]
    most_local = max(layer["adjacent_vs_uniform_most_local_head"] for layer in report["layers"])
    if report["learned"]:
        verdict = "learned word order"
    elif mlm >= unigram:
        verdict = "learned no context: its MLM does not beat the unigram model"
    else:
        verdict = "a bag of words so far"
    lines = [f"{report['row']} (seed {report['seed']}, preset {report['preset']}): {verdict} (most local head "
             f"{most_local:.1f}x the uniform share on adjacent tokens, word order from {LEARNED_ADJACENT_MULTIPLE:g}x; "
             f"MLM loss {mlm:.3f}, word order from <= {mlm_loss_threshold(unigram, bigram):.3f})",
             f"  held-out cross-entropy, nats/token: MLM ({entropy['mlm_of']}) {mlm:.3f} | unigram {unigram:.3f} | "
             f"left bigram {bigram:.3f}",
             "  layer  entropy/uniform  adjacent tokens vs uniform (mean head, most local head)"]
    for number, layer in enumerate(report["layers"]):
        lines.append(f"  {number:>5}  {layer['entropy_share']:>15.2f}  "
                     f"{layer['adjacent_vs_uniform_mean_head']:.1f}x, {layer['adjacent_vs_uniform_most_local_head']:.1f}x")
    return "\n".join(lines)
