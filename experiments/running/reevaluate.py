"""`python -m experiments reevaluate <experiment>`: finished rows get the tasks their config has gained since
they were trained (issue 47's pos and bigram_shift), from their saved pretrained encoder, without pretraining.

A row file is re-evaluated when its config is the current one but for tasks it lacks, or for the word-order
tasks' caps (`finetune.word_order_max_*`, then those tasks are evaluated again): its pretraining
checkpoint (`<results>/<experiment>/<preset>/work/pretrain-<pretraining hash>__seed<k>/checkpoints/last.ckpt`,
kept by the runner) is loaded, only those tasks are probed and fine-tuned (and at each early point of a
row that has them), and the row file is rewritten atomically with the metrics merged, the averages recomputed
over every task, the current config and config hash, and `"reevaluated": {"tasks", "git_commit", "seconds"}`.
A fine-tuning run finished before an interruption is not run again (the runner's records). A row whose config
differs in more than its tasks, or whose checkpoint is gone, is named and left as it is: it needs retraining.

A row also gets the held-out measures its module logs now but did not when it was trained (`HELDOUT_ADDED`, e.g.
ELECTRA 15%'s discriminator AUC at its masked positions), from one validation pass of the same checkpoint on
the same held-out blocks and generator samples; they are named under "heldout" in "reevaluated". A measure
the pass leaves undefined (an AUC where one class occurs) stays absent, and the row is not measured again.
"""
from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import torch

from datamodules.downstream import task_name
from datamodules.errors import UsageError
from experiments.running.durable import Lock, write_json_atomically
from experiments.evaluations import autocast_dtype, evaluation_device, probe_state, validated_metrics
from experiments.evaluations.early_points import early_point
from experiments.evaluations.finetuning import cached_task, fine_tune_all, task_averages, task_data
from experiments.evaluations.probes import FEATURES, probe_metrics
from experiments.running.trained import load_trained_row
from experiments.running.overrides import directory_name
from experiments.presets import Preset
from experiments.running.hardware import Hardware, default_precision
from experiments.running.runner import RowPlan, build_module, git_commit, plan, slug
from experiments.spec import Experiment


def _normalised(config: dict) -> dict:
    return json.loads(json.dumps(config, default=str))  # tuples as lists, as a row file stores them


# the fine-tuning fields that only the word-order tasks read: a row that differs in them gets those tasks again
WORD_ORDER_FIELDS = ("word_order_max_train_examples", "word_order_max_validation_examples")


def _without_word_order_caps(config: dict) -> dict:
    return config | {"finetune": {k: v for k, v in config.get("finetune", {}).items() if k not in WORD_ORDER_FIELDS}}


def tasks_to_evaluate(p: RowPlan, record: dict) -> tuple[list[str], str | None]:
    """(the tasks to evaluate: those the row lacks, and its word-order tasks if their caps changed, None), or
    ([], why it cannot be re-evaluated); ([], None) when it is current."""
    if record.get("config_hash") == p.config.config_hash():
        return [], None
    old = record.get("config", {})
    had = list(old.get("tasks", []))
    current = _normalised(p.config.to_dict() | {"tasks": had})
    if _without_word_order_caps(current) != _without_word_order_caps(old):
        fields = sorted(k for k in current.keys() | old.keys()
                        if _without_word_order_caps(current).get(k) != _without_word_order_caps(old).get(k))
        return [], f"its config differs in more than its tasks ({', '.join(fields)}): it needs training again"
    caps_changed = any(old.get("finetune", {}).get(f) != current["finetune"][f] for f in WORD_ORDER_FIELDS)
    redo = [t for t in p.config.tasks if t not in had or caps_changed and cached_task(t).spec.word_order]
    if not redo:
        return [], "its tasks are not a subset of the current ones: it needs training again"
    return redo, None


# held-out measures the modules log since some rows were trained, in groups, and the rows that log them: a
# finished row that lacks every measure of a group is measured again by one validation pass of its saved
# checkpoint. A group's measures other than its first may be undefined for a row (an AUC where one class occurs).
HELDOUT_ADDED = {
    ("replaced_fraction_masked", "disc_auc_masked"):
        lambda config: config.objective == "rtd" and config.rtd.variant == "electra-15",
}


