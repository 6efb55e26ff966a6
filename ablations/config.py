"""The encoder's one config: every architecture knob of BERT/RoBERTa, ELECTRA-Small and DeBERTa.

Defaults follow the papers; anything that departs from a paper is a named field, off by default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from datamodules.errors import require

ATTENTIONS = ("absolute", "disentangled")
P2C_INDEX = ("paper", "code")


@dataclass(frozen=True)
class EncoderConfig:
    """A Transformer encoder; `attention` picks BERT/RoBERTa (absolute) or DeBERTa (disentangled)."""

    vocab_size: int = 8192  # set from the trained tokenizer
    hidden_size: int = 256  # width of every layer (768 at base)
    num_layers: int = 4  # Transformer blocks (12 at base)
    num_heads: int = 4  # attention heads; hidden_size must divide evenly
    ffn_size: int = 1024  # feed-forward inner size, 4x hidden as in BERT
    embedding_size: int | None = None  # ELECTRA: embeddings of another size, projected to hidden; None = hidden
    max_positions: int = 512  # longest sequence the position table (absolute or EMD) accepts
    type_vocab_size: int = 2  # segment embeddings for A/B inputs (BERT); 0 = none (RoBERTa/DeBERTa-v3 style)
    dropout: float = 0.1  # hidden dropout, as in all four papers
    attention_dropout: float = 0.1  # dropout on attention probabilities
    layer_norm_eps: float = 1e-5  # RoBERTa's value (BERT 1e-12, DeBERTa 1e-7; parity tests set them)
    pre_layer_norm: bool = False  # departure: the papers use post-LN; pre-LN trains more stably when small
    attention: str = "absolute"  # absolute (BERT/RoBERTa) | disentangled (DeBERTa)
    # departure (docs/what-models-learn.md): a learned bias per head and relative distance (clipped to
    # relative_span, as in Shaw et al. 2018 and T5), added to absolute attention's scores, starting at zero.
    # At a CPU budget absolute positions alone do not get a small model to word order; never set it on a row
    # whose claim is about position encoding (DeBERTa's table keeps RoBERTa-ReImp absolute)
    relative_bias: bool = False
    # the bias is stored divided by this gain: Adam moves a parameter by about the learning rate per step, so at
    # lr 1e-3 a plain scalar could move about one logit in a 2,000-step run (T5 trains its bias at lr 1e-2)
    relative_bias_gain: float = 10.0
    # DeBERTa's disentangled attention (He et al. 2021, §3.1) -----------------------------------------
    c2p: bool = True  # content-to-position term (off for the -C2P ablation)
    p2c: bool = True  # position-to-content term (off for the -P2C ablation)
    relative_span: int = 128  # k: relative distances are clipped to [-k, k) (512 in the paper)
    position_buckets: int = 0  # DeBERTa v2 log buckets (e.g. 256); 0 = exact distances up to k
    share_position_projections: bool = False  # DeBERTa v2: position keys/queries use the content projections
    p2c_index: str = "paper"  # paper: K_c[j].Q_r[delta(j,i)]; code: delta(i,j) as the reference code and HF do
    normalize_relative_embeddings: bool = True  # DeBERTa v2 applies LayerNorm to the relative embeddings
    emd: bool = True  # Enhanced Mask Decoder before the MLM softmax (off for the -EMD ablation)
    emd_layers: int = 2  # EMD steps; they share one layer's weights
    initializer_range: float = 0.02

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def relative_table_size(self) -> int:
        """Rows of the relative embedding table: 2 * (buckets or k)."""
        return 2 * (self.position_buckets or self.relative_span)

    @property
    def uses_emd(self) -> bool:
        return self.attention == "disentangled" and self.emd

    def replace(self, **changes) -> "EncoderConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        problems = []
        if self.attention not in ATTENTIONS:
            problems.append(f"unknown attention {self.attention!r} (valid: {', '.join(ATTENTIONS)})")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.p2c_index not in P2C_INDEX:
            problems.append(f"p2c_index must be one of {', '.join(P2C_INDEX)}")
        if self.relative_bias and self.attention != "absolute":
            problems.append(f"relative_bias adds relative positions to absolute attention; {self.attention} attention "
                            "has its own (set encoder.relative_bias=false)")
        if self.position_buckets and self.position_buckets > self.relative_span:
            problems.append("position_buckets must be <= relative_span")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_positions"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        require(problems, "encoder config")
