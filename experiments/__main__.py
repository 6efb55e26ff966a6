"""`python -m experiments list | run <id|all> | table <id> | plan <id> | publish | board | export <id> | word-order <id> |
reevaluate <id|all> | calibrate | index`: the suite's command line."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from datamodules.errors import UsageError, exit_on_usage_error
from experiments.presets import DEFAULT_PRESET, PRESETS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="show every experiment with its paper and make target")
    run = commands.add_parser("run", help="run one experiment (or all) and print its table")
    run.add_argument("experiment", help="an experiment id, or 'all'")
    run.add_argument("--preset", default=DEFAULT_PRESET, help=f"{' | '.join(PRESETS)} (default {DEFAULT_PRESET})")
    run.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    run.add_argument("--rows", default=None, help="comma-separated row names (default: every row)")
    run.add_argument("--tasks", default=None,
                     help="downstream tasks, e.g. sentiment,topic,glue-sst2,mine=files:train.csv,dev.csv")
    run.add_argument("--corpus", default=None, help="files:PATH[,PATH...] or hub:NAME[:CONFIG] (default: the news corpus)")
    run.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                     help="any config field, repeatable: --set optim.peak_lr=3e-4 --set encoder.p2c_index=code")
    run.add_argument("--results-dir", default=None, type=Path)
    run.add_argument("--accelerator", default="auto")
    run.add_argument("--devices", default="1")
    run.add_argument("--strategy", default="auto", help="auto | ddp | fsdp | ...")
    run.add_argument("--num-nodes", type=int, default=1)
    run.add_argument("--precision", default=None,
                     help="32-true | bf16-mixed | 16-mixed (GPU only); default: bf16-mixed on a GPU or CPU with bf16, "
                          "16-mixed on a GPU without, else 32-true")
    run.add_argument("--num-workers", type=int, default=0)
    run.add_argument("--compile", action="store_true", help="torch.compile the encoders (speed only)")
    run.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                     help="glibc's malloc keeps freed blocks for the next step instead of faulting them in again "
                          "(speed only; default on; see experiments/running/allocator.py)")
    table = commands.add_parser("table", help="rebuild a table from its row files")
    table.add_argument("experiment")
    table.add_argument("--preset", default=DEFAULT_PRESET)
    table.add_argument("--results-dir", default=None, type=Path)
    export = commands.add_parser("export", help="write a trained row's encoder and tokenizer as a HuggingFace model")
    export.add_argument("experiment")
    export.add_argument("--row", required=True, help="the row's name, as in the table")
    export.add_argument("--preset", default=DEFAULT_PRESET)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--to", required=True, type=Path, help="the directory to write (AutoModel.from_pretrained)")
    export.add_argument("--format", default=None, help="bert | roberta | deberta-v2 (default: from the attention)")
    export.add_argument("--results-dir", default=None, type=Path)
    word_order = commands.add_parser("word-order", help="does a trained row's encoder use word order? (held-out "
                                     "loss against count models, where each layer attends)")
    word_order.add_argument("experiment")
    word_order.add_argument("--row", required=True, help="the row's name, as in the table")
    word_order.add_argument("--preset", default=DEFAULT_PRESET)
    word_order.add_argument("--seed", type=int, default=0)
    word_order.add_argument("--results-dir", default=None, type=Path)
    reevaluate = commands.add_parser("reevaluate", help="give finished rows the tasks their config has gained "
                                     "(fine-tuning and probes of their saved encoders, no pretraining)")
    reevaluate.add_argument("experiment", help="an experiment id, or 'all'")
    reevaluate.add_argument("--preset", default=DEFAULT_PRESET)
    reevaluate.add_argument("--rows", default=None, help="comma-separated row names (default: every finished row)")
    reevaluate.add_argument("--results-dir", default=None, type=Path)
    reevaluate.add_argument("--accelerator", default="auto")
    reevaluate.add_argument("--precision", default=None, help="as for run (default: this machine's)")
    for command in (table, export, word_order, reevaluate):  # a run with overrides lives in its own directory: name them again
        command.add_argument("--tasks", default=None)
        command.add_argument("--corpus", default=None)
        command.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    calibrate = commands.add_parser("calibrate", help="measure a preset's seed-to-seed noise for the verdicts")
    calibrate.add_argument("--preset", default=DEFAULT_PRESET)
    calibrate.add_argument("--seeds", type=int, default=5, help="pretraining seeds of each calibration row (5: 4 degrees of freedom)")
    calibrate.add_argument("--results-dir", default=None, type=Path)
    calibrate.add_argument("--output", default=None, type=Path, help="default: experiments/verdicts/calibration.json")
    calibrate.add_argument("--kinds", default=None, help="comma-separated kinds of row to calibrate (default: all: "
                           "absolute-mlm, disentangled-mlm, rtd); the others keep their figures")
    planner = commands.add_parser("plan", help="before a run: what a budget of hours decides on this machine")
    planner.add_argument("experiment")
    planner.add_argument("--preset", default=DEFAULT_PRESET)
    planner.add_argument("--hours", type=float, default=None, help="what this many hours of this machine decide")
    planner.add_argument("--seeds", type=int, default=None, help="what this many seeds of the table cost")
    planner.add_argument("--tflops", type=float, default=None,
                         help="plan for a machine measured elsewhere: its training throughput in TFLOP/s (docs/speed.md)")
    planner.add_argument("--results-dir", default=None, type=Path)
    planner.add_argument("--calibration", default=None, type=Path, help="default: experiments/verdicts/calibration.json")
    publish = commands.add_parser("publish", help="copy the current-configuration rows of every table at a preset "
                                  "into reference/<preset>/<machine kind>/<table>/, build each table there, and the board")
    publish.add_argument("--preset", default=DEFAULT_PRESET)
    publish.add_argument("--results-dir", default=None, type=Path)
    commands.add_parser("board", help="write reference/BOARD.md (every claim of every table) from the reference rows")
    commands.add_parser("index", help="rebuild results/README.md from every table on disk")
    args = parser.parse_args(argv)
    from experiments.running.durable import Stopped

    try:
        with exit_on_usage_error():
            dispatch(args)
    except Stopped as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}; a checkpoint was saved: run the same command again "
              f"to resume (finished rows are kept)", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None


def dispatch(args) -> None:
    from experiments.registry import EXPERIMENTS, get_experiment

    if args.command == "list":
        print(f"{'experiment':30} {'rows':>4}  {'make target':38} paper")
        for e in EXPERIMENTS.values():
            print(f"{e.id:30} {len(e.rows):>4}  make {e.id:33} {e.paper.split(';')[0]}")
        return
    from experiments.presets import get_preset
    from experiments.reporting.tables import build_table, write_index
    from experiments.running.hardware import Hardware
    from experiments.running.runner import DEFAULT_RESULTS, is_global_zero, run

    results_dir = getattr(args, "results_dir", None) or DEFAULT_RESULTS
    if args.command == "board":
        from experiments.reporting.board import write_board

        print(f"written: {write_board()}")
        return
    if args.command == "index":
        print(write_index(results_dir, list(EXPERIMENTS.values())))
        return
    from experiments.running.overrides import directory_name, parse_overrides, split_tasks

    preset = get_preset(args.preset)
    if args.command == "publish":
        from experiments.reporting.board import publish, write_board

        publish(preset, results_dir)
        print(f"written: {write_board()}")
        return
    if args.command == "plan":
        from experiments.reporting.planner import plan_table
        from experiments.verdicts.noise import CALIBRATION_FILE

        if args.hours is not None and args.hours <= 0 or args.seeds is not None and args.seeds < 1:
            raise UsageError("--hours must be > 0 and --seeds >= 1")
        plan_table(get_experiment(args.experiment), preset, args.hours, args.seeds, args.tflops, results_dir,
                   args.calibration or CALIBRATION_FILE)
        return
    if args.command == "calibrate":  # always the preset's own configuration: no overrides
        calibrate(preset, args.seeds, results_dir, args.output, args.kinds.split(",") if args.kinds else None)
        return
    tasks = tuple(split_tasks(args.tasks)) if args.tasks else None
    overrides = parse_overrides(args.set, args.corpus, tasks)
    if args.command == "table":
        experiment = get_experiment(args.experiment)
        directory = results_dir / experiment.id / directory_name(preset.name, overrides)
        build_table(experiment, preset.name, directory)
        print((directory / "table.md").read_text())
        return
    if args.command == "export":
        from experiments.running.trained import export_row

        written = export_row(get_experiment(args.experiment), preset, args.row, args.seed, overrides, results_dir,
                             args.to, args.format)
        print(f"exported {args.row} to {written}: AutoModel.from_pretrained({str(written)!r}) and "
              f"AutoTokenizer.from_pretrained({str(written)!r}) load it")
        return
    if args.command == "word-order":
        from experiments.running.word_order import describe, inspect

        report = inspect(get_experiment(args.experiment), preset, args.row, args.seed, overrides, results_dir)
        print(describe(report))
        print(f"written: {report['path']}")
        return
    experiments = list(EXPERIMENTS.values()) if args.experiment == "all" else [get_experiment(args.experiment)]
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    if rows and len(experiments) > 1:
        raise UsageError("--rows needs a single experiment")
    if args.command == "reevaluate":
        from experiments.running.reevaluate import reevaluate

        hardware = Hardware(accelerator=args.accelerator, precision=args.precision)
        hardware.validate()
        for experiment in experiments:
            directory = reevaluate(experiment, preset, results_dir, rows, overrides, hardware)
            if (directory / "rows").exists():
                build_table(experiment, preset.name, directory)
                print(f"table: {directory / 'table.md'}")
        print(f"index: {write_index(results_dir, list(EXPERIMENTS.values()))}")
        return
    hardware = Hardware(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy,
                        num_nodes=args.num_nodes, precision=args.precision, num_workers=args.num_workers,
                        compile=args.compile, keep_freed_memory=args.keep_freed_memory)
    hardware.validate()
    from experiments.running.runner import plan

    for experiment in experiments:  # validate everything before anything trains
        plan(experiment, preset, args.seeds, rows, overrides, results_dir)
    for experiment in experiments:
        run(experiment, preset, args.seeds, rows, overrides, hardware, results_dir)
        if is_global_zero():
            from experiments.running import tracking

            directory = results_dir / experiment.id / directory_name(preset.name, overrides)
            payload = build_table(experiment, preset.name, directory)
            tracking.log_table(experiment.id, preset.name, directory / "wandb", payload["header"], payload["rows"])
            print((directory / "table.md").read_text())
            print(f"table: {directory / 'table.md'} (also table.csv, table.json, curves.png, metrics.png)")
    if is_global_zero():
        print(f"index: {write_index(results_dir, list(EXPERIMENTS.values()))}")


def calibrate(preset, seeds: int, results_dir: Path, output: Path | None, kinds: list[str] | None = None) -> None:
    """Train each kind's calibration row with `seeds` pretraining seeds, then store and print its paired SD
    and the minimum detectable effect (95%) per metric. The rows are ordinary rows of their tables."""
    import json
    import platform

    import torch

    from experiments.presets import configure
    from experiments.registry import get_experiment
    from experiments.reporting.tables import load_rows
    from experiments.running.hardware import Hardware, default_precision, machine_kind, row_seconds
    from experiments.running.runner import git_commit, plan, run
    from experiments.verdicts.noise import CALIBRATION_FILE, CALIBRATION_ROWS, calibration_entry, describe_calibration, save_calibration

    if seeds < 2:
        raise UsageError("calibrate needs --seeds >= 2 (a spread needs two seeds)")
    kinds = [k.strip() for k in kinds] if kinds else list(CALIBRATION_ROWS)
    if unknown := [k for k in kinds if k not in CALIBRATION_ROWS]:
        raise UsageError(f"unknown kind of row {', '.join(unknown)} (valid: {', '.join(CALIBRATION_ROWS)})")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    hardware = f"{platform.machine()}, {os.cpu_count()} CPUs, {gpu}, {default_precision()}"
    entries = {}
    for kind in kinds:
        experiment_id, row = CALIBRATION_ROWS[kind]
        experiment = get_experiment(experiment_id)
        run(experiment, preset, seeds, [row], None, Hardware(), results_dir)
        values = load_rows(experiment, results_dir / experiment.id / preset.name)[row].values
        results = {p.seed: json.loads(p.result_path.read_text()) for p in plan(experiment, preset, seeds, [row], None, results_dir)}
        finetune_seeds = configure(experiment.base, preset, {}).finetune.seeds
        entries[kind] = calibration_entry(f"{experiment_id}/{row}", values, results, finetune_seeds, git_commit(), hardware,
                                          machine_kind(default_precision()), [row_seconds(r) for r in results.values()])
        entries[kind]["finetune_cost"] = {f"seed {seed}": finetune_cost(result) for seed, result in results.items()}
    path = output or CALIBRATION_FILE
    save_calibration(preset.name, entries, path)
    print(f"calibration of {preset.name}, written to {path}")
    print(describe_calibration(preset.name, entries, path))
    print("what the fine-tuning seeds cost (a row's time with all of them / with the first seed of each task):")
    for kind, entry in entries.items():
        for name, cost in entry["finetune_cost"].items():
            print(f"  {entry['row']} {name}: {cost['ratio']:.2f}x (row {cost['row_s']:.0f} s, pretraining "
                  f"{cost['pretraining_s']:.0f} s, fine-tuning runs {cost['finetune_s']} s)" if cost
                  else f"  {entry['row']} {name}: not timed (a row from an older version)")


def finetune_cost(result: dict) -> dict | None:
    """How much a row's K fine-tuning seeds add: its time with every seed over its time with seed 1 alone
    (everything else + each task's first run), from the seconds the row recorded."""
    from experiments.running.hardware import row_seconds

    seconds = result.get("seconds")
    if not seconds or "fine-tuning" not in seconds:
        return None
    runs, every_seed = seconds["fine-tuning"], row_seconds(result)
    one_seed = every_seed - sum(sum(times[1:]) for times in runs.values())
    return {"ratio": round(every_seed / one_seed, 3), "row_s": every_seed, "pretraining_s": seconds["pretraining"],
            "finetune_s": runs}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
