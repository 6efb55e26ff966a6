"""Timing in separate processes: each contender at each precision in its own worker, stepped round by round
(`measure`), and peak memory from a fresh process per model (`peak_memory_mb`)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from experiments.running import allocator
from studies.bench.machine import bf16_rows, synchronize, use_all_cores
from studies.bench.models import contenders, random_batch, to_device
from studies.bench.preprocessing import peak_rss_mb
from studies.bench.shapes import MODULE, ROOT, SMALL, Shape, bench_module


class Worker:
    """One contender at one precision in its own process, stepping on command, as a user's training run
    would be. In a shared process the models' allocations interact: the allocator state each model leaves
    moved the other's speed by 5-20% either way; switching precision within one process does the same.
    Every worker, ours, HF's and a baseline checkout's alike, starts with the malloc thresholds our training
    runs set (experiments.running.allocator): with glibc's defaults HF's step took 140-150k page faults and ran 15-20%
    slower, ours 5-11k and 3-5% slower, and HF's speed moved by up to 15% between runs."""

    def __init__(self, kind: str, which: int, bf16: bool, steps: int, shape: Shape = SMALL, root: Path = ROOT):
        """`root`: the checkout whose code the worker runs (`python -m` imports from its working directory
        first), this one unless a --baseline checkout is timed."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", bench_module(root), "--worker", kind, str(which), str(int(bf16)), str(steps),
             shape.to_json()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root,
            env=os.environ | allocator.environment())
        hello = self._reply()
        self.name, self.flops_per_token = hello["name"], hello["flops_per_token"]

    def seconds_per_step(self, steps: int) -> float:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return self._reply()["seconds_per_step"]

    def _reply(self) -> dict:
        for line in self.process.stdout:  # anything else a library prints is skipped
            if line.startswith(WORKER_REPLY):
                return json.loads(line[len(WORKER_REPLY):])
        raise RuntimeError(f"bench worker exited with code {self.process.wait()}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


WORKER_REPLY = "BENCH-WORKER "


def _worker(kind: str, which: int, bf16: bool, steps: int, shape: Shape) -> None:
    """The worker's side: build the model and the batches (seeded: both workers train on the same ones),
    then time `count` training steps per request."""
    use_all_cores()
    contender = contenders(kind, shape, only=which)[which]
    generator = torch.Generator().manual_seed(0)
    batches = [to_device(random_batch(generator, shape), contender.device) for _ in range(steps)]
    print(WORKER_REPLY + json.dumps({"name": contender.name, "flops_per_token": contender.flops_per_token}), flush=True)
    for request in sys.stdin:
        count = int(request)
        synchronize(contender.device)
        start = time.perf_counter()
        for batch in batches[:count]:
            contender.step(batch, bf16)
        synchronize(contender.device)
        print(WORKER_REPLY + json.dumps({"seconds_per_step": (time.perf_counter() - start) / count}), flush=True)


def measure(kind: str, precisions: list[bool], steps: int, rounds: int, shape: Shape = SMALL,
            bf16: tuple[bool, str] | None = None, baseline: Path | None = None) -> list[dict]:
    """Per precision, ours and HF's, each in its worker, interleaved round by round on the same batches;
    the median step time of each. `bf16` is `bf16_rows()`'s answer (asked here when not given): where it
    says no, a bf16 precision becomes one skipped row, with the reason, and no worker is started for it.
    `baseline`: another checkout of the suite whose model is timed in the same rounds, a third row, and
    ours gains `speedup_vs_baseline` (a change's before and after, side by side in one run)."""
    if bf16 is None:
        bf16 = bf16_rows() if True in precisions else (False, "")
    runs_bf16, reason = bf16
    rows = []
    for use_bf16 in precisions:
        if use_bf16 and not runs_bf16:
            rows.append({"kind": kind, "precision": "bf16", "skipped": reason})
            continue
        workers = [Worker(kind, 0, use_bf16, steps, shape), Worker(kind, 1, use_bf16, steps, shape)]
        if baseline is not None:
            workers.append(Worker(kind, 0, use_bf16, steps, shape, root=baseline))
            workers[-1].name = f"baseline {workers[-1].name} ({baseline})"
        try:
            for worker in workers:  # warm-up: first calls allocate and pick kernels
                worker.seconds_per_step(2)
            times = [[] for _ in workers]
            for _ in range(rounds):
                for worker, seconds in zip(workers, times):
                    seconds.append(worker.seconds_per_step(steps))
        finally:
            for worker in workers:
                worker.close()
        medians = [statistics.median(seconds) for seconds in times]
        first = len(rows)
        for worker, seconds in zip(workers, medians):
            tokens_per_s = shape.tokens_per_step / seconds
            rows.append({"model": worker.name, "precision": "bf16" if use_bf16 else "fp32",
                         "step_s": round(seconds, 4), "tokens_per_s": round(tokens_per_s),
                         "model_flops_per_token": f"{worker.flops_per_token:.3e}",
                         "achieved_gflops": round(worker.flops_per_token * tokens_per_s / 1e9, 1)})
        rows[first]["speedup_vs_hf"] = round(medians[1] / medians[0], 2)
        if baseline is not None:
            rows[first]["speedup_vs_baseline"] = round(medians[2] / medians[0], 3)
            rows[first + 2]["speedup_vs_hf"] = round(medians[1] / medians[2], 2)
    return rows


def peak_memory_mb(kind: str, which: int, bf16: bool, shape: Shape = SMALL) -> float:
    """Peak RSS of a fresh process running 3 steps of one model (CPU has no allocator counter); on a GPU,
    the allocator's peak."""
    done = subprocess.run([sys.executable, "-m", MODULE, "--memory-child", kind, str(which), str(int(bf16)),
                           shape.to_json()], capture_output=True, text=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else float("nan")


def _memory_child(kind: str, which: int, bf16: bool, shape: Shape) -> None:
    use_all_cores()
    contender = contenders(kind, shape, only=which)[which]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        contender.step(to_device(random_batch(generator, shape), contender.device), bf16)
    print(torch.cuda.max_memory_allocated() / 2**20 if contender.device.type == "cuda" else peak_rss_mb())
