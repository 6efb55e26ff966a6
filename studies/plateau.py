"""The escape study: when does a row leave the bag-of-words plateau, and what moves that point?

    python -m studies.plateau run NAME --experiment ablation-nsp --row DOC-SENTENCES --preset cpu \
        --set data.tokens_per_batch=8192 [--evals 20]
    python -m studies.plateau report          # studies/plateau/README.md (the table) and curves.png

`run` trains one row (any table's row, at any preset, with any `--set` override) exactly as the runner
configures it, and at `--evals` evenly spaced steps measures on the table's held-out blocks (all of the preset's): the held-out
MLM loss (an RTD row's generator's, and its discriminator's AUC), and per layer the most local head's
attention on adjacent tokens as a multiple of uniform (experiments.running.word_order). Each measurement is
appended to `studies/plateau/runs/NAME.jsonl` as it is taken, so a killed run keeps its curve so far.

A row has escaped when some layer's most local head puts >= 3x the uniform share on adjacent tokens and
its held-out MLM loss is at most the midpoint between the unigram and the left-bigram count models (the
word-order check of issue 23). `report` gathers every run into one table and one plot.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from experiments.evaluations.word_order import LEARNED_ADJACENT_MULTIPLE as LOCAL_MULTIPLE
from experiments.evaluations.word_order import mlm_loss_threshold
from experiments.verdicts.judging import ELECTRA_REGIME_AUC

STUDY_DIR = Path(__file__).resolve().parent / "plateau"  # its README, plot and committed runs


def cpu_name() -> str:
    """The CPU's model name and whether it has bf16 (what decides the training precision)."""
    import torch

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return f"{names[0] if names else platform.machine()}{', AVX-512 bf16' if bf16 else ''}"


def midpoint(count_models: dict) -> float:
    return mlm_loss_threshold(count_models["unigram"], count_models["left_bigram"])


class MeasureWordOrder(Callback):
    """After each validation: the held-out metrics Lightning logged, and the attention profile, as one line."""

    def __init__(self, path: Path, batches: list, train_batches: list, rtd: bool, started: float, corrupted: list):
        self.path, self.batches, self.train_batches, self.rtd, self.started = path, batches, train_batches, rtd, started
        self.corrupted = corrupted  # an RTD row's held-out blocks with bigram-model replacements (one fixed task)

    def on_validation_end(self, trainer, module):
        from experiments.evaluations.heldout import detection_auc, heldout_mlm_loss
        from experiments.evaluations.word_order import attention_profile

        was_training = module.training
        module.eval()
        layers = attention_profile(module.discriminator if self.rtd else module.encoder, self.batches)
        train_loss = heldout_mlm_loss(module, self.train_batches, self.rtd)
        fixed_auc = detection_auc(module, self.corrupted) if self.rtd else None
        module.train(was_training)
        metrics = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        point = {"step": trainer.global_step, "tokens": module.padded_tokens_seen,
                 "lr": trainer.optimizers[0].param_groups[0]["lr"], "seconds": round(time.time() - self.started, 1),
                 "mlm_loss": metrics.get("mlm_loss", metrics.get("generator_mlm_loss")), "train_mlm_loss": train_loss,
                 "disc_auc": metrics.get("disc_auc"), "disc_auc_bigram": fixed_auc,
                 "most_local": [round(layer["adjacent_vs_uniform_most_local_head"], 3) for layer in layers],
                 "entropy_share": [round(layer["entropy_share"], 3) for layer in layers]}
        with self.path.open("a") as handle:
            handle.write(json.dumps(point) + "\n")
        print(f"  step {point['step']}: MLM {point['mlm_loss']:.3f} (training blocks {train_loss:.3f})"
              + (f", AUC {point['disc_auc']:.3f}" if point["disc_auc"] is not None else "")
              + (f" (bigram replacements {fixed_auc:.3f})" if fixed_auc is not None else "")
              + ", most local head per layer " + " / ".join(f"{m:.1f}x" for m in point["most_local"]), flush=True)


