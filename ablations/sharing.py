"""Sharing embeddings between an ELECTRA-style generator and discriminator (ELECTRA §3.2, DeBERTaV3 §3).

- `es`   (ELECTRA's choice): one table; the MLM and the RTD gradients both update it (the "tug-of-war").
- `nes`  no sharing: two tables; MLM updates the generator's, RTD the discriminator's.
- `gdes` gradient-disentangled: E_D = sg(E_G) + E_Delta with E_Delta zero-initialised; MLM updates E_G,
         RTD only E_Delta. E_D = E_G + E_Delta is what gets saved for fine-tuning.
- `all`  ELECTRA's "tie all weights": generator and discriminator are one encoder (same size).

Word and absolute-position embeddings are shared the same way, as in both reference implementations.
This is done by composing modules (the discriminator holds the generator's table, or a GDES table that
reads it), never by deleting parameters or forward hooks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ablations.encoder import Encoder

SHARING = ("es", "nes", "gdes", "all")


class GradientDisentangledEmbedding(nn.Module):
    """E_D = stop_gradient(E_G) + E_Delta. Behaves like nn.Embedding (`weight`, `forward`)."""

    def __init__(self, source: nn.Embedding):
        super().__init__()
        self.source = source  # the generator's table: registered here too, but one Parameter in the optimizer
        self.delta = nn.Parameter(torch.zeros_like(source.weight))

    @property
    def weight(self) -> torch.Tensor:
        return self.source.weight.detach() + self.delta

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def share_embeddings(generator: Encoder, discriminator: Encoder, mode: str) -> None:
    """Make the discriminator's word (and absolute position) embeddings follow `mode`."""
    if mode not in SHARING:
        raise ValueError(f"unknown sharing mode {mode!r} (valid: {', '.join(SHARING)})")
    for name in ("word", "position"):
        source = getattr(generator.embeddings, name)
        if source is None or mode in ("nes", "all"):
            continue
        shared = source if mode == "es" else GradientDisentangledEmbedding(source)
        setattr(discriminator.embeddings, name, shared)


def materialized_discriminator(discriminator: Encoder) -> dict[str, torch.Tensor]:
    """The discriminator's state dict as a plain encoder: GDES tables become E_G + E_Delta."""
    state = {}
    for key, value in discriminator.state_dict().items():
        if key.endswith(".source.weight"):
            continue
        if key.endswith(".delta"):
            table = discriminator.get_submodule(key[: -len(".delta")])
            state[key[: -len(".delta")] + ".weight"] = table.weight.detach().clone()
            continue
        state[key] = value.detach().clone()
    return state


def average_cosine_similarity(table: torch.Tensor, first_token: int) -> float:
    """Mean cosine similarity over all distinct pairs (i != j) of rows `first_token:` of `table`.

    Exact in O(n d): with unit rows u_i and s = sum_i u_i,  sum_{i != j} u_i . u_j = |s|^2 - n,
    so the mean over the n (n - 1) ordered pairs is (|s|^2 - n) / (n (n - 1)). Special tokens
    (rows before `first_token`) are left out. Computed in float64 to keep |s|^2 - n accurate.
    """
    rows = F.normalize(table[first_token:].detach().double(), dim=-1)
    n = rows.shape[0]
    total = rows.sum(0)
    return float((total @ total - n) / (n * (n - 1)))
