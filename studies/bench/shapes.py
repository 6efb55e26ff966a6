"""The bench's shapes: what every contender trains on, and where this checkout's bench lives."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = "studies.bench"  # what `python -m` runs in this checkout's children


def bench_module(root: Path) -> str | None:
    """The bench's module in the checkout at `root`: `studies.bench` (a package, or one file in older checkouts),
    or `experiments.bench` in a checkout from before the studies left `experiments/` (so that an older commit
    can still be a baseline); None if neither."""
    for module in (MODULE, "experiments.bench"):
        path = root / Path(*module.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return module
    return None


@dataclass(frozen=True)
class Shape:
    """The encoder and the batches both contenders train on."""

    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_size: int
    vocab_size: int
    max_positions: int
    batch: int
    length: int
    dropout: float = 0.1
    attention_dropout: float = 0.1
    relative_bias: bool = False  # ours only (the cpu preset's departure; HF's BERT has none): priced, not compared

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.length

    def encoder(self, **changes):
        from ablations.config import EncoderConfig

        return EncoderConfig(num_layers=self.num_layers, hidden_size=self.hidden_size, num_heads=self.num_heads,
                             ffn_size=self.ffn_size, vocab_size=self.vocab_size, max_positions=self.max_positions,
                             dropout=self.dropout, attention_dropout=self.attention_dropout,
                             relative_bias=self.relative_bias).replace(**changes)

    def hf(self) -> dict:
        """The same sizes as HuggingFace config arguments."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_heads, intermediate_size=self.ffn_size,
                    max_position_embeddings=self.max_positions, hidden_dropout_prob=self.dropout,
                    attention_probs_dropout_prob=self.attention_dropout)

    def to_json(self) -> str:
        """The shape for a worker's command line: the fields without a default, and the others only where they
        differ from it, so that a --baseline checkout from before a field existed still reads the shape."""
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        return json.dumps({name: value for name, value in asdict(self).items()
                           if name not in defaults or value != defaults[name]})

    def describe(self) -> str:
        return (f"{self.num_layers} x {self.hidden_size} ({self.num_heads} heads, FFN {self.ffn_size}), "
                f"sequence {self.length}, batch {self.batch}, vocabulary {self.vocab_size:,}"
                + (", ours with the relative position bias" if self.relative_bias else ""))


# The comparisons' shape (MLM, DeBERTa, RTD): fixed, so their figures stay comparable as the presets change.
SMALL = Shape(num_layers=4, hidden_size=256, num_heads=4, ffn_size=1024, vocab_size=8192, max_positions=512,
              batch=32, length=128)
