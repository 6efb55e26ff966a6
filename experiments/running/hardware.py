"""The machine a run trains on: settings that change speed, not results, and the precision picked per machine.

`default_precision` picks bf16-mixed on a GPU with bf16 and on a CPU with AVX-512 bf16, 16-mixed on an older GPU,
32-true elsewhere; `--precision` forces one of `PRECISIONS`. Every path is tested on any machine
(tests/test_precision.py; docs/tests.md lists each hardware branch and its test).
"""
from __future__ import annotations

import os
import platform
import tempfile
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.errors import UsageError
from experiments.running.progress import progress_bar


@dataclass(frozen=True)
class Hardware:
    """Settings that change speed, not results: kept out of configs, hashes and tables."""

    accelerator: str = "auto"
    devices: str = "1"  # "1", "2", "auto", ...
    strategy: str = "auto"  # auto | ddp | fsdp | ...
    num_nodes: int = 1
    precision: str | None = None  # None: bf16-mixed where the hardware does bf16, else 32-true
    num_workers: int = 0
    compile: bool = False  # torch.compile the encoders (speed only)
    keep_freed_memory: bool = True  # glibc's malloc keeps freed blocks for reuse (experiments.running.allocator)

    def trainer_kwargs(self) -> dict:
        devices = int(self.devices) if str(self.devices).isdigit() else self.devices
        return dict(accelerator=self.accelerator, devices=devices, strategy=self.strategy, num_nodes=self.num_nodes,
                    precision=self.precision or default_precision())

    def validate(self) -> None:
        """Refuse a precision the suite does not train in, or one this machine cannot run, before anything trains."""
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"unknown --precision {self.precision!r} (valid: {', '.join(PRECISIONS)}; "
                             f"default here: {default_precision()})")
        on_gpu = torch.cuda.is_available() and self.accelerator in ("auto", "gpu", "cuda")
        if str(self.strategy).startswith("fsdp") and not on_gpu:
            raise UsageError("--strategy fsdp needs GPUs (Lightning's FSDP does not run on the CPU); on a CPU use "
                             "--strategy ddp")
        if self.precision == "16-mixed" and not on_gpu:
            raise UsageError("--precision 16-mixed needs a CUDA GPU (fp16 autocast with a loss scaler); on a CPU "
                             "use bf16-mixed or 32-true")

    @contextmanager
    def training(self, what: str):
        """Training that fails for its precision or this machine (an op without a kernel for the dtype, a plugin
        refusing a setting) ends in one message naming the precision and the one to try instead (exit code 2);
        the traceback goes to a file, for a report if the other precision fails too."""
        try:
            yield
        except (RuntimeError, MisconfigurationException) as error:
            precision = self.precision or default_precision()
            other = "32-true" if precision != "32-true" else ("bf16-mixed" if default_precision() != "32-true" else None)
            with tempfile.NamedTemporaryFile("w", prefix="ablations-failure-", suffix=".txt", delete=False) as file:
                file.write(f"{what} under {precision} on {machine_name()}\n\n")
                traceback.print_exception(error, file=file)
            last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            if isinstance(error, torch.OutOfMemoryError):  # the machine's memory, not the precision
                advice = ("the batch does not fit in this device's memory: lower data.tokens_per_batch and raise "
                          "gradient_accumulation by the same factor (SET='data.tokens_per_batch=... "
                          "gradient_accumulation=...'), which keeps the row's batch")
            elif other:
                advice = f"run again with --precision {other} (ARGS='--precision {other}' with make)"
            else:
                advice = "32-true is the most portable precision, so this is a bug: please report it with the traceback"
            raise UsageError(f"{what} failed under precision {precision} on {machine_name()}: {last_line} "
                             f"({type(error).__name__}; traceback in {file.name}). {advice}.") from error

    def trainer(self, label: str, callbacks=(), **kwargs) -> L.Trainer:
        """A Trainer with the suite's defaults and a progress display named `label` (see experiments.running.progress)."""
        return L.Trainer(**self.trainer_kwargs(), enable_progress_bar=True, enable_model_summary=False,
                         num_sanity_val_steps=0, inference_mode=False, callbacks=[*callbacks, progress_bar(label)],
                         **kwargs)


# The precisions the suite trains in: default_precision() picks one per machine, --precision forces one.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def default_precision() -> str:
    """bf16-mixed on a GPU with bf16 and on a CPU with AVX-512 bf16; 16-mixed on an older GPU; else 32-true."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16-mixed" if supported else "32-true"


def machine_name() -> str:
    """The GPU's name, or the CPU's model name (Linux) or architecture: what a failure message names."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_kind(precision: str) -> str:
    """The kind of machine a row ran on, as reference results are filed: e.g. cpu-avx512-bf16, cpu-avx2-fp32,
    gpu-bf16. Rows of one kind take the same code path (experiments.running.hardware.default_precision, ablations.fast_ops)."""
    short = {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}.get(precision, precision)
    if torch.cuda.is_available():
        return f"gpu-{short}"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"cpu-{'avx512' if capability.startswith('avx512') else capability}-{short}"


class LoadSampler:
    """The machine's 1-minute load average, sampled every `every` seconds while a row runs: a row whose time was
    shared with other work (load above the CPU count) says so, since its time is then not this machine's."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def start(self) -> "LoadSampler":
        if hasattr(os, "getloadavg"):  # not on Windows: the row records no load
            self._thread.start()
        return self

    def stop(self) -> dict:
        """{"mean", "max", "cpus"} of the samples, or {} without any."""
        self._stop.set()
        if not self.samples:
            return {}
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2),
                "cpus": os.cpu_count()}


def shared_machine(load: dict | None) -> bool:
    """Whether a row's recorded load says other work shared its CPUs: a mean load above the CPU count by more
    than half a core (the row's own threads make up to the CPU count)."""
    return bool(load) and load["mean"] > load["cpus"] + 0.5


def row_seconds(record: dict) -> float:
    """A finished row's whole time: its last session's, plus the pretraining its earlier sessions did up to the
    checkpoint it resumed from (the steps a kill lost after that checkpoint are left out: an uninterrupted row
    would not have trained them twice)."""
    return record["wall_time_s"] + record.get("resumed_pretraining_s", 0.0)


def copied_pretraining_seconds(record: dict) -> float:
    """The part of `row_seconds` that another table's finished pretraining took, where the row copied it
    (runner.borrow_pretraining): its table run alone spends it, `make ablations` trains it once."""
    return record.get("resumed_pretraining_s", 0.0) if record.get("pretraining_borrowed_from") else 0.0


def shared_pretraining_seconds(record: dict, table: list[dict]) -> float:
    """The part of `row_seconds` that a row of its own table spent on the same pretraining (the same work
    directory: ELECTRA sharing's "tie token embeddings" and "generator 1 width"), where that row trained it (spent
    longer pretraining): the table trains it once, so it is that row's time, not this one's."""
    def key(row: dict) -> tuple:  # which pretraining, then who spent longer training it
        return row["seed"], row.get("curves"), row.get("seconds", {}).get("pretraining", 0.0), row["row"]
    trained_by_other = any(key(other)[:2] == key(record)[:2] and key(other)[2:] > key(record)[2:] for other in table)
    return record.get("resumed_pretraining_s", 0.0) if trained_by_other else 0.0


def ran_alone(record: dict) -> bool:
    """Whether a row's time is this machine's: its load was recorded, and nothing else shared its CPUs."""
    return bool(record.get("load")) and not shared_machine(record["load"])
