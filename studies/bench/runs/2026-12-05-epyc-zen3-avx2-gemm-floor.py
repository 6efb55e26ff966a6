"""How far can our step get ahead of HuggingFace's on this CPU? The bench's comparisons (MLM, DeBERTa, RTD; fp32,
the bench's shape) in one process: both models step on the same batches in alternating rounds, both with the
malloc thresholds of our runs (as the bench's workers have); then our step runs under the profiler, and its time
splits into the matrix products (mm, addmm, bmm, baddbmm, oneDNN linear) and everything else.

The floor is our step with every other op free: only its matrix products at the rate they ran at in the step.
HF's step over that floor bounds the ratio any rewrite of our non-GEMM work could give without computing fewer
FLOPs. Run: .venv/bin/python studies/bench/runs/2026-12-05-epyc-zen3-avx2-gemm-floor.py [rounds]"""
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from experiments import allocator
from studies.bench import SMALL, contenders, random_batch, use_all_cores

GEMMS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "mkldnn::_linear_pointwise"}
allocator.keep_freed_memory()
use_all_cores()
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
      f"{torch.backends.cpu.get_cpu_capability()}, shape: {SMALL.describe()}, fp32, {rounds} rounds of 3 steps each")
for kind in ("mlm", "deberta", "rtd"):
    ours, hf = contenders(kind, SMALL)
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(generator, SMALL) for _ in range(3)]
    times = {ours.name: [], hf.name: []}
    for contender in (ours, hf):
        contender.step(batches[0], False)  # warm-up
    for r in range(rounds):
        for contender in ((ours, hf) if r % 2 == 0 else (hf, ours)):
            start = time.perf_counter()
            for batch in batches:
                contender.step(batch, False)
            times[contender.name].append((time.perf_counter() - start) / len(batches))
    ours_s, hf_s = statistics.median(times[ours.name]), statistics.median(times[hf.name])
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for batch in batches:
            ours.step(batch, False)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events) / len(batches)
    gemm = [e for e in events if e.key in GEMMS]
    gemm_us = sum(e.self_cpu_time_total for e in gemm) / len(batches)
    gemm_flops = sum(e.flops for e in gemm) / len(batches)
    others = sorted((e for e in events if e.key not in GEMMS), key=lambda e: -e.self_cpu_time_total)[:6]
    floor_s = ours_s * gemm_us / total_us  # the profiled share of GEMMs applied to the unprofiled step time
    print(f"\n{kind}: ours {1000 * ours_s:.0f} ms/step, HF {1000 * hf_s:.0f} ms/step, ours/HF {hf_s / ours_s:.2f}x "
          f"(medians; rounds ours {[round(1000 * t) for t in times[ours.name]]}, HF {[round(1000 * t) for t in times[hf.name]]})")
    print(f"  ours under the profiler: {total_us / 1000:.0f} ms/step, of it GEMMs {gemm_us / 1000:.0f} ms "
          f"({100 * gemm_us / total_us:.0f}%), {gemm_flops / 1e9:.1f} GFLOP at {gemm_flops / gemm_us / 1e3:.0f} GFLOP/s")
    print(f"  the floor (GEMMs only): {1000 * floor_s:.0f} ms/step; HF over it: {hf_s / floor_s:.2f}x "
          f"(the ratio if everything but the GEMMs cost nothing)")
    print("  the largest other ops, ms/step: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1000 / len(batches):.1f}" for e in others))
