"""`make gpu-check`: the suite's GPU path checked in one command, about 8 minutes of one GPU.

Everything goes under one folder (default results/gpu-check/), and each step has its own time cap:

    environment  python, torch, CUDA, the card, its bf16 peak, the carry (studies.gpu_carry); always runs
    parity       tests/test_encoder_parity.py's CUDA and bf16 tests with pytest (parity.xml, parity.log)
    smoke        one smoke table of each objective under the precision the GPU picks: ablation-nsp (MLM and
                 MLM+NSP) and ablation-embedding-sharing --rows GDES (RTD)
    bench        studies.bench's workers at the paper's size (12 x 768, 12 heads, FFN 3072, sequence 512,
                 vocabulary 32K, bf16) at the largest batch that fits both models, halving from --batch on
                 running out of memory: ours against BertForMaskedLM, DebertaV2ForMaskedLM and HF's ELECTRA;
                 tokens/s, the ratio, TFLOP/s, MFU against the card's bf16 dense peak, peak memory (bench.json)
    medium       ablation-nsp's DOC-SENTENCES row at `medium`, timed, with its word order

Without a CUDA GPU each GPU step prints one line saying it is skipped and why, and the command exits 0;
`--force-cpu-smoke` runs the smoke step on the CPU anyway (how the tests exercise it). A step that fails
makes the exit code 1; one stopped at its cap reports what it finished. summary.md and summary.json say all.

    python -m studies gpu-check [--out DIR] [--steps parity,smoke,bench,medium] [--cap bench=240] [--batch 64]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("parity", "smoke", "bench", "medium")
# seconds per step: about 8 minutes in all, inside the 10 minutes one device command may run
CAPS = {"parity": 60, "smoke": 120, "bench": 180, "medium": 120}
DEFAULT_OUT = ROOT / "results" / "gpu-check"
DEFAULT_CARRY = ROOT / ".gpu-carry"

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendor's data sheets, by a part of the device name;
# the first match wins, so the more specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (NVIDIA H100 80GB HBM3)
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)

# The paper's size: BERT-base / RoBERTa-base / DeBERTa-base with a 32K vocabulary, sequence 512.
PAPER_SIZE = dict(num_layers=12, hidden_size=768, num_heads=12, ffn_size=3072, vocab_size=32768, max_positions=512,
                  length=512)
BENCH_KINDS = ("mlm", "deberta", "rtd")

SMOKE_RUNS = (("ablation-nsp", None), ("ablation-embedding-sharing", "GDES"))
MEDIUM_RUN = ("ablation-nsp", "DOC-SENTENCES")


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card not in the table (then no MFU is claimed)."""
    for part, tflops in BF16_PEAK_TFLOPS:
        if part.lower() in device_name.lower():
            return tflops
    return None


# ------------------------------------------------------------------------------------------ the carry


def use_carry(folder: Path) -> str:
    """Put a `make gpu-carry` folder first on the path of this process and of every one it starts, when it was
    built for this interpreter; returns the line to print."""
    record_path = folder / "CARRY.json"
    if not record_path.exists():
        return f"carry: none ({folder} not built; the machine's own packages are used)"
    record = json.loads(record_path.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if record.get("python") != here:
        return f"carry: {folder} was built for Python {record.get('python')}, this is {here}: not used"
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return f"carry: {folder} on the path ({', '.join(record['packages'] + record['data'])})"


# ------------------------------------------------------------------------------------- running a step


def run_capped(command: list[str], log: Path, cap: float, env: dict | None = None) -> dict:
    """Run `command` with its output in `log`; at `cap` seconds SIGTERM (the runner saves a checkpoint and
    stops), 30 s later SIGKILL. Returns {'rc', 'seconds', 'capped'}."""
    start = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=os.environ | (env or {}))
        capped = False
        try:
            rc = process.wait(timeout=max(1.0, cap))
        except subprocess.TimeoutExpired:
            capped = True
            os.killpg(process.pid, signal.SIGTERM)
            try:
                rc = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                rc = process.wait()
    return {"rc": rc, "seconds": round(time.monotonic() - start, 1), "capped": capped}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


NO_CUDA = "no CUDA GPU here (torch.cuda.is_available() is False)"


# ---------------------------------------------------------------------------------------------- steps


