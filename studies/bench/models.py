"""The contenders: our training modules and HuggingFace's models at the same shape, on the same batches,
each stepped as a training loop would (forward, backward, fused AdamW)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from studies.bench.machine import bench_device
from studies.bench.shapes import SMALL, Shape


def random_batch(generator: torch.Generator, shape: Shape) -> dict:
    """A batch like the collator's: 15% of positions masked, with their flat indices listed."""
    batch, length = shape.batch, shape.length
    ids = torch.randint(5, shape.vocab_size, (batch, length), generator=generator)
    chosen = torch.rand(batch, length, generator=generator) < 0.15
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = torch.where(chosen, torch.full_like(ids, 4), ids)
    positions = torch.nonzero(chosen.reshape(-1)).squeeze(1)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "token_type_ids": torch.zeros_like(ids), "labels": labels, "mlm_positions": positions,
            "mlm_labels": ids.reshape(-1)[positions], "nsp_labels": torch.zeros(batch, dtype=torch.long),
            "num_tokens": batch * length}


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


class Contender:
    """One model's training step: forward, backward, AdamW, as a training loop would run it."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn, flops_per_token: float):
        self.device = bench_device()
        self.name, self.model, self.loss_fn, self.flops_per_token = name, model.to(self.device).train(), loss_fn, \
            flops_per_token
        # fused, as our training runs it (lightning_modules/base.py) and as HF's Trainer does by default
        # (`optim="adamw_torch_fused"`)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=self.device.type in ("cpu", "cuda"))

    def step(self, batch: dict, bf16: bool) -> None:
        context = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with context:
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


KINDS = ("mlm", "deberta", "rtd", "default")


def contenders(kind: str, shape: Shape = SMALL, only: int | None = None) -> tuple[Contender | None, Contender | None]:
    """(ours, HF's) for `kind` at `shape`; with `only`, build just that one (the memory probe measures one)."""
    factories = _factories(kind, shape)
    return tuple(factory() if only in (None, i) else None for i, factory in enumerate(factories))


def _factories(kind: str, shape: Shape):
    import transformers

    from ablations.flops import mlm_training_flops_per_token, rtd_training_flops_per_token
    from lightning_modules.base import OptimConfig
    from lightning_modules.mlm import MLMModule
    from lightning_modules.rtd import RTDConfig, RTDModule, generator_config

    if kind not in KINDS:
        raise ValueError(f"unknown comparison {kind!r} (valid: {', '.join(KINDS)})")
    torch.manual_seed(0)
    common = shape.hf()
    if kind in ("mlm", "default"):
        ours_config = shape.encoder()
        flops = mlm_training_flops_per_token(ours_config, shape.length)
        return (lambda: Contender("ours MLM", MLMModule(ours_config, OptimConfig()), _our_loss, flops),
                lambda: Contender("HF BertForMaskedLM", transformers.BertForMaskedLM(
                    transformers.BertConfig(**common, attn_implementation="sdpa")), _hf_mlm_loss, flops))
    if kind == "deberta":
        ours_config = shape.encoder(attention="disentangled", relative_span=128, emd=False, type_vocab_size=0,
                                    relative_bias=False)
        hf_config = transformers.DebertaV2Config(
            **common, relative_attention=True, max_relative_positions=128, position_buckets=-1,
            pos_att_type=["c2p", "p2c"], position_biased_input=False, type_vocab_size=0, norm_rel_ebd="layer_norm")
        flops = mlm_training_flops_per_token(ours_config, shape.length)
        return (lambda: Contender("ours DeBERTa MLM", MLMModule(ours_config, OptimConfig()), _our_loss, flops),
                lambda: Contender("HF DebertaV2ForMaskedLM", transformers.DebertaV2ForMaskedLM(hf_config),
                                  _hf_mlm_loss, flops))
    rtd = RTDConfig(sharing="es", generator_width=0.25)
    ours_config = shape.encoder()
    flops = rtd_training_flops_per_token(ours_config, generator_config(ours_config, rtd), shape.length)
    return (lambda: Contender("ours RTD (ELECTRA, ES)", RTDModule(ours_config, OptimConfig(), rtd), _our_loss, flops),
            lambda: Contender("HF ELECTRA (shared embeddings)", HFElectra(common, 0.25), lambda m, b: m(b), flops))


def _our_loss(module, batch):
    return module.losses(batch)["loss"]


def _hf_mlm_loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


class HFElectra(torch.nn.Module):
    """ELECTRA from HF parts as its authors' recipe builds it: a 1/4-width generator and the discriminator
    sharing token and position embeddings, samples without gradient, loss = MLM + 50 * RTD."""

    def __init__(self, common: dict, width: float):
        super().__init__()
        import transformers

        generator_common = common | {"hidden_size": int(common["hidden_size"] * width),
                                     "num_attention_heads": max(1, int(common["num_attention_heads"] * width)),
                                     "intermediate_size": int(common["intermediate_size"] * width)}
        self.generator = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
            **generator_common, embedding_size=common["hidden_size"]))
        self.discriminator = transformers.ElectraForPreTraining(transformers.ElectraConfig(
            **common, embedding_size=common["hidden_size"]))
        self.generator.electra.embeddings = self.discriminator.electra.embeddings  # ELECTRA's tied embeddings

    def forward(self, batch):
        out = self.generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        positions = batch["mlm_positions"]
        with torch.no_grad():  # Gumbel-max at the masked positions only, as ELECTRA's code samples
            logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, positions).float()
            noise = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-9, 1 - 1e-9)))
            sampled = (logits + noise).argmax(-1)
        masked = batch["labels"] != -100
        original = torch.where(masked, batch["labels"], batch["input_ids"])
        corrupted = batch["input_ids"].reshape(-1).index_copy(0, positions, sampled).view_as(batch["input_ids"])
        replaced = (corrupted != original).float()
        disc = self.discriminator(input_ids=corrupted, attention_mask=batch["attention_mask"], labels=replaced)
        return out.loss + 50.0 * disc.loss