def heldout_to_measure(p: RowPlan, record: dict) -> list[str]:
    """The held-out measures (HELDOUT_ADDED) of each group the row's module logs and its row file has none of."""
    metrics = record.get("metrics", {})
    return [m for group, logged in HELDOUT_ADDED.items()
            if logged(p.config) and not any(m in metrics for m in group) for m in group]


def _recomputed(metrics: dict[str, float], specs: dict, at: str = "") -> dict[str, float]:
    """The averages over every task of the row, at one early point (`at`, e.g. "@0.25") or of the row itself."""
    plain = {k[:len(k) - len(at)]: v for k, v in metrics.items() if k.endswith(at)} if at else metrics
    out = task_averages(plain, specs) | task_averages(plain, specs, "_probe")
    sentence_specs = {n: s for n, s in specs.items() if s.kind != "tokens"}
    for feature in FEATURES if not at else ():
        named = {f"{n}_probe": plain[f"{n}_probe_{feature}"] for n in sentence_specs if f"{n}_probe_{feature}" in plain}
        if (average := task_averages(named, sentence_specs, "_probe").get("probe_avg")) is not None:
            out[f"probe_avg_{feature}"] = average
    return {f"{k}{at}": v for k, v in out.items()}


def _early_encoder(p: RowPlan, fraction: float, vocab_size: int) -> dict:
    """The weights of an early point of the row, as the runner left them."""
    if p.config.early_points == "mid-run":
        return torch.load(p.work_dir / f"encoder_at_{fraction}.pt", weights_only=True)
    early_config, _ = early_point(p.config, fraction, p.steps)
    checkpoint = p.work_dir / f"early-{fraction:g}" / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        raise UsageError(f"{p.name}: the early point at {fraction:g} has no checkpoint ({checkpoint})")
    module = build_module(early_config, vocab_size)
    module.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    return module.encoder_state()


def _task_metrics(p: RowPlan, tasks_to_run: list[str], module, data, hardware: Hardware, precision: str) -> tuple:
    """(the probe and fine-tuning metrics of the row's saved encoder, and of its early points, on `tasks_to_run`,
    the fine-tuning seconds, the probes' details)."""
    config, rtd = p.config, p.config.objective == "rtd"
    only = dataclasses.replace(config, tasks=tuple(tasks_to_run))
    tasks = task_data(only, data.load(), p.seed)
    device = evaluation_device(hardware.accelerator)
    module.to(device).eval()
    probes, probe_details = probe_metrics(module.discriminator if rtd else module.encoder, tasks, True,
                                          autocast_dtype(precision))
    module.cpu()
    encoder_config = module.discriminator_config() if rtd else module.encoder.config

    def finished_run(task: str, k: int, at: str = "") -> Path:  # where experiments.running.runner.run_row records a run
        return p.work_dir / f"finetune-{config.config_hash()[:12]}{at}" / f"{slug(task)}@ft{k}.json"

    with hardware.training(f"re-evaluating {p.row.name}"):
        scores, seconds = fine_tune_all(only, encoder_config, module.encoder_state(), tasks, p.seed, hardware,
                                        finished_run)
        early = {}
        for fraction in config.evaluate_at:
            at = f"@{fraction:g}"
            state = _early_encoder(p, fraction, data.vocab_size)
            point = fine_tune_all(only, encoder_config, state, tasks, p.seed, hardware, partial(finished_run, at=at))[0]
            point |= probe_state(encoder_config, state, tasks, device, precision)
            early |= {f"{k}{at}": v for k, v in point.items() if not k.endswith("majority") and "@ft" not in k}
    return probes | scores | early, seconds, probe_details


