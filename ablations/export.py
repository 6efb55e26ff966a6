"""Export an encoder of the suite to HuggingFace transformers, so it can be fine-tuned with familiar tools.

Absolute attention exports as BERT (`BertModel`, keeps segment embeddings) or RoBERTa (`RobertaModel`,
whose positions start at pad_id + 1); disentangled attention as DeBERTa-v2 (`DebertaV2Model`). The
exported model gives the same hidden states as ours (tests/test_encoder_parity.py). What HF cannot
represent is refused with a clear message: pre-LN, an embedding projection for BERT/RoBERTa, and the
paper's p2c index, and an embedding projection. The EMD belongs to the MLM head and is not part of the exported encoder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ablations.config import EncoderConfig
from ablations.encoder import Encoder
from datamodules.errors import UsageError
from datamodules.tokenization import PAD_ID

FORMATS = ("bert", "roberta", "deberta-v2")


def default_format(config: EncoderConfig) -> str:
    return "deberta-v2" if config.attention == "disentangled" else "bert"


def _hf_config(config: EncoderConfig, fmt: str):
    import transformers

    common = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.ffn_size, hidden_act="gelu",
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=PAD_ID, initializer_range=config.initializer_range,
        type_vocab_size=max(config.type_vocab_size, 1),
    )
    if fmt == "bert":
        return transformers.BertConfig(max_position_embeddings=config.max_positions, **common)
    if fmt == "roberta":
        return transformers.RobertaConfig(max_position_embeddings=config.max_positions + PAD_ID + 1, **common)
    terms = [name for name, on in (("c2p", config.c2p), ("p2c", config.p2c)) if on]
    common["type_vocab_size"] = config.type_vocab_size
    return transformers.DebertaV2Config(
        max_position_embeddings=config.max_positions, relative_attention=True,
        max_relative_positions=config.relative_span, position_buckets=config.position_buckets or -1,
        pos_att_type=terms, position_biased_input=False, share_att_key=config.share_position_projections,
        norm_rel_ebd="layer_norm" if config.normalize_relative_embeddings else "none",
        **common,
    )


def _check_exportable(config: EncoderConfig, fmt: str) -> None:
    problems = []
    if fmt not in FORMATS:
        problems.append(f"unknown export format {fmt!r} (valid: {', '.join(FORMATS)})")
    if config.pre_layer_norm:
        problems.append("pre-LN encoders have no HF equivalent (train with --set encoder.pre_layer_norm=false)")
    if fmt in ("bert", "roberta") and config.attention != "absolute":
        problems.append(f"{fmt} needs absolute attention; use deberta-v2")
    if config.relative_bias:
        problems.append("the relative_bias departure has no HF BERT/RoBERTa equivalent (train the row with "
                        "--set encoder.relative_bias=false, or at a preset without it)")
    if config.embedding_dim != config.hidden_size:
        # ours normalises then projects (ELECTRA); HF DeBERTa projects then normalises, HF BERT has neither
        problems.append("an embedding projection (embedding_size < hidden_size) has no HF equivalent here")
    if fmt == "deberta-v2" and config.attention != "disentangled":
        problems.append("deberta-v2 needs disentangled attention")
    if fmt == "deberta-v2" and config.p2c and config.p2c_index != "code":
        problems.append("HF DeBERTa indexes p2c with delta(i,j), the paper with delta(j,i): train the row with "
                        "`--set encoder.p2c_index=code` (make ... SET='encoder.p2c_index=code') to export it")
    if problems:
        raise UsageError("cannot export: " + "; ".join(problems))


def _state_dict_for_hf(encoder: Encoder, fmt: str) -> dict[str, torch.Tensor]:
    config, ours = encoder.config, encoder
    e = ours.embeddings
    if fmt == "deberta-v2":
        names = {"q": "attention.self.query_proj", "k": "attention.self.key_proj", "v": "attention.self.value_proj"}
    else:
        names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value"}
    out = {"embeddings.word_embeddings.weight": e.word.weight.detach(),
           "embeddings.LayerNorm.weight": e.norm.weight, "embeddings.LayerNorm.bias": e.norm.bias}
    if e.token_type is not None:
        out["embeddings.token_type_embeddings.weight"] = e.token_type.weight
    elif fmt != "deberta-v2":
        out["embeddings.token_type_embeddings.weight"] = torch.zeros(1, config.hidden_size)
    if fmt == "bert":
        out["embeddings.position_embeddings.weight"] = e.position.weight
    if fmt == "roberta":  # HF RoBERTa numbers positions from pad_id + 1
        table = torch.zeros(config.max_positions + PAD_ID + 1, config.hidden_size)
        table[PAD_ID + 1:] = e.position.weight.detach()
        out["embeddings.position_embeddings.weight"] = table
    for i, block in enumerate(ours.blocks):
        p = f"encoder.layer.{i}."
        a = block.attention
        for short, linear in (("q", a.query), ("k", a.key), ("v", a.value)):
            out[p + names[short] + ".weight"], out[p + names[short] + ".bias"] = linear.weight, linear.bias
        if fmt == "deberta-v2" and not config.share_position_projections:
            for hf_name, linear in (("pos_key_proj", getattr(a, "position_key", None)),
                                    ("pos_query_proj", getattr(a, "position_query", None))):
                if linear is not None:
                    out[p + f"attention.self.{hf_name}.weight"], out[p + f"attention.self.{hf_name}.bias"] = \
                        linear.weight, linear.bias
        pairs = (("attention.output.dense", a.output), ("attention.output.LayerNorm", block.attention_norm),
                 ("intermediate.dense", block.ffn_in), ("output.dense", block.ffn_out),
                 ("output.LayerNorm", block.ffn_norm))
        for hf_name, module in pairs:
            out[p + hf_name + ".weight"], out[p + hf_name + ".bias"] = module.weight, module.bias
    if fmt == "deberta-v2":
        out["encoder.rel_embeddings.weight"] = ours.relative_table.weight
        if ours.relative_norm is not None:
            out["encoder.LayerNorm.weight"], out["encoder.LayerNorm.bias"] = ours.relative_norm.weight, ours.relative_norm.bias
    return {name: tensor.detach().clone().float() for name, tensor in out.items()}


def to_hf(encoder: Encoder, fmt: str | None = None):
    """A transformers model with our weights; its last_hidden_state equals our encoder's output."""
    import transformers

    fmt = fmt or default_format(encoder.config)
    _check_exportable(encoder.config, fmt)
    model_class = {"bert": transformers.BertModel, "roberta": transformers.RobertaModel,
                   "deberta-v2": transformers.DebertaV2Model}[fmt]
    kwargs = {} if fmt == "deberta-v2" else {"add_pooling_layer": False}
    model = model_class(_hf_config(encoder.config, fmt), **kwargs)
    state = _state_dict_for_hf(encoder, fmt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "position_ids" not in m and "token_type_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"export mapping is incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()


def export_pretrained(encoder: Encoder, tokenizer, directory: Path, fmt: str | None = None) -> Path:
    """Write model and tokenizer so that `AutoModel.from_pretrained(directory)` loads them."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from datamodules.tokenization import SPECIAL_TOKENS

    model = to_hf(encoder, fmt)
    directory = Path(directory)
    model.save_pretrained(directory)
    kind = "bpe" if tokenizer.token_to_id("<s>") is not None else "wordpiece"
    cls, pad, sep, unk, mask = SPECIAL_TOKENS[kind]
    tokenizer.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, 0), (sep, 2)],
    )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, cls_token=cls, bos_token=cls, pad_token=pad, sep_token=sep,
                            eos_token=sep, unk_token=unk, mask_token=mask).save_pretrained(directory)
    return directory
