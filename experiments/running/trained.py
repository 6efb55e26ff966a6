"""A trained row loaded back from its checkpoint, for what runs after its sweep: `python -m experiments
word-order` (experiments.running.word_order), `python -m experiments export` and the fine-tuning spread study. It plans
and builds the row as the runner does, so it sits beside the runner, not beneath it in `evaluations/` (which the
runner imports)."""
from __future__ import annotations

from pathlib import Path

import torch

from datamodules.errors import UsageError
from datamodules.pretraining import PretrainingDataModule
from experiments.running.durable import resumable_checkpoint
from experiments.evaluations import encoder_from_state
from experiments.presets import Preset
from experiments.running.runner import build_module, plan
from experiments.spec import Experiment


def load_trained_row(experiment: Experiment, preset: Preset, row: str, seed: int, overrides: dict | None,
                     results_dir: Path):
    """A row's pretrained module at its final step, with its plan and data module; a UsageError says how
    to train it when there is none."""
    p = plan(experiment, preset, seed + 1, [row], overrides, results_dir)[seed]
    checkpoint = resumable_checkpoint(p.work_dir / "checkpoints", set_aside=False) \
        if (p.work_dir / "checkpoints").exists() else None
    command = f"make {experiment.id} PRESET={preset.name}" + (f" SEEDS={seed + 1}" if seed else "")
    if checkpoint is None:
        raise UsageError(f"{row} (seed {seed}, preset {preset.name}) has no pretrained checkpoint in {p.work_dir}: "
                         f"train it first with `{command}` (and the same --set / --corpus / --tasks, if any)")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["global_step"] < p.steps:
        raise UsageError(f"{row} stopped at step {state['global_step']} of {p.steps}: finish it with `{command}`")
    data = PretrainingDataModule(p.config.data, seed=seed)
    module = build_module(p.config, data.vocab_size)
    module.load_state_dict(state["state_dict"])
    return p, module.eval(), data


def export_row(experiment: Experiment, preset: Preset, row: str, seed: int, overrides: dict | None,
               results_dir: Path, to: Path, fmt: str | None = None) -> Path:
    """Write a trained row's encoder (an RTD row's discriminator, GDES's E_G + E_Delta materialised) and
    its tokenizer as a HuggingFace directory; a UsageError says why a row cannot be exported."""
    from ablations.export import export_pretrained

    p, module, data = load_trained_row(experiment, preset, row, seed, overrides, results_dir)
    config = module.discriminator_config() if p.config.objective == "rtd" else module.encoder.config
    return export_pretrained(encoder_from_state(config, module.encoder_state()), data.load().tokenizer, to, fmt)
