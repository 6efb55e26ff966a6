"""The evaluations of a trained encoder, in one place (design property 9: a row says what it learned).

    heldout.py        held-out MLM loss against unigram and left-bigram count models; the held-out figures
    word_order.py     where each layer attends; whether the row learned word order or is a bag of words
    minimal_pairs.py  a zero-shot grammar score: pseudo-log-likelihood of minimal pairs
    probes.py         linear probes of the frozen encoder on every downstream task
    finetuning.py     fine-tuning on every downstream task (the median of `finetune.seeds` runs)
    early_points.py   ELECTRA Table 1's early points: the row fine-tuned and probed at fractions of training,
                      each with the figures that say whether it had learned (`learning_figures`)
    trained.py        a trained row loaded back from its checkpoint (`word-order`, `export`)

Each is a function of an encoder (or a trained module) and data. A row (experiments.running.runner.run_row) runs
them all through `evaluate_pretrained` and `fine_tune_all`, `python -m experiments word-order` runs the word
order check on a trained row, and `calibrate` measures their noise through the rows it trains. All but
fine-tuning are deterministic for a given encoder and data, so their noise is the pretraining seed's alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ablations.encoder import Encoder
from experiments.evaluations.finetuning import cached_task, fine_tune_all, task_data  # noqa: F401 (the runner's)
from experiments.evaluations.heldout import (bigram_corruption, count_model_cross_entropy, detection_auc, heldout_figures,
                                             heldout_mlm_loss)
from experiments.evaluations.minimal_pairs import build_pairs, minimal_pair_metrics
from experiments.evaluations.probes import probe_metrics
from experiments.evaluations.word_order import word_order_metrics, word_order_report


def evaluation_device(accelerator: str) -> str:
    """Where a row's evaluations run (plain forward passes, outside the Trainer): its GPU if it may use one."""
    return "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype the row trained its matmuls in ("bf16-mixed" -> bfloat16), or None for full precision."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float16 if precision.startswith("16") else None


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)  # the row's metrics (table columns, claims)
    details: dict = field(default_factory=dict)  # per evaluation, what it was measured on (the row file keeps it)
    seconds: dict[str, float] = field(default_factory=dict)  # what each evaluation cost


def validated_metrics(module, data, trainer) -> dict[str, float]:
    """The module's held-out validation metrics (MLM loss and accuracy; an RTD row's discriminator AUC), as
    its validation step logs them, without the `val/` prefix."""
    trainer.validate(module, datamodule=data, verbose=False)
    return {k[4:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and k != "val/loss"}


def learning_figures(module, data, trainer, config, device: str) -> dict[str, float]:
    """What says whether a model has learned what the claims are about (experiments.verdicts.judging.learning_problems),
    without the rest of `evaluate_pretrained`: its validation metrics and its word order. An early point's."""
    rtd = config.objective == "rtd"
    metrics = validated_metrics(module, data, trainer)
    module.to(device).eval()
    metrics |= word_order_metrics(word_order_of(module, data, rtd, metrics.get("generator_mlm_loss" if rtd else "mlm_loss")))
    metrics |= bigram_task_auc(module, data) if rtd else {}
    module.cpu()
    return metrics


def bigram_task_auc(module, data) -> dict[str, float]:
    """An RTD row's discriminator's AUC on one fixed task, `disc_auc_bigram`: its table's held-out blocks with
    every masked position refilled by the left-bigram count model (heldout.bigram_corruption). Its own AUC
    (`disc_auc`) is against its own generator's samples, an easier task where that generator is weaker; this
    one is the same task for every row of a table."""
    from datamodules.pretraining import HELDOUT_SEED

    auc = detection_auc(module, bigram_corruption(data.load(), list(data.val_dataloader()[0]), HELDOUT_SEED))
    return {} if auc is None else {"disc_auc_bigram": auc}


def word_order_of(module, data, rtd: bool, mlm_loss: float | None = None) -> dict:
    """The word-order report of a trained module on its table's held-out blocks (experiments.evaluations.
    word_order): an RTD row's discriminator's attention and its generator's MLM loss."""
    batches = list(data.val_dataloader()[0])  # the held-out blocks every row of a table is measured on
    if mlm_loss is None:
        mlm_loss = heldout_mlm_loss(module, batches, rtd)
    return word_order_report(module.discriminator if rtd else module.encoder, batches,
                             count_model_cross_entropy(data.load()), mlm_loss,
                             "the generator" if rtd else "the encoder")


def evaluate_pretrained(module, data, config, tasks: dict, validated: dict[str, float], device: str,
                        precision: str) -> Evaluation:
    """Every evaluation of a freshly pretrained row but fine-tuning: its held-out figures, word order (from
    the held-out MLM loss its validation measured, `validated`), minimal pairs and the linear probes, on
    `device` under the row's `precision`."""
    rtd, dtype = config.objective == "rtd", autocast_dtype(precision)
    module.to(device).eval()
    result = Evaluation(heldout_figures(module, data, config))
    if rtd:  # DeBERTaV3 §3: the embeddings' mean cosine similarity, trained and at initialisation
        result.metrics |= module.embedding_similarity()
        result.metrics |= {f"{name}@init": value for name, value in module.initial_embedding_similarity.items()}
    started = time.time()
    report = word_order_of(module, data, rtd, validated.get("generator_mlm_loss" if rtd else "mlm_loss"))
    result.metrics |= word_order_metrics(report) | (bigram_task_auc(module, data) if rtd else {})
    result.details["word_order"], result.seconds["word_order"] = report, round(time.time() - started, 1)
    started = time.time()
    pairs = build_pairs(config.data, data.load())
    encoder, head = (module.generator, module.generator_head) if rtd else (module.encoder, module.mlm_head)
    metrics, result.details["minimal_pairs"] = minimal_pair_metrics(encoder, head, pairs, dtype)
    result.metrics |= metrics
    result.seconds["minimal_pairs"] = round(time.time() - started, 1)
    started = time.time()
    metrics, result.details["probes"] = probe_metrics(module.discriminator if rtd else module.encoder, tasks, True, dtype)
    result.metrics |= metrics
    result.seconds["probes"] = round(time.time() - started, 1)
    module.cpu()
    return result


def encoder_from_state(encoder_config, encoder_state: dict) -> Encoder:
    """The encoder a row fine-tunes, from its weights (`encoder_state()`: an RTD row's discriminator with
    GDES's E_G + E_Delta materialised), without the EMD, which belongs to the MLM head."""
    encoder = Encoder(encoder_config.replace(emd=False))
    missing, _ = encoder.load_state_dict(encoder_state, strict=False)
    assert not [k for k in missing if not k.startswith("emd.")], missing
    return encoder.eval()


def probe_state(encoder_config, encoder_state: dict, tasks: dict, device: str, precision: str) -> dict[str, float]:
    """The linear probes (PROBE_FEATURE only) of an encoder given as its weights: an early point of a row."""
    encoder = encoder_from_state(encoder_config, encoder_state).to(device)
    return probe_metrics(encoder, tasks, False, autocast_dtype(precision))[0]
