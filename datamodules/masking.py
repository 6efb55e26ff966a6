"""The one masking function every objective uses (BERT §3.1, RoBERTa §4.1, ELECTRA, DeBERTaV3).

`mask_tokens` selects round(p * n) of the n non-special tokens of a sequence uniformly at random and
replaces each selected token with the mask token, itself, or a random non-special token, by the mix
given in `MaskingConfig`. Labels are the original ids at selected positions and -100 elsewhere.

Reproducibility follows fairseq's MaskTokensDataset: the random state is a function of
(seed, epoch, example index) only. Dynamic masking (RoBERTa) passes the real epoch, so each epoch draws
a new mask; static masking (BERT) passes `epoch % num_static_masks`, so each sequence cycles through the
same 10 masks drawn once, exactly as BERT's preprocessing duplicated the data 10 times.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.errors import require
from datamodules.tokenization import MASK_ID, NUM_SPECIAL

IGNORE_INDEX = -100
# (mask token, keep, random token) shares of the selected positions.
REPLACEMENT_PRESETS = {
    "bert": (0.8, 0.1, 0.1),  # BERT / RoBERTa
    "electra": (0.85, 0.15, 0.0),  # ELECTRA's reference code
    "deberta-rtd": (1.0, 0.0, 0.0),  # DeBERTaV3's RTD generator input
}


@dataclass(frozen=True)
class MaskingConfig:
    """How tokens are selected and replaced for (generator) MLM."""

    probability: float = 0.15  # share of non-special tokens selected
    replacement: str = "bert"  # a key of REPLACEMENT_PRESETS
    dynamic: bool = True  # RoBERTa: new mask every epoch; False: BERT's static masks
    num_static_masks: int = 10  # static: masks drawn once per sequence and cycled (BERT's dupe factor)

    def validate(self) -> None:
        problems = []
        if not 0.0 < self.probability < 1.0:
            problems.append(f"masking probability must be in (0, 1), got {self.probability}")
        if self.replacement not in REPLACEMENT_PRESETS:
            problems.append(f"unknown replacement mix {self.replacement!r} (valid: {', '.join(REPLACEMENT_PRESETS)})")
        if self.num_static_masks < 1:
            problems.append("num_static_masks must be >= 1")
        require(problems, "masking config")

    @property
    def mix(self) -> tuple[float, float, float]:
        return REPLACEMENT_PRESETS[self.replacement]

    def mask_epoch(self, epoch: int) -> int:
        """The epoch whose mask is used: the real one (dynamic) or one of the fixed static masks."""
        return epoch if self.dynamic else epoch % self.num_static_masks


def example_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random state of one example: a pure function of (seed, epoch, example index, purpose)."""
    return np.random.default_rng([seed, epoch, index, stream])


def mask_tokens(
    ids: np.ndarray, config: MaskingConfig, vocab_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mask one sequence. Returns (input ids, labels); special tokens (ids < NUM_SPECIAL) are never
    selected and never drawn as random replacements."""
    ids = np.asarray(ids)
    candidates = np.flatnonzero(ids >= NUM_SPECIAL)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    inputs = ids.astype(np.int64, copy=True)
    if len(candidates) == 0:
        return inputs, labels
    # fairseq's rule: round with a random offset, so short sequences are masked at p on average.
    count = int(config.probability * len(candidates) + rng.random())
    count = min(max(count, 1), len(candidates))
    chosen = rng.choice(candidates, size=count, replace=False)
    labels[chosen] = ids[chosen]
    p_mask, p_keep, p_random = config.mix
    action = rng.choice(3, size=count, p=[p_mask, p_keep, p_random])
    inputs[chosen[action == 0]] = MASK_ID
    random_positions = chosen[action == 2]
    inputs[random_positions] = rng.integers(NUM_SPECIAL, vocab_size, size=len(random_positions))
    return inputs, labels