def reevaluate_row(p: RowPlan, tasks_to_run: list[str], overrides: dict | None, results_dir: Path, hardware: Hardware,
                   log=print, heldout: list[str] = ()) -> dict:
    """Probe and fine-tune the row's saved encoder on `tasks_to_run`, and measure it on the held-out measures
    `heldout` (HELDOUT_ADDED) it lacks; rewrite its row file; return the new record."""
    started = time.time()
    record = json.loads(p.result_path.read_text())
    config = p.config
    _, module, data = load_trained_row(p.experiment, p.preset, p.row.name, p.seed, overrides, results_dir)
    precision = hardware.precision or default_precision()
    metrics, measured_heldout = record["metrics"], []
    if heldout:
        with hardware.training(f"measuring {p.row.name} on its held-out blocks"):
            trainer = hardware.trainer(f"held-out {p.row.name}", logger=False, enable_checkpointing=False)
            validated = validated_metrics(module, data, trainer)
        measured_heldout = [m for m in heldout if m in validated]
        metrics |= {m: validated[m] for m in measured_heldout}
    if tasks_to_run:
        measured, seconds, probe_details = _task_metrics(p, tasks_to_run, module, data, hardware, precision)
        specs = {task_name(t): cached_task(t).spec for t in config.tasks}
        metrics |= measured
        metrics |= _recomputed(metrics, specs)
        for fraction in config.evaluate_at:
            metrics |= _recomputed(metrics, specs, f"@{fraction:g}")
        record.setdefault("seconds", {}).setdefault("fine-tuning", {}).update(seconds)
        record.setdefault("evaluations", {}).setdefault("probes", {}).update(probe_details)
    record["metrics"] = metrics
    record["config"], record["config_hash"] = config.to_dict(), config.config_hash()
    earlier = record.get("reevaluated")
    record["reevaluated"] = {"tasks": tasks_to_run, "heldout": measured_heldout, "git_commit": git_commit(),
                             "seconds": round(time.time() - started, 1), "precision": precision} | ({"earlier": earlier} if earlier else {})
    write_json_atomically(p.result_path, record)
    return record


def reevaluate(experiment: Experiment, preset: Preset, results_dir: Path, rows: list[str] | None = None,
               overrides: dict | None = None, hardware: Hardware = Hardware(), log=print) -> Path:
    """Re-evaluate every finished row (of `rows`, default all) of the table that lacks tasks; returns the table's
    directory. Rows that are current, being trained, or that need training again are named and left alone."""
    directory = results_dir / experiment.id / directory_name(preset.name, overrides)
    records = {}
    for path in sorted((directory / "rows").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            log(f"{path}: not readable, skipped")
            continue
        if record.get("experiment") == experiment.id and (rows is None or record.get("row") in rows):
            records[(record["row"], int(record["seed"]))] = record
    if not records:
        log(f"[{experiment.id}/{preset.name}] no finished rows in {directory / 'rows'}")
        return directory
    names = list(dict.fromkeys(name for name, _ in records))
    seeds = max(seed for _, seed in records) + 1
    for p in plan(experiment, preset, seeds, names, overrides, results_dir):
        if (p.row.name, p.seed) not in records:
            continue
        prefix = f"[{experiment.id}/{preset.name}] {p.row.name} seed {p.seed}"
        tasks_to_run, problem = tasks_to_evaluate(p, records[(p.row.name, p.seed)])
        heldout = [] if problem else heldout_to_measure(p, records[(p.row.name, p.seed)])
        if problem or not (tasks_to_run or heldout):
            log(f"{prefix}: {problem or 'has every task and measure, skipped'}")
            continue
        lock = Lock(p.result_path.with_suffix(".lock"))
        if not lock.acquire():
            log(f"{prefix}: being trained by another sweep ({lock.describe()}), skipped")
            continue
        try:
            log(f"{prefix}: re-evaluating on {', '.join(tasks_to_run + heldout)}")
            result = reevaluate_row(p, tasks_to_run, overrides, results_dir, Hardware() if hardware is None else hardware,
                                    log, heldout)
            log(f"{prefix}: done in {result['reevaluated']['seconds']} s")
        except UsageError as error:
            log(f"{prefix}: {error}")
        finally:
            lock.release()
    return directory
