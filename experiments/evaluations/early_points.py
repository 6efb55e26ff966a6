"""ELECTRA Table 1's early points: a row evaluated at fractions of its training (`RunConfig.evaluate_at`).

With `early_points="own-schedule"` (the default) the point "at 25% of training" is a run of a quarter of the
row's steps with its own warm-up and decay to zero, as the paper's models were; with "mid-run" it is the
row's own checkpoint at that step (`SaveEncoderAt`), cheaper, but its learning rate has not decayed (~80% of
the peak at 25%). Each point is fine-tuned and probed like the row itself (`downstream_avg@0.25`,
`probe_avg@0.25`). An own-schedule point also records what says whether it had learned (its held-out MLM
loss, discriminator AUC and word order: `disc_auc@0.25`, `adjacent_attention@0.25`), so that a claim on a
point that is still a bag of words decides nothing, like a row's (experiments.verdicts.judging.learning_problems_of);
a mid-run point is a checkpoint of the row's own run and records only its scores.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from lightning.pytorch.callbacks import Callback

from experiments.evaluations import evaluation_device, probe_state
from experiments.evaluations.finetuning import fine_tune_all


class SaveEncoderAt(Callback):
    """Saves the encoder to fine-tune from at given fractions of training (mid-run early points)."""

    def __init__(self, directory: Path, fractions: tuple[float, ...], total_steps: int):
        self.directory = directory
        self.steps = {f: max(1, round(f * total_steps)) for f in fractions}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        for fraction, step in self.steps.items():
            path = self.directory / f"encoder_at_{fraction}.pt"
            if trainer.global_step == step and trainer.is_global_zero and not path.exists():
                torch.save(module.encoder_state(), path)


def early_point(config, fraction: float, steps: int):
    """(config, steps) of the run "at `fraction` of training": that fraction of the row's steps, with its own
    warm-up and decay to zero."""
    early_steps = max(1, round(fraction * steps))
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, max_steps=early_steps),
                               evaluate_at=()), early_steps


def evaluate_early_points(config, encoder_config, tasks: dict, seed: int, steps: int, work: Path, hardware,
                          precision: str, finished_run: Callable[..., Path],
                          pretrain_early: Callable[[object, int, float], tuple[dict, dict[str, float]]]
                          ) -> tuple[dict[str, float], dict]:
    """Each early point's fine-tuned and probed scores (and an own-schedule point's learning figures), suffixed
    `@<fraction>`, and what each point was. `pretrain_early(config, steps, fraction)` trains an own-schedule
    point and returns its encoder's weights and learning figures (the runner's pretraining, resumable like the
    row's, and `experiments.evaluations.learning_figures`); `finished_run(task, k, at=...)` records its runs."""
    metrics, points = {}, {}
    for fraction in config.evaluate_at:
        if config.early_points == "mid-run":
            state, early_steps = torch.load(work / f"encoder_at_{fraction}.pt", weights_only=True), round(fraction * steps)
            learned = {}
        else:
            early_config, early_steps = early_point(config, fraction, steps)
            state, learned = pretrain_early(early_config, early_steps, fraction)
        at = f"@{fraction:g}"
        early = learned | fine_tune_all(config, encoder_config, state, tasks, seed, hardware, partial(finished_run, at=at))[0]
        early |= probe_state(encoder_config, state, tasks, evaluation_device(hardware.accelerator), precision)
        metrics |= {f"{k}{at}": v for k, v in early.items() if not k.endswith("majority") and "@ft" not in k}
        points[f"{fraction:g}"] = {"steps": early_steps, "schedule": config.early_points}
    return metrics, points
