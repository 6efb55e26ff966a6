"""`make bench`: speed and memory, always as ratios against a baseline measured in the same run.

1. Preprocessing the offline corpus: cold (from nothing) and warm (cache), with peak memory; the corpus
   repeated 10x, to show memory stays bounded as the corpus grows.
2. Building and masking one batch vs one training step of a small model, in the precision a training run
   on this machine uses (`experiments.running.hardware.default_precision`).
3. Training steps of our encoders vs HuggingFace transformers at the same configuration and on the same
   batches, interleaved round by round, each model and precision in its own process (see `Worker`):
   MLM vs BertForMaskedLM, DeBERTa vs DebertaV2ForMaskedLM, RTD vs ELECTRA built from ElectraForMaskedLM +
   ElectraForPreTraining with shared embeddings; each in fp32, and in bf16 where the CPU has bf16.
   Tokens/s, model FLOPs per token, achieved FLOP/s and peak memory of each.
4. The default preset's own shape (the one `make ablation-*` trains when no PRESET is given), ours vs HF's
   MLM in the precision a training run uses: tokens/s, the ratio and what one row's pretraining costs.

bf16 rows run only where the runner would train in bf16 (`default_precision()`): on a CPU without bf16
instructions torch falls back to a reference GEMM that takes minutes per step, so those rows are skipped
with one line saying why. `--precision fp32` skips them anywhere (say a CPU lacks bf16, or emulate one
with ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS, which that test does not see).

`--device cuda` times parts 3 and 4 on the GPU (bf16 rows where it supports bf16, as a training run
there uses; peak memory is the GPU allocator's peak). `--preset` then picks a GPU-sized shape for part 4.

Writes results/bench.json. `--quick` runs fewer steps (for a fast look; the figures are noisier).
`--baseline DIR` times another checkout's models (say the commit before a change) in the same rounds as
ours and HF's, so a change's effect is a ratio measured side by side in one run.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from studies.bench import preprocessing, workers  # the child processes' entry points
from studies.bench.machine import (DEVICE_VARIABLE, ISA_CAPS, PRECISIONS, THREADS_VARIABLE, bench_device, bf16_rows,
                                   machine, synchronize, use_all_cores)
from studies.bench.models import KINDS, Contender, HFElectra, contenders, random_batch, to_device
from studies.bench.parts import bench_batch_building, bench_default_preset, default_preset, preset_shape
from studies.bench.preprocessing import bench_preprocessing, peak_rss_mb, preprocess
from studies.bench.shapes import MODULE, ROOT, SMALL, Shape, bench_module
from studies.bench.workers import WORKER_REPLY, Worker, measure, peak_memory_mb

# The modules, by concern: shapes (what the contenders train on), machine (device, threads, bf16, what the
# figures were measured on), models (ours and HF's contenders), workers (timing and memory, one process per
# model), preprocessing (part 1), parts (parts 2 and 4); this file runs them and prints the report.
__all__ = ["DEVICE_VARIABLE", "ISA_CAPS", "KINDS", "MODULE", "PRECISIONS", "ROOT", "SMALL", "THREADS_VARIABLE",
           "WORKER_REPLY", "Contender", "HFElectra", "Shape", "Worker", "bench_batch_building", "bench_default_preset",
           "bench_device", "bench_module", "bench_preprocessing", "bf16_rows", "contenders", "default_preset",
           "machine", "main", "measure", "peak_memory_mb", "peak_rss_mb", "preprocess", "preset_shape",
           "random_batch", "synchronize", "to_device", "use_all_cores"]


def _print_rows(kind: str, rows: list[dict]) -> None:
    for row in rows:
        if "skipped" in row:
            continue
        print(f"{kind:8} {row['model']:32} {row['precision']:5} {row['tokens_per_s']:>8,} tokens/s  "
              f"{row['achieved_gflops']:>6} GFLOP/s  peak {row.get('peak_rss_mb', row.get('peak_gpu_mb', '-')):>5} MB"
              + (f"  speedup x{row['speedup_vs_hf']}" if "speedup_vs_hf" in row else "")
              + (f" (x{row['speedup_vs_baseline']} the baseline's)" if "speedup_vs_baseline" in row else "")
              + (f"  pretraining {row['pretraining_minutes']} min" if "pretraining_minutes" in row else ""))


def _add_peak_memory(kind: str, rows: list[dict], shape: Shape) -> None:
    for row in rows:
        if "skipped" in row or row["model"].startswith("baseline"):  # a baseline's memory is its checkout's
            continue
        which = 0 if row["model"].startswith("ours") else 1
        key = "peak_gpu_mb" if bench_device().type == "cuda" else "peak_rss_mb"
        row[key] = round(peak_memory_mb(kind, which, row["precision"] == "bf16", shape))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps, no 10x corpus")
    parser.add_argument("--only", default="preprocess,batch,mlm,deberta,rtd,default",
                        help="comma-separated parts (default: all of them)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 rows where a training run here uses bf16 (experiments.running.hardware.default_precision); "
                             "fp32: this CPU has no bf16 (skip them); bf16: run them anyway")
    parser.add_argument("--preset", default=None, help="whose shape the 'default' part times (default: the default preset)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of every timed process (default: all cores, up to 16)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of this suite (e.g. `git worktree add /tmp/before HEAD~1`): its training "
                             "steps are timed in the same rounds as ours and HF's, for a change's before and after")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the training-step comparisons (parts 3 and 4) run")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "bench.json")
    parser.add_argument("--preprocess-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preprocess_child:
        return preprocessing._preprocess_child(args.preprocess_child[0], int(args.preprocess_child[1]))
    if args.worker:
        kind, which, bf16, steps, shape = args.worker
        return workers._worker(kind, int(which), bool(int(bf16)), int(steps), Shape(**json.loads(shape)))
    if args.memory_child:
        kind, which, bf16, shape = args.memory_child
        return workers._memory_child(kind, int(which), bool(int(bf16)), Shape(**json.loads(shape)))
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        os.environ[THREADS_VARIABLE] = str(args.threads)  # inherited by the workers and probes
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False)")
    os.environ[DEVICE_VARIABLE] = args.device  # inherited by the workers and probes
    if args.baseline is not None and bench_module(args.baseline) is None:
        parser.error(f"--baseline {args.baseline}: not a checkout of this suite (no studies/bench or "
                     "experiments/bench.py there)")
    use_all_cores()
    parts = args.only.split(",")
    unknown = set(parts) - {"preprocess", "batch", *KINDS}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))} (valid: preprocess, batch, {', '.join(KINDS)})")
    steps, rounds = (3, 2) if args.quick else (5, 4)
    report = {"machine": machine()}
    caps = report["machine"].get("emulated_isa_caps")
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs, torch {torch.__version__} "
          f"({report['machine']['torch_cpu_capability']} kernels)"
          + (f"; instruction sets capped by {', '.join(f'{k}={v}' for k, v in caps.items())}: the figures are of "
             "an emulated CPU, not a real one" if caps else "")
          + (f"; timing on {report['machine']['gpu']}" if "gpu" in report["machine"] else ""))
    runs_bf16, reason = bf16_rows(args.precision)
    report["machine"]["bf16_rows"] = reason
    print(reason + ("; the caps do not change that test (it reads the CPU): --precision fp32 emulates a CPU without bf16"
                    if caps and runs_bf16 else ""))
    if "preprocess" in parts:
        report["preprocessing"] = bench_preprocessing(include_10x=not args.quick)
        print("preprocessing:", json.dumps(report["preprocessing"]))
    if "batch" in parts:
        report["batch_vs_step"] = bench_batch_building(steps=10 if args.quick else 30, bf16=runs_bf16)
        print("batch vs step:", json.dumps(report["batch_vs_step"]))
    for kind, precisions in (("mlm", [False, True]), ("deberta", [False, True]), ("rtd", [False, True])):
        if kind not in parts:
            continue
        rows = measure(kind, precisions, steps, rounds, bf16=(runs_bf16, reason), baseline=args.baseline)
        _add_peak_memory(kind, rows, SMALL)
        _print_rows(kind, rows)
        report[kind] = rows
    if "default" in parts:
        name = args.preset or default_preset()
        result = bench_default_preset(name, runs_bf16, steps, rounds)
        shape = Shape(**result["shape"])
        _add_peak_memory("default", result["rows"], shape)
        warmup = (f" (its first {result['warmup_block_epochs']} pass(es) in {result['warmup_block_size']}-token blocks "
                  "priced at the full length)") if "warmup_block_size" in result else ""
        print(f"preset {name} ({'default' if args.preset is None else 'asked for'}): {shape.describe()}; "
              f"a row pretrains on {result['train_tokens']:,} tokens{warmup}")
        _print_rows("default", result["rows"])
        report["default_preset"] = result
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
