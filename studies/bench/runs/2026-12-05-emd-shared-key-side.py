"""In-process A/B: a DeBERTa MLM training step at cpu's shape (4 x 128, batch 64 x 128, vocabulary 4,096, fp32),
the EMD's steps sharing keys, values and p2c (this commit) against each step computing its own (before),
alternating which goes first in each round. Run: .venv/bin/python studies/bench/runs/<this file> [rounds]"""
import statistics, sys, time

import torch

from ablations.config import EncoderConfig
from ablations.encoder import EnhancedMaskDecoder, query_slots
from experiments import allocator
from lightning_modules.base import OptimConfig
from lightning_modules.mlm import MLMModule

allocator.keep_freed_memory()
B, L, V = 64, 128, 4096
shared_forward = EnhancedMaskDecoder.forward


def per_step_forward(self, hidden, key_padding_bias, relative, rows=None):
    """The EMD before: every step computes its own keys, values and p2c."""
    batch, length, hidden_size = hidden.shape
    positions = self.positions.weight[:length]
    grid, slots = query_slots(rows, batch, length)
    query = hidden[torch.arange(batch)[:, None], grid] + positions[grid]
    for _ in range(self.steps):
        query = self.layer(hidden, key_padding_bias, (*relative, grid), query_input=query)
    return query.reshape(-1, hidden_size).index_select(0, slots)


def make_batch(generator):
    ids = torch.randint(5, V, (B, L), generator=generator)
    positions = (torch.rand(B, L, generator=generator) < 0.15).flatten().nonzero().squeeze(1)
    return dict(input_ids=ids, attention_mask=torch.ones(B, L, dtype=torch.long), token_type_ids=torch.zeros_like(ids),
                mlm_positions=positions, mlm_labels=ids.flatten()[positions])


torch.manual_seed(0)
config = EncoderConfig(hidden_size=128, num_layers=4, num_heads=4, ffn_size=512, vocab_size=V, max_positions=128,
                       relative_span=128, attention="disentangled", type_vocab_size=0)
module = MLMModule(config, OptimConfig()).train()
optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
generator = torch.Generator().manual_seed(0)
batches = [make_batch(generator) for _ in range(4)]
variants = {"shared (after)": shared_forward, "per step (before)": per_step_forward}


def seconds_per_step(forward):
    EnhancedMaskDecoder.forward = forward
    start = time.perf_counter()
    for batch in batches:
        module.losses(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(batches)


for forward in variants.values():
    seconds_per_step(forward)  # warm-up
times = {name: [] for name in variants}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
for r in range(rounds):
    names = list(variants) if r % 2 == 0 else list(variants)[::-1]
    for name in names:
        times[name].append(seconds_per_step(variants[name]))
for name, values in times.items():
    print(f"{name}: median {1000 * statistics.median(values):.1f} ms/step, "
          f"{B * L / statistics.median(values):,.0f} tokens/s; rounds {[round(1000 * v) for v in values]}")
before, after = (statistics.median(times[n]) for n in ("per step (before)", "shared (after)"))
print(f"speed-up of the whole step: {before / after:.3f}x ({1000 * (before - after):.1f} ms/step)")
