"""The one runner: for each row and seed, pretrain -> evaluate (experiments.evaluations) -> a row JSON.

- Every row is validated (config and data) before any training starts.
- A finished row (its JSON exists with the same config hash) is skipped; an interrupted one resumes
  from its newest loadable checkpoint, with the same data order and random draws, so a killed sweep
  loses at most the work since that checkpoint and its result is the same as an uninterrupted run's.
- A row being trained by another sweep (its lock is held) is skipped and named at the end; Ctrl-C or
  SIGTERM stops after the current step with a checkpoint (see experiments.running.durable).
- Lightning's Trainer does the training; devices, strategy (DDP, FSDP), nodes and precision pass
  through. The corpus is prepared once (rank 0 of the first process), then read from the cache.
- Results are written by rank 0 only, atomically; the table is rebuilt from the row files afterwards.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ablations.encoder import Encoder
from datamodules.errors import UsageError
from datamodules.pretraining import PretrainingDataModule
from experiments.running import allocator, tracking
from experiments.evaluations import (cached_task, evaluate_pretrained, evaluation_device, fine_tune_all, learning_figures,
                                    task_data, validated_metrics)
from experiments.evaluations.early_points import SaveEncoderAt, evaluate_early_points
from experiments.running.durable import (AtomicCheckpointIO, Lock, SaveFinalStep, SeedEachBatch, StopOnRequest, StopRequest,
                                 Stopped, resumable_checkpoint, write_json_atomically)
from experiments.running.overrides import conflicts, directory_name
from experiments.running.overrides import save as save_overrides
from experiments.running.hardware import Hardware, LoadSampler, default_precision, machine_kind, machine_name
from experiments.presets import Preset, configure
from experiments.running.progress import minutes
from experiments.spec import Experiment, Row, RunConfig, budget_of, steps_for
from lightning_modules.mlm import MLMModule
from lightning_modules.rtd import RTDModule

ROOT = Path(__file__).resolve().parents[2]
for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):  # keep the run's own lines readable
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", module="lightning")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
DEFAULT_RESULTS = ROOT / "results"


def slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "-" for c in name).strip("-")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code this process runs, read once when the first row starts (a row that ends
    after a later commit still ran the earlier code); "-dirty" when tracked files had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=5).stdout.strip()
        return (commit + ("-dirty" if changed else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def is_global_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


@dataclass
class RowPlan:
    """A row at one preset and seed: its config, budget, and where its files go."""

    experiment: Experiment
    preset: Preset
    row: Row
    seed: int
    config: RunConfig
    steps: int
    directory: Path

    @property
    def name(self) -> str:
        return f"{slug(self.row.name)}__seed{self.seed}"

    @property
    def result_path(self) -> Path:
        return self.directory / "rows" / f"{self.name}.json"

    @property
    def work_dir(self) -> Path:
        """Pretraining checkpoints and logs, keyed by what decides the pretrained weights (and the seed)."""
        return self.directory / "work" / f"pretrain-{self.config.pretraining_hash()}__seed{self.seed}"

    def is_done(self) -> bool:
        if not self.result_path.exists():
            return False
        try:
            return json.loads(self.result_path.read_text()).get("config_hash") == self.config.config_hash()
        except json.JSONDecodeError:
            return False


def plan(experiment: Experiment, preset: Preset, seeds: int, rows: list[str] | None, overrides: dict | None,
         results_dir: Path) -> list[RowPlan]:
    """Every (row, seed) with its config and budget; validates all of them before anything runs.
    `overrides` ({dotted path: value}, from --set / --corpus / --tasks) apply to every row."""
    overrides = overrides or {}
    if seeds < 1:
        raise UsageError("--seeds must be >= 1")
    selected = [experiment.row(name) for name in rows] if rows else list(experiment.rows)
    problems = conflicts(overrides, [row.changes for row in experiment.rows])
    if problems:
        raise UsageError(f"{experiment.id} cannot run: " + "; ".join(problems))
    reference = configure(experiment.base, preset, {}, overrides)
    directory = results_dir / experiment.id / directory_name(preset.name, overrides)
    plans = []
    for row in selected:
        config = configure(experiment.base, preset, dict(row.changes), overrides)
        try:
            config.validate()
        except UsageError as error:
            problems.append(f"row {row.name!r}: {error}")
            continue
        steps = steps_for(config, experiment.budget, reference)
        config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, max_steps=steps))
        for seed in range(seeds):
            plans.append(RowPlan(experiment, preset, row, seed, config, steps, directory))
    if problems:
        raise UsageError(f"{experiment.id} cannot run: " + "; ".join(problems))
    return plans


def prepare_data(plans: list[RowPlan]) -> None:
    """Build every distinct corpus / tokenizer / format once, before training: bad data stops here."""
    seen = set()
    for p in plans:
        key = json.dumps(dataclasses.asdict(p.config.data), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            module = PretrainingDataModule(p.config.data, seed=0)
            module.prepare_data()
            module.setup()
        for task in p.config.tasks:
            cached_task(task)


def build_module(config: RunConfig, vocab_size: int):
    encoder = config.encoder.replace(vocab_size=vocab_size)
    if config.objective == "rtd":
        return RTDModule(encoder, config.optim, config.rtd, config.data.masking.probability)
    return MLMModule(encoder, config.optim, nsp=config.data.has_nsp)


def pretrain(p: RowPlan, config: RunConfig, steps: int, work: Path, hardware: Hardware, extra_loggers=(), log=print):
    """Train `config` for `steps` optimizer steps, checkpointing into `work` and resuming from its newest
    loadable checkpoint; returns (module, data module, trainer). The row and each of its early points use it."""
    work.mkdir(parents=True, exist_ok=True)
    L.seed_everything(p.seed, workers=True, verbose=False)
    data = PretrainingDataModule(config.data, seed=p.seed, num_workers=hardware.num_workers)
    data.prepare_data()
    module = build_module(config, data.vocab_size)
    if hardware.compile:  # speed only: compiles each encoder's forward in place; weights and names unchanged
        for encoder in {id(m): m for m in module.modules() if isinstance(m, Encoder)}.values():
            encoder.compile()
    accumulation = config.gradient_accumulation
    eval_interval = max(1, steps // p.preset.eval_every) * accumulation
    checkpoint_every = max(1, steps // p.preset.checkpoints)
    # one CSV log per session: Lightning empties an existing log directory, and a resumed run must keep its curve
    session = len(list(work.glob("log-*")))
    loggers = [CSVLogger(str(work), name="", version=f"log-{session}"), *extra_loggers]
    checkpoints = work / "checkpoints"
    last = checkpoints / "last.ckpt"
    # the two newest periodic checkpoints (and last.ckpt): if the newest is damaged, the one before it resumes
    callbacks = [ModelCheckpoint(dirpath=str(checkpoints), every_n_train_steps=checkpoint_every, save_last=True,
                                 save_top_k=2, monitor="step", mode="max", enable_version_counter=False),
                 SaveFinalStep(last, checkpoint_every), SeedEachBatch(p.seed), StopOnRequest(last)]
    if config.early_points == "mid-run":
        callbacks.append(SaveEncoderAt(work, config.evaluate_at, steps))
    trainer = hardware.trainer(f"pretraining {p.row.name}" + (f" ({work.name})" if work != p.work_dir else ""),
                               max_steps=steps, val_check_interval=eval_interval, check_val_every_n_epoch=None,
                               accumulate_grad_batches=accumulation, gradient_clip_val=config.optim.gradient_clip,
                               logger=loggers, callbacks=callbacks, use_distributed_sampler=False,
                               log_every_n_steps=max(1, steps // 50), plugins=[AtomicCheckpointIO()])
    # every rank picks the same file; only rank 0 sets damaged ones aside
    resume = resumable_checkpoint(checkpoints, log, set_aside=is_global_zero()) if checkpoints.exists() else None
    # our own checkpoint, written by this runner: it holds the config dataclasses, so not weights-only
    with hardware.training(f"pretraining {p.row.name}"):
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=False)
    StopRequest.check()  # Ctrl-C / SIGTERM ended the fit (StopOnRequest): stop the row here
    return module, data, trainer


BORROWED = "borrowed-from.json"  # in a work directory copied from another table's row: which one


def borrow_pretraining(p: RowPlan, results_dir: Path, log=print) -> None:
    """Start a row whose pretraining another table has already finished (the same pretraining hash at this preset
    and seed: ELECTRA's efficiency row is the sharing table's 1/4-width generator) from a copy of that row's work
    directory instead of training it again: its final checkpoint, so the fit trains nothing, its curves, and any
    fine-tuning runs of the same configuration. Training is deterministic per seed (the text-encoding table's BPE
    row, the NSP table's FULL-SENTENCES configuration trained again, agreed with it to every digit shown), so the
    copy is what training here would write; the row names where its pretraining came from."""
    if p.work_dir.exists():
        return  # this row's own work, or an earlier copy, comes first
    for path in sorted(results_dir.glob(f"*/{p.preset.name}/rows/*__seed{p.seed}.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        donor = path.parent.parent / f"work/{p.work_dir.name}"
        if path == p.result_path or record.get("curves") != f"work/{p.work_dir.name}" or not donor.is_dir():
            continue
        staging = p.work_dir.with_name(p.work_dir.name + ".copying")  # renamed when whole: a kill leaves no half
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(donor, staging, ignore=shutil.ignore_patterns("*.lock", "*.copying"))
        write_json_atomically(staging / BORROWED, {key: record[key] for key in ("experiment", "row", "seed", "git_commit")})
        staging.rename(p.work_dir)
        log(f"  pretraining {p.row.name}: copied from {record['experiment']}/{record['row']} seed {p.seed}, "
            f"which trained the same pretraining configuration; not trained again")
        return


# Token-budget batches carry 98.5-99.2% of their planned padded tokens (measured on every format at smoke and
# small: batches are packed by length, one partial batch per epoch); a row far below that did not train its plan.
MIN_BUDGET_FILL = 0.9


def check_budget(module, planned_tokens: int, name: str) -> None:
    """A row never reports a budget it did not train (a damaged cache or a corpus too small for a batch)."""
    fill = module.padded_tokens_seen / planned_tokens
    if fill < MIN_BUDGET_FILL:
        raise UsageError(
            f"{name} trained on {module.padded_tokens_seen:,} padded tokens of its planned {planned_tokens:,} "
            f"({fill:.1%}): the training data gives too few tokens per batch; check the corpus (a damaged cache "
            f"under .cache/ can be deleted and is rebuilt) or lower data.tokens_per_batch. No result was written.")


def run_row(p: RowPlan, hardware: Hardware) -> dict:
    """Pretrain (resuming if interrupted), evaluate the encoder (held-out figures, word order, minimal pairs,
    linear probes, fine-tuning; experiments.evaluations), write the row JSON."""
    start, load = time.time(), LoadSampler().start()
    commit = git_commit()
    config, work = p.config, p.work_dir
    wandb_logger = tracking.logger_for(p)
    module, data, trainer = pretrain(p, config, p.steps, work, hardware, [wandb_logger] if wandb_logger else [])
    # training time summed over every session of a resumed row (data preparation, cached after the first, aside)
    seconds = {"pretraining": round(module.fit_seconds, 1)}
    check_budget(module, p.steps * config.tokens_per_step, p.name)
    tasks = task_data(config, data.load(), p.seed)
    precision = hardware.precision or default_precision()
    with hardware.training(f"evaluating {p.row.name}"):
        metrics = validated_metrics(module, data, trainer)
        evaluation = evaluate_pretrained(module, data, config, tasks, metrics, evaluation_device(hardware.accelerator),
                                         precision)
    metrics |= evaluation.metrics
    seconds |= evaluation.seconds
    encoder_config = module.discriminator_config() if config.objective == "rtd" else module.encoder.config

    def finished_run(task: str, k: int, at: str = "") -> Path:
        """Where a finished fine-tuning run is recorded (`at`: an early point's), so a stopped row reruns only
        the runs it had not finished; keyed by the row's config hash."""
        return work / f"finetune-{config.config_hash()[:12]}{at}" / f"{slug(task)}@ft{k}.json"

    def pretrain_early(early_config: RunConfig, early_steps: int, fraction: float) -> tuple[dict, dict[str, float]]:
        early_module, early_data, early_trainer = pretrain(p, early_config, early_steps, work / f"early-{fraction:g}",
                                                           hardware)
        check_budget(early_module, early_steps * config.tokens_per_step, f"{p.name} at {fraction:g}")
        return early_module.encoder_state(), learning_figures(early_module, early_data, early_trainer, early_config,
                                                              evaluation_device(hardware.accelerator))

    scores, seconds["fine-tuning"] = fine_tune_all(config, encoder_config, module.encoder_state(), tasks, p.seed,
                                                   hardware, finished_run)
    early, early_points = evaluate_early_points(config, encoder_config, tasks, p.seed, p.steps, work, hardware,
                                                precision, finished_run, pretrain_early)
    metrics |= scores | early
    result = {
        "experiment": p.experiment.id, "preset": p.preset.name, "row": p.row.name, "seed": p.seed,
        "config_hash": config.config_hash(), "config": config.to_dict(), "metrics": metrics,
        "steps": p.steps, "tokens_seen": module.tokens_seen, "padded_tokens": p.steps * config.tokens_per_step,
        "train_flops": budget_of(config, p.steps, "flops"), "budget_rule": p.experiment.budget,
        "early_points": early_points,
        "wall_time_s": round(time.time() - start, 1), "git_commit": commit,  # this session's (a resumed row's last)
        # the pretraining time of a resumed row's earlier sessions, up to the checkpoint it resumed from (0 if it
        # ran in one go): the row's whole time is the two summed (experiments.running.hardware.row_seconds)
        "resumed_pretraining_s": round(module.resumed_fit_seconds, 1),
        # the row of another table whose finished pretraining this one copied (runner.borrow_pretraining), or None
        "pretraining_borrowed_from": json.loads((work / BORROWED).read_text()) if (work / BORROWED).exists() else None,
        "load": load.stop(),  # this session's load average: above the CPU count, other work shared the machine
        # pretraining, each evaluation, and each fine-tuning run by task: what a row's time is spent on
        "seconds": seconds,
        "evaluations": evaluation.details,  # word order per layer, the minimal pairs and probes measured on
        "hardware": dataclasses.asdict(hardware) | {"precision": precision, "machine": machine_name(),
                                                    "machine_kind": machine_kind(precision)},
        "curves": str(work.relative_to(p.directory)),  # log-*/metrics.csv: the pretraining curves, per session
    }
    if trainer.is_global_zero:
        write_json_atomically(p.result_path, result)
    tracking.finish_row(wandb_logger, result)
    return result


def table_eta(finished: list[tuple[dict, float]], work_left: float) -> float | None:
    """The seconds the table's rows left will take: the finished rows' seconds per unit of planned work (rows differ
    in it), times the work left; None before a row has trained. Only rows that trained their pretraining count: a
    borrowed one (`borrow_pretraining`) trained no step, and a resumed one adds its earlier sessions' fit."""
    trained = [(r["wall_time_s"] + r.get("resumed_pretraining_s", 0.0), work) for r, work in finished
               if not r.get("pretraining_borrowed_from")]
    if not trained:
        return None
    return sum(seconds for seconds, _ in trained) / sum(work for _, work in trained) * work_left


def planned_work(p: RowPlan) -> float:
    """A row's training FLOPs with its own-schedule early points: what the table's ETA scales by, since the rows
    of a table differ in it (ELECTRA-Small's early points add 94% to its pretraining; equal-FLOPs steps)."""
    early = sum(p.config.evaluate_at) if p.config.early_points == "own-schedule" else 0.0
    return budget_of(p.config, p.steps, "flops") * (1.0 + early)


def run(experiment: Experiment, preset: Preset, seeds: int, rows: list[str] | None = None,
        overrides: dict | None = None, hardware: Hardware = Hardware(),
        results_dir: Path = DEFAULT_RESULTS, log=print) -> list[RowPlan]:
    """Train every row that is neither finished nor held by another sweep; returns the plans of the rows
    still running elsewhere (the table is built from whatever row files exist)."""
    plans = plan(experiment, preset, seeds, rows, overrides, results_dir)
    if hardware.keep_freed_memory:
        allocator.keep_freed_memory()
    prepare_data(plans)
    if overrides and plans and is_global_zero():
        save_overrides(plans[0].directory, overrides)
    StopRequest.install()
    elsewhere, finished = [], []  # finished: (row record, its planned work) for the ETA
    to_train = [p for p in plans if not p.is_done()]
    for p in plans:
        prefix = f"[{experiment.id}/{preset.name}] {p.row.name} seed {p.seed}"
        if p.is_done():
            log(f"{prefix}: done, skipped")
            continue
        row_lock, work_lock = Lock(p.result_path.with_suffix(".lock")), Lock(p.work_dir.with_name(p.work_dir.name + ".lock"))
        try:
            # only the first process locks: the other ranks of a multi-process run follow it into the same row
            if is_global_zero() and not (row_lock.acquire() and work_lock.acquire()):
                held = row_lock if not row_lock.held else work_lock
                log(f"{prefix}: being trained by another sweep ({held.describe()}), skipped")
                elsewhere.append(p)
                continue
            if p.is_done():  # finished by another sweep between the check above and the lock
                log(f"{prefix}: done, skipped")
                continue
            # before Lightning starts any other rank; under torchrun the ranks start together and each trains
            if int(os.environ.get("WORLD_SIZE", "1")) == 1:
                borrow_pretraining(p, results_dir, log)
            left = to_train[to_train.index(p):] if p in to_train else [p]
            eta = table_eta(finished, sum(map(planned_work, left)))
            eta = f", ETA for the table {minutes(eta)}" if eta is not None else ""
            log(f"{prefix}: {p.steps} steps, {p.steps * p.config.tokens_per_step:,} tokens "
                f"(row {len(to_train) - len(left) + 1} of {len(to_train)}{eta})")
            try:
                result = run_row(p, hardware)
            except SIGTERMException:  # Lightning's own SIGTERM handling (after StopOnRequest saved a checkpoint)
                raise Stopped(signal.SIGTERM) from None
            finished.append((result, planned_work(p)))
            log(f"{prefix}: finished in {result['wall_time_s']} s")
        finally:
            work_lock.release()
            row_lock.release()
    if elsewhere:
        log(f"[{experiment.id}/{preset.name}] still running elsewhere: "
            + ", ".join(f"{p.row.name} seed {p.seed}" for p in elsewhere)
            + "; the table below has the rows finished so far (`python -m experiments table` rebuilds it later)")
    return elsewhere
