"""`make bench`'s machinery (its speeds are never asserted: benchmarks are a separate command)."""
import json
import os
import subprocess
import sys

import pytest

from studies import bench


@pytest.mark.slow(seconds=55)
def test_workers_time_both_models_on_the_same_batches_and_report_a_ratio():
    rows = bench.measure("mlm", precisions=[False], steps=1, rounds=1)
    assert [row["model"] for row in rows] == ["ours MLM", "HF BertForMaskedLM"]
    assert all(row["step_s"] > 0 and row["tokens_per_s"] > 0 and row["achieved_gflops"] > 0 for row in rows)
    # the ratio is HF's median step time over ours (both rounded for the table)
    assert abs(rows[0]["speedup_vs_hf"] - rows[1]["step_s"] / rows[0]["step_s"]) < 0.02
    json.dumps(rows)  # what results/bench.json holds


@pytest.mark.slow(seconds=30)
def test_a_baseline_checkout_is_timed_in_the_same_rounds_and_compared():
    tiny, _ = bench.preset_shape("smoke")
    rows = bench.measure("mlm", precisions=[False], steps=1, rounds=1, shape=tiny, baseline=bench.ROOT)
    ours, hf, baseline = rows
    assert baseline["model"].startswith("baseline ours MLM") and baseline["tokens_per_s"] > 0
    assert abs(ours["speedup_vs_baseline"] - baseline["step_s"] / ours["step_s"]) < 0.02
    assert abs(baseline["speedup_vs_hf"] - hf["step_s"] / baseline["step_s"]) < 0.02
    bench._print_rows("mlm", rows)  # a baseline row has no memory probe of its own


def test_a_workers_shape_names_only_the_fields_that_differ_from_their_defaults():
    """An older checkout's worker builds the shape from what the command line names: a field it does not know yet
    must be left out while it is at its default, and the shape must read back unchanged."""
    plain = bench.SMALL
    assert "relative_bias" not in json.loads(plain.to_json()) and "dropout" not in json.loads(plain.to_json())
    assert bench.Shape(**json.loads(plain.to_json())) == plain
    biased, _ = bench.preset_shape("cpu")
    assert biased.relative_bias and json.loads(biased.to_json())["relative_bias"] is True
    assert bench.Shape(**json.loads(biased.to_json())) == biased


