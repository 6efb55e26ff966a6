"""Parts 2 and 4: one batch's building and masking against one training step, and the default preset's
own shape, ours against HF's MLM, priced per row."""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import asdict

from studies.bench.models import Contender, _our_loss
from studies.bench.shapes import ROOT, SMALL, Shape
from studies.bench.workers import measure


def bench_batch_building(steps: int, bf16: bool) -> dict:
    from datamodules.pretraining import PretrainingDataConfig, PretrainingDataModule, TokenBudgetBatches, collate
    from lightning_modules.base import OptimConfig
    from lightning_modules.mlm import MLMModule

    data = PretrainingDataModule(PretrainingDataConfig(block_size=SMALL.length, tokens_per_batch=SMALL.tokens_per_step),
                                 seed=0)
    data.setup()
    batches = TokenBudgetBatches(data.train_set, SMALL.tokens_per_step, seed=0, shuffle=True)._all_batches()[:steps]
    start = time.perf_counter()
    built = [collate([data.train_set[i] for i in batch]) for batch in batches]
    build_s = (time.perf_counter() - start) / len(batches)
    shape = dataclasses.replace(SMALL, vocab_size=data.vocab_size)
    model = Contender("ours MLM", MLMModule(shape.encoder(), OptimConfig()), _our_loss, 0.0)
    model.step(built[0], bf16)
    start = time.perf_counter()
    for batch in built:
        model.step(batch, bf16)
    step_s = (time.perf_counter() - start) / len(built)
    return {"precision": "bf16" if bf16 else "fp32", "build_and_mask_batch_ms": round(build_s * 1000, 2),
            "train_step_ms": round(step_s * 1000, 1), "batch_share_of_step": round(build_s / step_s, 4)}


def default_preset() -> str:
    """The preset a table trains at when none is named. Read when the bench runs, as presets.py and the
    Makefile stand then: presets.py's own default where it names one (a `default_preset()` function or a
    module-level DEFAULT_PRESET / DEFAULT), else the Makefile's `PRESET ?= ...`."""
    from experiments import presets

    named = presets.default_preset() if callable(getattr(presets, "default_preset", None)) else None
    for attribute in ("DEFAULT_PRESET", "DEFAULT"):
        if named is None:
            named = getattr(presets, attribute, None)
    if named is not None:
        return named.name if isinstance(named, presets.Preset) else str(named)
    makefile = ROOT / "Makefile"
    found = re.search(r"^PRESET\s*\?=\s*(\S+)", makefile.read_text(), re.MULTILINE) if makefile.exists() else None
    if found is None:
        raise RuntimeError("no default preset: experiments/presets.py names none and the Makefile has no 'PRESET ?='")
    return found.group(1)


def preset_shape(name: str) -> tuple[Shape, int]:
    """The shape an MLM row trains at under preset `name` (its sizes, sequence, batch and vocabulary, as
    experiments.presets.configure makes them) and the row's pretraining budget in tokens."""
    from experiments.presets import configure, get_preset
    from experiments.spec import RunConfig

    config = configure(RunConfig(), get_preset(name), {})
    encoder, data = config.encoder, config.data
    shape = Shape(num_layers=encoder.num_layers, hidden_size=encoder.hidden_size, num_heads=encoder.num_heads,
                  ffn_size=encoder.ffn_size, vocab_size=data.tokenizer.vocab_size, max_positions=encoder.max_positions,
                  batch=max(1, config.tokens_per_step // data.block_size), length=data.block_size,
                  dropout=encoder.dropout, attention_dropout=encoder.attention_dropout,
                  relative_bias=encoder.relative_bias)
    return shape, config.train_tokens


def bench_default_preset(name: str, bf16: bool, steps: int, rounds: int) -> dict:
    """Ours vs HF's MLM at the preset's shape, in the precision a training run uses, and what a row's
    pretraining (train_tokens, no evaluation or fine-tuning) then takes with each. Every token is priced
    at the preset's block size, also those of a sequence-length warm-up (shorter blocks: a little cheaper)."""
    from experiments.presets import configure, get_preset
    from experiments.spec import RunConfig

    shape, train_tokens = preset_shape(name)
    rows = measure("default", [bf16], steps, rounds, shape, bf16=(True, ""))
    for row in rows:
        row["pretraining_minutes"] = round(train_tokens / row["tokens_per_s"] / 60, 2)
    data = configure(RunConfig(), get_preset(name), {}).data
    warmup = {"warmup_block_size": data.warmup_block_size, "warmup_block_epochs": data.warmup_block_epochs} \
        if data.warmup_block_epochs else {}
    return {"preset": name, "shape": asdict(shape), "train_tokens": train_tokens, **warmup, "rows": rows}