def environment(out: Path, carry_line: str) -> dict:
    import torch

    versions = {}
    for name in ("torch", "lightning", "transformers", "tokenizers", "torchmetrics", "datasets", "pyarrow", "fsspec",
                 "huggingface-hub", "blingfire", "scikit-learn", "numpy", "pandas"):
        try:
            from importlib import metadata

            versions[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - missing is what this records
            versions[name] = None
    info = {"python": platform.python_version(), "versions": versions, "carry": carry_line,
            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    problems = [f"{name} is missing" for name in ("datasets", "blingfire", "transformers") if versions[name] is None]
    if torch.cuda.is_available():
        from experiments.running.hardware import default_precision

        name = torch.cuda.get_device_name()
        info |= {"device": name, "bf16_peak_tflops": peak_tflops(name), "precision": default_precision(),
                 "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    try:
        from datamodules.corpus import news_articles_path

        news_articles_path()
    except Exception as error:  # noqa: BLE001
        problems.append(f"offline corpus: {error}")
    info["problems"] = problems
    return info


def step_parity(out: Path, cap: float) -> dict:
    if not cuda_available():
        return {"status": "skipped", "line": f"parity: skipped: {NO_CUDA}"}
    done = run_capped([sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q",
                       "tests/test_encoder_parity.py", "-k", "cuda or bf16", f"--junitxml={out / 'parity.xml'}"],
                      out / "parity.log", cap)
    tail = (out / "parity.log").read_text().strip().splitlines()[-1:] or [""]
    status = "ok" if done["rc"] == 0 else ("stopped at cap" if done["capped"] else "failed")
    return {"status": status, **done, "line": f"parity: {status} in {done['seconds']} s: {tail[0]}"}


def step_smoke(out: Path, cap: float, force_cpu: bool) -> dict:
    on_gpu = cuda_available()
    if not on_gpu and not force_cpu:
        return {"status": "skipped", "line": f"smoke: skipped: {NO_CUDA} (--force-cpu-smoke runs it on the CPU)"}
    deadline, runs = time.monotonic() + cap, []
    for experiment, rows in SMOKE_RUNS:
        left = deadline - time.monotonic()
        if left < 5:
            runs.append({"experiment": experiment, "rows": rows, "status": "not started: the cap was reached"})
            continue
        command = [sys.executable, "-m", "experiments", "run", experiment, "--preset", "smoke",
                   "--results-dir", str(out / "results"), *(["--rows", rows] if rows else []),
                   *([] if on_gpu else ["--accelerator", "cpu"])]
        done = run_capped(command, out / f"smoke-{experiment}.log", left)
        table = out / "results" / experiment / "smoke" / "table.md"
        status = "ok" if done["rc"] == 0 and table.exists() else ("stopped at cap" if done["capped"] else "failed")
        runs.append({"experiment": experiment, "rows": rows or "all", **done, "status": status,
                     "table": str(table.relative_to(out)) if table.exists() else None,
                     "precision": _precisions(out / "results" / experiment / "smoke")})
    statuses = {r["status"] for r in runs}
    status = "ok" if statuses == {"ok"} else ("failed" if "failed" in statuses else "stopped at cap")
    line = "; ".join(f"{r['experiment']}{'' if r['rows'] == 'all' else ' ' + str(r['rows'])} {r['status']}"
                     + (f" in {r['seconds']} s ({', '.join(r['precision'])})" if "seconds" in r else "")
                     for r in runs)
    return {"status": status, "runs": runs, "line": f"smoke: {line}"}


def _precisions(table_dir: Path) -> list[str]:
    found = set()
    for row in sorted((table_dir / "rows").glob("*.json")):
        hardware = json.loads(row.read_text()).get("hardware", {})
        found.add(f"{hardware.get('precision')} on {hardware.get('machine')}")
    return sorted(found)


def step_bench(out: Path, cap: float, batch: int) -> dict:
    if not cuda_available():
        return {"status": "skipped", "line": f"bench: skipped: {NO_CUDA}"}
    done = run_capped([sys.executable, "-m", "studies.gpu_check", "--bench-child", str(out / "bench.json"),
                       "--batch", str(batch)], out / "bench.log", cap, env={"BENCH_DEVICE": "cuda"})
    result = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {"kinds": {}}
    kinds = result.get("kinds", {})
    status = "ok" if done["rc"] == 0 and len(kinds) == len(BENCH_KINDS) else \
        ("stopped at cap" if done["capped"] else "failed")
    parts = [f"{kind} x{k['speedup_vs_hf']} at batch {k['batch']}, MFU {_percent(k.get('mfu'))}"
             for kind, k in kinds.items() if "speedup_vs_hf" in k]
    parts += [f"{kind}: {k['error']}" for kind, k in kinds.items() if "error" in k]
    return {"status": status, **done, **result,
            "line": f"bench: {status} in {done['seconds']} s: " + ("; ".join(parts) or "no kind finished")}


def _percent(value) -> str:
    return "unknown card" if value is None else f"{100 * value:.1f}%"


def bench_child(output: Path, start_batch: int) -> None:
    """The bench at the paper's size, in its own process so its cap can stop it; writes `output` after each kind."""
    from studies import bench

    from experiments.running.hardware import machine_name

    shape0 = bench.Shape(**PAPER_SIZE, batch=start_batch)
    name = machine_name()  # the GPU's name on a GPU (a CPU's in the tests)
    peak = peak_tflops(name)
    result = {"device": name, "bf16_peak_tflops": peak, "shape": shape0.describe(), "kinds": {}}
    for kind in BENCH_KINDS:
        batch, memory = start_batch, None
        while batch >= 1:  # the largest batch at which both models step (3 steps each, in a fresh process)
            shape = bench.Shape(**PAPER_SIZE, batch=batch)
            memory = [bench.peak_memory_mb(kind, which, True, shape) for which in (0, 1)]
            if not any(math.isnan(m) for m in memory):
                break
            print(f"{kind}: batch {batch} does not fit one of the models (peak MB {memory}); halving", flush=True)
            batch //= 2
        if batch < 1:
            result["kinds"][kind] = {"error": "not even batch 1 fits"}
            continue
        rows = bench.measure(kind, [True], steps=5, rounds=3, shape=shape, bf16=(True, ""))
        for row, peak_mb in zip(rows, memory):
            tflops = row["achieved_gflops"] / 1000
            row |= {"tflops": round(tflops, 1), "mfu": round(tflops / peak, 3) if peak else None,
                    "peak_gpu_mb": round(peak_mb)}
        result["kinds"][kind] = {"batch": batch, "tokens_per_step": shape.tokens_per_step,
                                 "speedup_vs_hf": rows[0]["speedup_vs_hf"], "mfu": rows[0]["mfu"], "rows": rows}
        bench._print_rows(kind, rows)
        output.write_text(json.dumps(result, indent=2))
    output.write_text(json.dumps(result, indent=2))


def step_medium(out: Path, cap: float) -> dict:
    if not cuda_available():
        return {"status": "skipped", "line": f"medium: skipped: {NO_CUDA}"}
    experiment, row = MEDIUM_RUN
    results = out / "results"
    done = run_capped([sys.executable, "-m", "experiments", "run", experiment, "--preset", "medium", "--rows", row,
                       "--results-dir", str(results)], out / "medium.log", cap)
    table_dir = results / experiment / "medium"
    row_files = sorted((table_dir / "rows").glob("*.json"))
    report: dict = {**done, "progress": pretraining_progress(table_dir)}
    if row_files:
        finished = json.loads(row_files[0].read_text())
        metrics = finished["metrics"]
        report |= {"status": "ok", "wall_time_s": finished["wall_time_s"], "seconds": finished["seconds"],
                   "word_order": {k: metrics.get(k) for k in ("adjacent_attention", "mlm_loss", "learned_word_order",
                                                              "minimal_pairs") if k in metrics}}
    else:
        report["status"] = "stopped at cap" if done["capped"] else "failed"
        # pretraining may have finished before the cap stopped the row's fine-tuning: its word order from the checkpoint
        if report["progress"].get("finished"):
            probe = run_capped([sys.executable, "-m", "experiments", "word-order", experiment, "--row", row, "--preset",
                                "medium", "--results-dir", str(results)], out / "medium-word-order.log", 90)
            found = sorted((table_dir / "word-order").glob("*.json"))
            report["word_order"] = json.loads(found[0].read_text()) if found else {"rc": probe["rc"]}
    progress = report["progress"]
    line = (f"medium: {report['status']} after {done['seconds']} s: pretraining step {progress.get('step', 0)} of "
            f"{progress.get('steps', '?')}" + (f", held-out MLM {progress['val_mlm_loss']:.3f}"
                                                if progress.get("val_mlm_loss") is not None else ""))
    if "word_order" in report:
        line += f"; word order: {json.dumps(report['word_order'])[:200]}"
    return {**report, "line": line}


def pretraining_progress(table_dir: Path) -> dict:
    """How far the row's pretraining got, from its CSV logs (every session of a resumed run)."""
    step, loss = 0, None
    for log in sorted(table_dir.glob("work/pretrain-*/log-*/metrics.csv")):
        with log.open() as file:
            for record in csv.DictReader(file):
                if record.get("step"):
                    step = max(step, int(float(record["step"])))
                if record.get("val/mlm_loss"):
                    loss = float(record["val/mlm_loss"])
    steps = None
    try:
        from experiments.presets import get_preset
        from experiments.registry import get_experiment
        from experiments.running.runner import plan

        steps = plan(get_experiment(MEDIUM_RUN[0]), get_preset("medium"), 1, [MEDIUM_RUN[1]], None,
                     table_dir.parent.parent)[0].steps
    except Exception:  # noqa: BLE001 - a count to print, never a reason to fail
        pass
    return {"step": step, "steps": steps, "val_mlm_loss": loss, "finished": steps is not None and step >= steps - 1}


# ---------------------------------------------------------------------------------------------- summary


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    env = summary["environment"]
    lines = ["# GPU check", "",
             f"Python {env['python']}, torch {env['versions'].get('torch')} (CUDA {env['cuda']}), "
             f"{env.get('device', 'no CUDA GPU')}" + (f", bf16 dense peak {env['bf16_peak_tflops']} TFLOP/s"
                                                     if env.get("bf16_peak_tflops") else "")
             + f"; {env['carry']}. Total {summary['seconds']} s.", ""]
    if env["problems"]:
        lines += ["Problems: " + "; ".join(env["problems"]), ""]
    lines += ["| step | status | cap (s) | what it found |", "|---|---|---|---|"]
    for name, step in summary["steps"].items():
        lines.append(f"| {name} | {step['status']} | {summary['caps'][name]} | {step['line'].replace('|', '/')} |")
    bench = summary["steps"].get("bench", {})
    if bench.get("kinds"):
        lines += ["", f"Bench at the paper's size on {bench.get('device')} (bf16; {bench.get('shape')}, batch per kind "
                  "below):", "", "| kind | model | batch | tokens/s | ours / HF | TFLOP/s | MFU | peak GPU MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, entry in bench["kinds"].items():
            for row in entry.get("rows", []):
                lines.append(f"| {kind} | {row['model']} | {entry['batch']} | {row['tokens_per_s']:,} | "
                             f"{row.get('speedup_vs_hf', '')} | {row['tflops']} | {_percent(row['mfu'])} | "
                             f"{row['peak_gpu_mb']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies gpu-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the output folder (default results/gpu-check)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS",
                        help="a step's time cap (defaults: " + ", ".join(f"{k} {v} s" for k, v in CAPS.items()) + ")")
    parser.add_argument("--batch", type=int, default=64, help="the bench's first batch at sequence 512 (halved on OOM)")
    parser.add_argument("--carry", type=Path, default=DEFAULT_CARRY, help="a `make gpu-carry` folder (default .gpu-carry)")
    parser.add_argument("--force-cpu-smoke", action="store_true", help="run the smoke step on the CPU too")
    parser.add_argument("--bench-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bench_child:
        return bench_child(args.bench_child, args.batch)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    caps = dict(CAPS)
    for item in args.cap:
        name, _, seconds = item.partition("=")
        if name not in CAPS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--cap {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        caps[name] = float(seconds)
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)} (valid: {', '.join(STEPS)})")
    os.environ.setdefault("WANDB_MODE", "disabled")  # no W&B server is reachable from a lent GPU machine
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    carry_line = use_carry(args.carry)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = environment(out, carry_line)
    print(f"environment: Python {env['python']}, torch {env['versions']['torch']}, "
          + (f"{env['device']} (bf16 dense peak {env['bf16_peak_tflops'] or 'unknown: no MFU'} TFLOP/s, "
             f"{env['precision']})" if env["cuda_available"] else "no CUDA GPU")
          + (f"; problems: {'; '.join(env['problems'])}" if env["problems"] else ""), flush=True)
    print(carry_line, flush=True)
    runners = {"parity": lambda: step_parity(out, caps["parity"]),
               "smoke": lambda: step_smoke(out, caps["smoke"], args.force_cpu_smoke),
               "bench": lambda: step_bench(out, caps["bench"], args.batch),
               "medium": lambda: step_medium(out, caps["medium"])}
    results = {}
    for name in STEPS:
        if name not in steps:
            continue
        try:
            results[name] = runners[name]()
        except Exception as error:  # noqa: BLE001 - one step's crash is reported, the others still run
            results[name] = {"status": "failed", "line": f"{name}: failed: {type(error).__name__}: {error}"}
        print(results[name]["line"], flush=True)
    summary = {"environment": env, "caps": caps, "steps": results, "seconds": round(time.monotonic() - start, 1)}
    write_summary(out, summary)
    print(f"written: {out / 'summary.md'} and summary.json ({summary['seconds']} s)")
    if any(step["status"] == "failed" for step in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