def test_a_baseline_that_is_not_a_checkout_of_the_suite_is_refused(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--baseline", str(tmp_path), "--only", "mlm"])
    assert stopped.value.code == 2


def _cpu_reports(monkeypatch, precision: str) -> None:
    """Make the runner's test of the machine (experiments.running.hardware.default_precision) answer `precision`."""
    from experiments.running import hardware

    monkeypatch.setattr(hardware, "default_precision", lambda: precision)


def test_the_runners_test_and_the_precision_switch_decide_whether_bf16_rows_run(monkeypatch):
    _cpu_reports(monkeypatch, "bf16-mixed")
    assert bench.bf16_rows("auto")[0]
    assert not bench.bf16_rows("fp32")[0]  # the switch: say this CPU has no bf16 (or emulate one without)
    _cpu_reports(monkeypatch, "32-true")
    runs, reason = bench.bf16_rows("auto")
    assert not runs and "32-true" in reason and "default_precision" in reason
    assert bench.bf16_rows("bf16")[0]  # asked for explicitly, they run anyway
    with pytest.raises(ValueError, match="unknown precision"):
        bench.bf16_rows("fp16")
    with pytest.raises(SystemExit):  # the switch is the command line's --precision
        bench.main(["--precision", "fp16"])


def test_on_a_gpu_the_gpus_own_bf16_support_decides_and_no_gpu_is_refused(monkeypatch):
    """--device cuda: bf16 rows run where the GPU has bf16 (a training run there uses bf16-mixed), whatever
    the CPU has; without a GPU the option is a clear error, exit 2."""
    _cpu_reports(monkeypatch, "32-true")  # the CPU's answer must not matter on a GPU
    monkeypatch.setenv(bench.DEVICE_VARIABLE, "cuda")
    monkeypatch.setattr(bench.torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    runs, reason = bench.bf16_rows("auto")
    assert runs and "bf16-mixed" in reason
    monkeypatch.setattr(bench.torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    runs, reason = bench.bf16_rows("auto")
    assert not runs and "GPU has no bf16" in reason
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--device", "cuda", "--only", "mlm"])
    assert stopped.value.code == 2


@pytest.mark.slow(seconds=25)
def test_bf16_rows_are_skipped_not_run_on_a_cpu_without_bf16(monkeypatch):
    """The worker protocol with bf16 reported unsupported: fp32 workers run, no bf16 worker is started,
    and the bf16 row is a skipped row that says why."""
    _cpu_reports(monkeypatch, "32-true")
    started = []

    class RecordingWorker(bench.Worker):
        def __init__(self, kind, which, bf16, steps, shape=bench.SMALL):
            started.append(bf16)
            super().__init__(kind, which, bf16, steps, shape)

    monkeypatch.setattr(bench.workers, "Worker", RecordingWorker)  # where measure() finds it
    tiny, _ = bench.preset_shape("smoke")  # the smoke preset's model: fast steps
    rows = bench.measure("mlm", precisions=[False, True], steps=1, rounds=1, shape=tiny)
    assert started == [False, False]  # ours and HF's in fp32; nothing in bf16
    measured, skipped = rows[:2], rows[2:]
    assert [row["precision"] for row in measured] == ["fp32", "fp32"] and all(row["tokens_per_s"] > 0 for row in measured)
    assert len(skipped) == 1 and skipped[0]["precision"] == "bf16" and "no bf16" in skipped[0]["skipped"]
    json.dumps(rows)


@pytest.mark.slow(seconds=25)
def test_the_default_presets_shape_is_read_from_the_presets_and_priced_per_row():
    from experiments.presets import PRESETS, configure, get_preset
    from experiments.spec import RunConfig

    assert bench.default_preset() in PRESETS
    config = configure(RunConfig(), get_preset("smoke"), {})
    shape, train_tokens = bench.preset_shape("smoke")
    assert (shape.hidden_size, shape.num_layers, shape.length) == (config.encoder.hidden_size, config.encoder.num_layers,
                                                                   config.data.block_size)
    assert shape.tokens_per_step == config.data.tokens_per_batch and train_tokens == config.train_tokens
    # ours is timed with what the preset trains, the relative bias included where it sets one
    assert bench.preset_shape("cpu")[0].relative_bias and not bench.preset_shape("base")[0].relative_bias
    assert bench.preset_shape("cpu")[0].encoder().relative_bias
    result = bench.bench_default_preset("smoke", bf16=False, steps=1, rounds=1)
    assert result["preset"] == "smoke" and result["train_tokens"] == train_tokens
    ours, hf = result["rows"]
    assert ours["model"] == "ours MLM" and hf["model"] == "HF BertForMaskedLM" and "speedup_vs_hf" in ours
    for row in (ours, hf):  # a row's pretraining at that speed: its token budget over tokens per second
        assert row["pretraining_minutes"] == pytest.approx(train_tokens / row["tokens_per_s"] / 60, abs=0.006)
    json.dumps(result)


FAULTS_PER_STEP = """
import resource, sys, torch
from experiments.running import allocator
if sys.argv[1] == "kept":
    assert allocator.keep_freed_memory()
def step():  # a 64 MiB activation, allocated and freed: above glibc's largest automatic mmap threshold
    torch.ones(16 * 2**20)
for _ in range(12):  # the heap grows for the first steps, then settles (measured: within 9)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds (experiments.running.allocator)")
def test_freed_memory_is_kept_for_the_next_step_in_process_and_in_the_bench_workers(monkeypatch):
    """The runner's setting (mallopt) and the bench workers' (the environment) both stop a freed large block
    from being unmapped and faulted in again, page by page, at the next step."""
    from experiments.running import allocator

    def faults(mode: str, environment: dict) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], cwd=bench.ROOT, capture_output=True,
                              text=True, check=True, env=os.environ | environment)
        return int(done.stdout.split()[-1])

    default = faults("default", {})
    if default < 10 * 1000:
        pytest.skip(f"{default} page faults for 10 x 64 MiB: this kernel maps them in huge pages, nothing to keep")
    assert faults("kept", {}) < default / 10
    assert faults("default", allocator.environment()) < default / 10
    # every timing worker, whichever checkout it runs, starts with that environment
    started = {}

    class Started(Exception):
        pass

    def popen(command, **kwargs):
        started.update(kwargs["env"])
        raise Started

    monkeypatch.setattr(bench.workers.subprocess, "Popen", popen)
    with pytest.raises(Started):
        bench.Worker("mlm", 0, False, 1)
    assert started.items() >= allocator.environment().items()
