"""Where and how the bench's processes run: the device, the threads, whether bf16 rows run, and what the
figures were measured on (results/bench.json's `machine`)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

THREADS_VARIABLE = "BENCH_THREADS"  # set by --threads, read by every process the bench starts
DEVICE_VARIABLE = "BENCH_DEVICE"  # set by --device, read by every process the bench starts


def bench_device() -> torch.device:
    """Where the timed models train: the CPU unless --device says otherwise."""
    return torch.device(os.environ.get(DEVICE_VARIABLE, "cpu"))


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer reads finished steps (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_all_cores() -> None:
    """Every process of the bench (coordinator, timing workers, memory probes) runs on the same threads:
    all cores (up to 16), or --threads N (on a machine others share, 1 thread keeps ratios steadier)."""
    asked = int(os.environ.get(THREADS_VARIABLE, "0") or 0)
    torch.set_num_threads(asked if asked > 0 else max(1, min(os.cpu_count() or 1, 16)))


def bf16_rows(choice: str = "auto") -> tuple[bool, str]:
    """Whether the bf16 rows run, and the line to print about it. `auto` asks the runner's own test
    (`experiments.running.hardware.default_precision`, which picks the precision of every training run): bf16 rows
    run where a training run would use bf16. `fp32` says this CPU has no bf16 (or emulates one that has
    none); `bf16` runs them even where the runner's test says the CPU lacks bf16 (slow: a reference GEMM)."""
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r} (valid: {', '.join(PRECISIONS)})")
    if choice == "fp32":
        return False, "bf16 rows skipped: --precision fp32 says this CPU has no bf16"
    from experiments.running.hardware import default_precision

    if bench_device().type == "cuda" and not torch.cuda.is_bf16_supported():
        return False, "bf16 rows skipped: this GPU has no bf16"
    training = "bf16-mixed" if bench_device().type == "cuda" else default_precision()
    if training.startswith("bf16"):
        return True, f"bf16 rows run: a training run here uses {training} (experiments.running.hardware.default_precision)"
    if choice == "bf16":
        return True, (f"bf16 rows run because --precision bf16 asks, although a training run here uses {training}: "
                      "without bf16 instructions torch's fallback GEMM makes them very slow")
    return False, (f"bf16 rows skipped: this CPU has no bf16 instructions, so a training run here uses {training} "
                   "(experiments.running.hardware.default_precision) and a bf16 step would take minutes")


PRECISIONS = ("auto", "fp32", "bf16")
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine() -> dict:
    """What the figures were measured on, including any instruction-set cap in the environment (then the
    figures are of an emulated CPU: this one with its newer instructions switched off, not a real older one)."""
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    caps = {variable: os.environ[variable] for variable in ISA_CAPS if variable in os.environ}
    return {"cpu": name, "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "date": time.strftime("%Y-%m-%d"), **({"emulated_isa_caps": caps} if caps else {}),
            **({"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
               if bench_device().type == "cuda" else {})}
