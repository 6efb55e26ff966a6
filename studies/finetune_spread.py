"""How far a task's fine-tuning score moves with the fine-tuning seed alone, under each fine-tuning setting.

    python -m studies.finetune_spread run NAME --experiment ablation-nsp --row DOC-SENTENCES --preset cpu \
        --runs 5 [--set finetune.peak_lr=2e-4 ...] [--only bigram_shift]
    python -m studies.finetune_spread report      # studies/finetune_spread/README.md

`run` loads one trained row's encoder (train it first with its table's `make` target at that preset),
fine-tunes it on each of the row's tasks `--runs` times, exactly as a row fine-tunes (seeds 0, 1000, 2000, ...
above the pretraining seed), with the preset's fine-tuning settings changed by `--set finetune.*`, and writes
every run's score and seconds to `studies/finetune_spread/runs/NAME.json`. A stopped study reruns only the runs it
had not finished (they are recorded in the row's work folder, by settings). The encoder is the same for every run
and every setting, so the spread is the fine-tuning's own. `report` gathers every setting into one table.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path

STUDY_DIR = Path(__file__).resolve().parent / "finetune_spread"  # its README and committed runs


def current_command(command: str) -> str:
    """A recorded command as it runs now (the first runs were recorded when the study lived in `experiments/`)."""
    return command.replace("python -m experiments.finetune_spread ", "python -m studies.finetune_spread ", 1)


def run(args) -> None:
    from datamodules.downstream import task_name
    from datamodules.errors import UsageError
    from experiments.evaluations.finetuning import fine_tune_all, task_data
    from experiments.running.trained import load_trained_row
    from experiments.running.overrides import as_text, parse_overrides, split_tasks
    from studies.plateau import cpu_name
    from experiments.presets import get_preset
    from experiments.registry import get_experiment
    from experiments.running.hardware import Hardware, default_precision
    from experiments.running.runner import slug
    from experiments.spec import apply_changes

    if args.runs < 2:
        raise UsageError("--runs must be >= 2: a spread needs two fine-tuning runs")
    changes = parse_overrides(args.set, None, None)
    if not_finetune := [path for path in changes if not path.startswith("finetune.")]:
        raise UsageError(f"--set {', '.join(not_finetune)}: only finetune.* settings change here (the encoder is the "
                         "trained row's); name the overrides its table was run with by --table-set, --corpus, --tasks")
    tasks = tuple(split_tasks(args.tasks)) if args.tasks else None
    table_overrides = parse_overrides(args.table_set, args.corpus, tasks)  # which table's row: its directory
    experiment, preset = get_experiment(args.experiment), get_preset(args.preset)
    p, module, data = load_trained_row(experiment, preset, args.row, args.seed, table_overrides, args.results_dir)
    config = apply_changes(p.config, changes | {"finetune.seeds": args.runs})
    if args.only:  # a subset of the row's tasks: the others are not fine-tuned
        by_name = {task_name(spec): spec for spec in config.tasks}
        wanted = split_tasks(args.only)
        if unknown := [name for name in wanted if name not in by_name]:
            raise UsageError(f"--only {', '.join(unknown)}: not a task of {args.row} (its tasks: {', '.join(by_name)})")
        config = dataclasses.replace(config, tasks=tuple(by_name[name] for name in wanted))
    encoder_config = module.discriminator_config() if config.objective == "rtd" else module.encoder.config
    # the finished runs, in the trained encoder's work folder, by settings (not by name: the same settings under
    # another name reuse them)
    records = p.work_dir / "finetune-spread"
    settings = dataclasses.asdict(config.finetune)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def finished_run(task: str, k: int) -> Path:
        return records / key / f"{slug(task)}@ft{k}.json"

    started = time.time()
    scores, seconds = fine_tune_all(config, encoder_config, module.encoder_state(), task_data(config, data.load(), p.seed),
                                    p.seed, Hardware(), finished_run)
    tasks = list(seconds)
    result = {
        "name": args.name, "experiment": experiment.id, "row": args.row, "preset": preset.name, "seed": args.seed,
        "changes": as_text(changes), "finetune": settings,
        "runs": {task: [scores[f"{task}@ft{k}"] for k in range(args.runs)] for task in tasks},
        "seconds": seconds, "majority": {task: scores[f"{task}_majority"] for task in tasks},
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "precision": default_precision(),
        "wall_s": round(time.time() - started, 1),
        "command": "python -m studies.finetune_spread run " + " ".join(
            [args.name, "--experiment", experiment.id, "--row", f"'{args.row}'", "--preset", preset.name,
             "--runs", str(args.runs), *(["--seed", str(args.seed)] if args.seed else []),
             *(f"--set {text}" for text in as_text(changes)),
             *(f"--table-set {text}" for text in args.table_set),
             *([f"--corpus {args.corpus}"] if args.corpus else []), *([f"--tasks {args.tasks}"] if args.tasks else []),
             *([f"--only {args.only}"] if args.only else [])]),
    }
    (args.dir / "runs").mkdir(parents=True, exist_ok=True)
    (args.dir / "runs" / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    for task in tasks:
        print(f"{args.name} {task}: {_describe(result['runs'][task])}")


def _describe(scores: list[float]) -> str:
    return (f"median {statistics.median(scores):.1f}, mean {statistics.mean(scores):.1f}, SD {statistics.stdev(scores):.2f}, "
            f"range {min(scores):.1f}-{max(scores):.1f} over {len(scores)} runs")


def report(args) -> None:
    from datamodules.errors import UsageError

    studies = [json.loads(path.read_text()) for path in sorted((args.dir / "runs").glob("*.json"))]
    if not studies:
        raise UsageError(f"no runs under {args.dir / 'runs'}: start one with `python -m studies.finetune_spread run ...`")
    lines = ["| setting | row (preset) | changes from the preset | task | runs | median | mean | SD | range | "
             "majority | s per run |", "|---" * 11 + "|"]
    for study in studies:
        for task, scores in study["runs"].items():
            changes = ", ".join(f"`{text}`" for text in study["changes"]) or "(the preset's)"
            lines.append(f"| {study['name']} | {study['row']} seed {study['seed']} ({study['preset']}) | {changes} | {task} | {len(scores)} | "
                         f"{statistics.median(scores):.1f} | {statistics.mean(scores):.1f} | "
                         f"{statistics.stdev(scores):.2f} | {min(scores):.1f}-{max(scores):.1f} | "
                         f"{study['majority'][task]:.1f} | {statistics.mean(study['seconds'][task]):.0f} |")
    commands = "\n".join(f"    {current_command(study['command'])}" for study in studies)
    where = "; ".join(sorted({f"{s['date']}, {s['cpu']}, {s['precision']}" for s in studies}))
    text = ("# Fine-tuning spread\n\nGenerated by `python -m studies.finetune_spread report` from "
            "`studies/finetune_spread/runs/*.json`. One pretrained encoder per row, fine-tuned on each task several times "
            "with nothing changed but the fine-tuning seed (the order of the batches and the new head's initial "
            "weights), so the spread is the fine-tuning's own; scores x100 on the task's dev set. Seconds per run "
            "were timed on a shared 2-core machine, beside other jobs: compare the settings' cost by their steps. "
            f"Measured {where}.\n\n" + "\n".join(lines) + f"\n\nTo reproduce:\n\n{commands}\n")
    (args.dir / "README.md").write_text(text)
    print(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.finetune_spread", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="fine-tune one trained row's encoder several times on each task")
    start.add_argument("name", help="the setting's name (studies/finetune_spread/runs/NAME.json)")
    start.add_argument("--experiment", default="ablation-nsp")
    start.add_argument("--row", default="DOC-SENTENCES")
    start.add_argument("--preset", default="cpu")
    start.add_argument("--seed", type=int, default=0, help="the row's pretraining seed")
    start.add_argument("--runs", type=int, default=5, help="fine-tuning runs per task")
    start.add_argument("--set", action="append", default=[], metavar="finetune.FIELD=VALUE",
                       help="a fine-tuning setting to change from the row's (the setting under study)")
    start.add_argument("--table-set", action="append", default=[], metavar="PATH=VALUE",
                       help="an override the row's table was run with (--set of `python -m experiments run`)")
    start.add_argument("--corpus", default=None, help="the corpus the row's table was run with, if not the default")
    start.add_argument("--tasks", default=None, help="the tasks the row's table was run with, if not the default")
    start.add_argument("--only", default=None, metavar="TASK[,TASK]",
                       help="fine-tune only these of the row's tasks (default: all of them)")
    start.add_argument("--results-dir", type=Path, default=Path("results"))
    report_command = commands.add_parser("report", help="the table of every setting")
    for command in (start, report_command):
        command.add_argument("--dir", type=Path, default=STUDY_DIR, help="the study's folder (default studies/finetune_spread)")
    args = parser.parse_args(argv)
    from datamodules.errors import exit_on_usage_error

    with exit_on_usage_error():
        (run if args.command == "run" else report)(args)


if __name__ == "__main__":
    main()
