"""Presets scale every table from a CI smoke run to the papers' sizes, without touching its rows.

A preset sets the model size, sequence length, batch, vocabulary, corpus size, token budget and
fine-tuning budget of the base config; the rows' diffs are applied on top. Measured on the 2-core
development machine: smoke runs a whole table in well under 2 minutes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from datamodules.errors import UsageError
from experiments.spec import RunConfig, apply_changes


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    changes: dict = field(default_factory=dict)
    eval_every: int = 4  # held-out evaluations during pretraining (the training curves)
    checkpoints: int = 4  # checkpoints during pretraining (what a killed run resumes from)


def _model(hidden, layers, heads, ffn, block, tokens_per_batch, vocab, train_tokens, max_positions):
    return {
        "encoder.hidden_size": hidden, "encoder.num_layers": layers, "encoder.num_heads": heads,
        "encoder.ffn_size": ffn, "encoder.max_positions": max_positions,
        "encoder.relative_span": min(max_positions, 256),
        "data.block_size": block, "data.tokens_per_batch": tokens_per_batch,
        "data.tokenizer.vocab_size": vocab, "train_tokens": train_tokens,
    }


# The `gpu` preset's budget (docs/gpu.md has the arithmetic): cpu's batch of 64 x 128 tokens, 5x cpu's 2,000 steps.
CPU_TRAIN_TOKENS = 2000 * 64 * 128  # 16,384,000
GPU_TOKENS_PER_STEP = 64 * 128  # 8,192
GPU_TRAIN_TOKENS = 5 * CPU_TRAIN_TOKENS  # 81,920,000: 10,000 steps

PRESETS = {
    "smoke": Preset("smoke", "CI: a tiny model on 300 documents; checks that every row runs end to end", {
        **_model(64, 2, 2, 256, 64, 1024, 1000, 24 * 1024, 64),
        "data.corpus.max_documents": 300, "data.max_heldout_blocks": 32, "optim.peak_lr": 2e-3,
        "finetune.epochs": 1.0, "finetune.max_train_examples": 256, "finetune.max_validation_examples": 256,
        "finetune.max_length": 64, "finetune.batch_size": 32, "finetune.peak_lr": 1e-3,
    }, eval_every=2, checkpoints=2),
    "small": Preset("small", "the earlier default: cpu's model at a quarter of its batch and 2M tokens; its absolute-position "
                    "rows stay bag-of-words models (docs/what-models-learn.md)", {
        # 1,000 steps of 16 x 128 tokens: many small steps get a small model past the unigram plateau
        **_model(128, 4, 4, 512, 128, 2048, 4096, 1000 * 2048, 128),
        "data.max_heldout_blocks": 256, "optim.peak_lr": 1e-3,
        # 8 fine-tuning epochs: at 3 the 5-way topic task was still on its steep part, so chance decided it
        # (one pretrained encoder, four fine-tuning seeds: 48.7-83.5 at 3 epochs, 63.3-79.8 at 5, 87.3-89.4 at 8)
        "finetune.epochs": 8.0, "finetune.max_train_examples": 3000, "finetune.max_validation_examples": 1000,
        "finetune.peak_lr": 5e-4,
        # the median of 3 fine-tuning runs per task: one encoder's topic runs scored 91.5, 89.4 and 68.7
        "finetune.seeds": 3,
        # 64 tokens keep 3 runs per task under 2x a one-run row: every BBC article fills 128 tokens, so a topic
        # epoch halves (217K -> 109K tokens; one encoder's run 192 -> 78 s) while the movie reviews (mean 37
        # tokens) barely change (112K -> 110K); that encoder's topic median went 89.4 -> 83.1 (runs 88.0, 83.1,
        # 72.9), its sentiment median 68.9 -> 69.0
        "finetune.max_length": 64,
    }),
    "cpu": Preset("cpu", "default: small's model with 64 sequences per step for 2,000 steps and a learned relative "
                  "position bias (a departure) on absolute-position rows, so that they learn word order (how long a "
                  "row takes on each kind of machine: README.md)", {
        # small's 4 x 128 model and corpus, with what the escape study (studies/plateau/) found gets an absolute-
        # position model off the bag-of-words plateau within a CPU budget: 64 sequences per step instead of 16
        # (alone, at 2,000 steps: most local head 2.0x, MLM 6.285) and a learned bias per head and relative
        # distance on the attention scores (a departure, named in every table; with it DOC-SENTENCES passes 3x
        # within 1.6M tokens and the count models' midpoint within 4.9M). Only where the table's base attention
        # is absolute: DeBERTa's table compares position schemes, and its RoBERTa-ReImp row stays absolute.
        **_model(128, 4, 4, 512, 128, 64 * 128, 4096, CPU_TRAIN_TOKENS, 128),
        "encoder.relative_bias": lambda config: config.encoder.attention == "absolute",
        "data.max_heldout_blocks": 256, "optim.peak_lr": 1e-3,
        # 16 fine-tuning epochs: at 8 the topic task was still climbing and its runs spread with the seed (one
        # DOC-SENTENCES encoder, 5 runs each, studies/finetune_spread/: topic SD 2.87 at 8 epochs, 1.23 at 16; sentiment
        # 0.51 and 0.63), for twice the fine-tuning steps (a row's two runs took 53-88 s at 8 epochs)
        "finetune.epochs": 16.0, "finetune.max_train_examples": 3000, "finetune.max_validation_examples": 1000,
        "finetune.peak_lr": 5e-4, "finetune.max_length": 64,
        # one fine-tuning run per task: the probes and minimal pairs, deterministic for a given encoder, carry the
        # verdicts at this preset; the median of 3 fine-tuning runs cost 14 of a small row's 17.5 minutes
        "finetune.seeds": 1,
    }),
    "gpu": Preset("gpu", "one GPU, no departures: cpu's model and batch without the relative bias, for 5x cpu's tokens "
                  "(10,000 steps), so that absolute-position rows learn word order on their own and ELECTRA's "
                  "discriminator reaches AUC 0.80; a table's rows x 3 seeds in about an hour on one H100 (docs/gpu.md)", {
        # cpu's 4 x 128 model, 64 x 128 tokens per step and vocabulary: the shape whose GPU step times and ELECTRA
        # AUC curve were measured (studies/plateau/runs/*-h200.jsonl). 5x cpu's tokens: ELECTRA-Small's AUC first
        # reached 0.80 at 60.7M tokens (3.7x) in the 5x run and ended at 0.792 in the 4x run. No relative bias:
        # 5x the steps of the runs that stayed bag-of-words without it is what is left to try without a departure.
        **_model(128, 4, 4, 512, 128, GPU_TOKENS_PER_STEP, 4096, GPU_TRAIN_TOKENS, 128),
        "encoder.relative_bias": False,
        "data.max_heldout_blocks": 256, "optim.peak_lr": 1e-3,
        # cpu's fine-tuning: 16 epochs, one run per task (the probes and minimal pairs carry the verdicts)
        "finetune.epochs": 16.0, "finetune.max_train_examples": 3000, "finetune.max_validation_examples": 1000,
        "finetune.peak_lr": 5e-4, "finetune.max_length": 64, "finetune.seeds": 1,
    }, eval_every=10, checkpoints=10),
    "medium": Preset("medium", "several seeds: 6 layers x 384, 20M tokens; hours on a CPU, minutes per row on a GPU", {
        **_model(384, 6, 6, 1536, 128, 16384, 16384, 20_000_000, 128),
        "data.max_heldout_blocks": 1024, "optim.peak_lr": 6e-4,
        "finetune.epochs": 3.0, "finetune.max_length": 128, "finetune.peak_lr": 1e-4, "finetune.seeds": 3,
    }, eval_every=10, checkpoints=10),
    "base": Preset("base", "paper sizes: 12 x 768, sequence 512, 50K BPE, batch 256 x 512 (GPUs)", {
        **_model(768, 12, 12, 3072, 512, 256 * 512, 50265, 256 * 512 * 100_000, 512),
        "data.max_heldout_blocks": None, "optim.peak_lr": 1e-4, "optim.warmup_fraction": 0.01,
        "finetune.epochs": 3.0, "finetune.max_length": 256, "finetune.peak_lr": 2e-5,
        "finetune.seeds": 5,  # RoBERTa: the median of five fine-tuning runs
    }, eval_every=20, checkpoints=50),
}


DEFAULT_PRESET = "cpu"  # what `make ablation-*` and `python -m experiments` run without PRESET= / --preset


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    return PRESETS[name]


def configure(base: RunConfig, preset: Preset, row_changes: dict, overrides: dict | None = None) -> RunConfig:
    """The row's config at this preset: base, then the preset's scale, then the user's overrides (--set,
    --corpus, --tasks), then the row's diff (which may scale what the overrides set)."""
    return apply_changes(apply_changes(apply_changes(base, preset.changes), overrides or {}), row_changes)