def run(args) -> None:
    import torch

    from datamodules.formats import InputFormat
    from datamodules.pretraining import (HELDOUT_FORMAT, HELDOUT_SEED, MaskedExamples, PretrainingDataModule, collate,
                                         heldout_masking)
    from experiments.running.durable import SeedEachBatch
    from experiments.running.overrides import parse_overrides
    from experiments.presets import get_preset
    from experiments.registry import get_experiment
    from experiments.running.hardware import default_precision
    from experiments.running.runner import build_module, plan
    from experiments.evaluations.heldout import bigram_corruption, count_model_cross_entropy

    experiment, preset = get_experiment(args.experiment), get_preset(args.preset)
    overrides = parse_overrides(args.set, None, None)
    p = plan(experiment, preset, 1, [args.row], overrides, Path("/tmp/plateau-plan"))[0]
    config = p.config
    args.dir.joinpath("runs").mkdir(parents=True, exist_ok=True)
    path = args.dir / "runs" / f"{args.name}.jsonl"
    L.seed_everything(args.seed, workers=True, verbose=False)
    data = PretrainingDataModule(config.data, seed=args.seed)
    data.prepare_data()
    data.setup()
    module = build_module(config, data.vocab_size)
    rtd = config.objective == "rtd"
    precision = args.precision or default_precision()
    header = {"name": args.name, "experiment": experiment.id, "row": args.row, "preset": preset.name,
              "overrides": overrides, "seed": args.seed, "steps": p.steps, "tokens_per_step": config.tokens_per_step,
              "peak_lr": config.optim.peak_lr, "count_models": count_model_cross_entropy(data.load()),
              "command": "python -m studies.plateau " + shlex.join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
              "threads": torch.get_num_threads(), "precision": precision,
              **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {})}  # Trainer's "auto" uses it
    path.write_text(json.dumps(header) + "\n")
    print(f"{args.name}: {args.row} of {experiment.id} at {preset.name} {overrides or ''}: {p.steps} steps x "
          f"{config.tokens_per_step:,} tokens; unigram {header['count_models']['unigram']:.3f}, left bigram "
          f"{header['count_models']['left_bigram']:.3f}, midpoint {midpoint(header['count_models']):.3f}", flush=True)
    heldout, blocks = [], 0  # the first held-out blocks, whatever the batch size
    for batch in data.val_dataloader()[0]:
        if blocks >= args.attention_blocks:
            break
        heldout.append(batch)
        blocks += len(batch["input_ids"])
    # as many blocks of the training text, laid out and masked as the held-out ones: the gap between the two
    # losses tells a model that memorises its training text from one that has stopped learning
    tokenized = data.load()
    train_blocks = MaskedExamples(InputFormat(HELDOUT_FORMAT, tokenized.train, config.data.block_size, HELDOUT_SEED),
                                  heldout_masking(config.data.masking), tokenized.vocab_size, HELDOUT_SEED)
    count = min(len(train_blocks), config.data.max_heldout_blocks or 256)
    train_batches = [collate([train_blocks[i] for i in range(j, min(j + 16, count))]) for j in range(0, count, 16)]
    # the held-out blocks of the row's own AUC, each masked position refilled by the bigram count model
    corrupted = bigram_corruption(tokenized, list(data.val_dataloader()[0]), HELDOUT_SEED) if rtd else []
    started = time.time()
    measure = MeasureWordOrder(path, heldout, train_batches, rtd, started, corrupted)
    trainer = L.Trainer(accelerator="auto", devices=1, precision=precision, max_steps=p.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, inference_mode=False, gradient_clip_val=config.optim.gradient_clip,
                        val_check_interval=max(1, p.steps // args.evals), check_val_every_n_epoch=None,
                        use_distributed_sampler=False,
                        callbacks=[SeedEachBatch(args.seed), measure])
    trainer.fit(module, datamodule=data)
    print(f"{args.name}: done in {time.time() - started:.0f} s", flush=True)


def load_runs(directory: Path) -> list[dict]:
    runs = []
    for path in sorted((directory / "runs").glob("*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            runs.append({**lines[0], "points": lines[1:]})
    return runs


def first(points: list[dict], test) -> dict | None:
    return next((point for point in points if test(point)), None)


def summary(run: dict) -> dict:
    """Where a run crossed each threshold (tokens), and where it ended."""
    points, middle = run["points"], midpoint(run["count_models"])
    local = first(points, lambda q: max(q["most_local"]) >= LOCAL_MULTIPLE)
    below = first(points, lambda q: q["mlm_loss"] is not None and q["mlm_loss"] <= middle)
    both = first(points, lambda q: max(q["most_local"]) >= LOCAL_MULTIPLE and q["mlm_loss"] is not None
                 and q["mlm_loss"] <= middle)
    # against a generator no better than a unigram model the replacements are near random, an easier task: an
    # AUC reached so is not ELECTRA's regime (the GDES row at 5x cpu's tokens, docs/what-models-learn.md)
    collapsed = first(points, lambda q: q["mlm_loss"] is not None and q["mlm_loss"] >= run["count_models"]["unigram"]
                      and q.get("disc_auc") is not None)
    regime = first(points, lambda q: q.get("disc_auc") is not None and q["disc_auc"] >= ELECTRA_REGIME_AUC
                   and q["mlm_loss"] is not None and q["mlm_loss"] < run["count_models"]["unigram"])
    last = points[-1] if points else None
    interval = points[0]["step"] if points else run["steps"]  # evenly spaced from step 0: the first is one interval
    lowest = min((q for q in points if q["mlm_loss"] is not None), key=lambda q: q["mlm_loss"], default=None)
    return {"local": local, "below": below, "escaped": both, "regime": regime, "collapsed": collapsed, "last": last, "lowest": lowest,
            "finished": bool(last) and last["step"] > run["steps"] - interval}


def reproducing_command(run: dict) -> str:
    """The run's recorded command as it runs now (the first runs were recorded when the study lived in
    `experiments/`), naming its preset where the command left it to the default (the first runs ran at `small`)."""
    command = run["command"].replace("python -m experiments.plateau ", "python -m studies.plateau ", 1)  # moved
    return command if "--preset" in shlex.split(command) else f"{command} --preset {run['preset']}"


def _tokens(point: dict | None) -> str:
    return f"{point['tokens'] / 1e6:.1f}M" if point else "no"


def report(args) -> None:
    from datamodules.errors import UsageError

    runs = load_runs(args.dir)
    if not runs:
        raise UsageError(f"no runs under {args.dir / 'runs'}: start one with `python -m studies.plateau run ...`")
    lines = ["| run | row | changes from the preset | steps x tokens/step | 3x adjacent at | MLM <= midpoint at | "
             f"escaped at | lowest held-out MLM (at) | at the end: MLM, most local head per layer | AUC (>= "
             f"{ELECTRA_REGIME_AUC:g} at) | time |",
             "|---" * 11 + "|"]
    for run in runs:
        s = summary(run)
        last = s["last"]
        changes = ", ".join(f"`{k}={v}`" for k, v in run["overrides"].items()) or "(none)"
        end = (f"{last['mlm_loss']:.3f}, " + " / ".join(f"{m:.1f}x" for m in last["most_local"])) if last else "-"
        auc = f"{last['disc_auc']:.3f} ({_tokens(s['regime'])})" if last and last.get("disc_auc") is not None else ""
        if last and last.get("disc_auc_bigram") is not None:
            auc += f"; on bigram replacements {last['disc_auc_bigram']:.3f}"
        if s["collapsed"]:
            auc += f"; generator at or above the unigram model from {_tokens(s['collapsed'])}"
        state = "" if s["finished"] else f" (stopped at step {last['step'] if last else 0})"
        lines.append(f"| {run['name']} | {run['row']} | {changes} | {run['steps']:,} x {run['tokens_per_step']:,} | "
                     f"{_tokens(s['local'])} | {_tokens(s['below'])} | **{_tokens(s['escaped'])}** | "
                     f"{s['lowest']['mlm_loss']:.3f} ({_tokens(s['lowest'])}) | {end}{state} | "
                     f"{auc} | {last['seconds'] / 60 if last else 0:.1f} min{' on ' + run['gpu'] if 'gpu' in run else ''} |")
    table = "\n".join(lines)
    plot(runs, args.dir / "curves.png")
    commands = "\n".join(f"    {reproducing_command(run)}" for run in runs)
    first_run = runs[0]
    text = (f"# The escape study\n\nGenerated by `python -m studies.plateau report` from `studies/plateau/runs/*.jsonl`; "
            f"each run's first line records its command, date, CPU and precision.\n\n"
            f"Escaped: some layer's most local head >= {LOCAL_MULTIPLE:g}x the uniform share on adjacent tokens and "
            f"held-out MLM loss <= the midpoint of the unigram ({first_run['count_models']['unigram']:.3f}) and "
            f"left-bigram ({first_run['count_models']['left_bigram']:.3f}) count models "
            f"({midpoint(first_run['count_models']):.3f} nats on the default corpus). Tokens are padded training tokens "
            f"at the first held-out evaluation that met the threshold (evaluations are evenly spaced, so this is an "
            f"upper bound within one interval); the AUC column's tokens are where an RTD row's discriminator first "
            f"reached held-out AUC {ELECTRA_REGIME_AUC:g} (ELECTRA's regime, issue 23), against its own generator's replacements; since 2026-12-05 a run also records the AUC on one fixed task, the same held-out blocks with every masked position refilled by the left-bigram count model (`disc_auc_bigram`), which does not get easier when a row's generator is weaker. Time is wall-clock on a shared 2-core machine (each run file records its threads: the runs up to electra-b64-s2000-warm32 had one thread each, two side by side, some slowed by other jobs; the later ones two threads, alone), or on the GPU a run names (the H200 runs named `*-h200` except the first ran six or seven at once on one card, two CPU threads each): compare runs by tokens, not by time.\n\n{table}\n\n![curves](curves.png)\n\nTo reproduce:\n\n{commands}\n")
    (args.dir / "README.md").write_text(text)
    print(text)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (local_axis, loss_axis, auc_axis) = plt.subplots(1, 3, figsize=(19, 5))
    for run in runs:
        tokens = [q["tokens"] / 1e6 for q in run["points"]]
        local_axis.plot(tokens, [max(q["most_local"]) for q in run["points"]], marker=".", label=run["name"])
        line, = loss_axis.plot(tokens, [q["mlm_loss"] for q in run["points"]], marker=".", label=run["name"])
        if all(q.get("train_mlm_loss") is not None for q in run["points"]):  # dashed: on training blocks
            loss_axis.plot(tokens, [q["train_mlm_loss"] for q in run["points"]], linestyle="--", color=line.get_color())
        if any(q.get("disc_auc") is not None for q in run["points"]):
            auc_axis.plot(tokens, [q.get("disc_auc") for q in run["points"]], marker=".", color=line.get_color(),
                          label=run["name"])
    counts = runs[0]["count_models"]
    local_axis.axhline(LOCAL_MULTIPLE, color="grey", linestyle="--", linewidth=1)
    local_axis.set(xlabel="training tokens (M)", ylabel="most local head: adjacent share / uniform",
                   title="attention to adjacent tokens", yscale="log")
    for value, name in ((counts["unigram"], "unigram"), (midpoint(counts), "midpoint"), (counts["left_bigram"], "left bigram")):
        loss_axis.axhline(value, color="grey", linestyle=":" if name != "midpoint" else "--", linewidth=1)
        loss_axis.annotate(name, (0, value), fontsize=8, color="grey", va="bottom")
    loss_axis.set(xlabel="training tokens (M)", ylabel="held-out MLM loss (nats)", title="MLM loss: held-out (solid), training blocks (dashed)")
    loss_axis.legend(fontsize=7)
    auc_axis.axhline(ELECTRA_REGIME_AUC, color="grey", linestyle="--", linewidth=1)
    auc_axis.set(xlabel="training tokens (M)", ylabel="held-out AUC", title="RTD rows: the discriminator's held-out AUC")
    if auc_axis.lines[1:]:
        auc_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.plateau", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="train one row and record its word-order curve")
    start.add_argument("name", help="the run's name (studies/plateau/runs/NAME.jsonl)")
    start.add_argument("--experiment", default="ablation-nsp")
    start.add_argument("--row", default="DOC-SENTENCES")
    start.add_argument("--preset", default="cpu")
    start.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    start.add_argument("--seed", type=int, default=0)
    start.add_argument("--evals", type=int, default=20, help="evenly spaced held-out measurements")
    start.add_argument("--attention-blocks", type=int, default=64, help="held-out blocks for the attention profile")
    start.add_argument("--precision", default=None)
    report_command = commands.add_parser("report", help="the table and plot of every run")
    for command in (start, report_command):
        command.add_argument("--dir", type=Path, default=STUDY_DIR, help="the study's folder (default studies/plateau)")
    args = parser.parse_args(argv)
    from datamodules.errors import exit_on_usage_error

    with exit_on_usage_error():
        (run if args.command == "run" else report)(args)


if __name__ == "__main__":
    main()
