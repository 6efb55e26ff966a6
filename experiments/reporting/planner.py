"""`python -m experiments plan <table>`: before a run, what a budget of hours can decide on this machine.

1. Times a few training steps of each of the table's rows here, in the precision a run would train in (or, with
   `--tflops`, prices them for a machine measured elsewhere by their training FLOPs), scaled by what a finished
   row's pretraining took per step on this kind of machine beyond its timed step; the rest of a row (held-out
   evaluations, probes, minimal pairs, fine-tuning) is priced as the share of the pretraining time it took in the
   table's own finished rows here, else in the calibration's rows; an ELECTRA-Small row's early points as the
   steps they pretrain.
2. Reads the preset's calibration (experiments.verdicts.noise) and prints, per claim, the pretraining seeds that would
   decide it at the paper's own effect and at the effect measured so far (if the table has rows here), at the
   edge of the 95% interval and at 80% power, with the hours those seeds take on this machine.
3. Prints what `--hours` decide, or what `--seeds` cost.

It says so plainly when the preset has no calibration: without measured noise no number of seeds can be named.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from experiments.verdicts.claims import paper_comparisons
from experiments.spec import Experiment
from experiments.running.hardware import row_seconds, shared_machine
from experiments.verdicts.noise import CALIBRATION_FILE, NEAREST_KIND, load_calibration, row_kind
from experiments.verdicts.judging import POWER, Spread, seeds_to_decide

TIMED_STEPS, WARMUP_STEPS = 3, 2  # steps timed per row, after steps that warm the allocator and caches up


@dataclass
class RowCost:
    name: str
    kind: str
    step_s: float  # one optimizer step, measured here (or priced from --tflops)
    steps: int
    overhead: float  # the rest of the row as a share of its pretraining time (calibration), or None

    @property
    def seconds(self) -> float:
        """One seed of the row: pretraining and everything after it."""
        return self.step_s * self.steps * (1.0 + (self.overhead or 0.0))


class _StepClock(L.Callback):
    """Wall time of each training batch after the first WARMUP_STEPS."""

    def __init__(self):
        self.times, self._started = [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= WARMUP_STEPS:
            self.times.append(time.perf_counter() - self._started)


def time_steps(p, precision: str) -> float:
    """Median seconds of an optimizer step of row plan `p` on this machine, under `precision`: one real batch of
    the row, stepped on repeatedly (the first steps of every new batch shape build kernels, which a whole run
    amortises over its steps)."""
    from datamodules.pretraining import PretrainingDataModule
    from experiments.running.runner import build_module

    L.seed_everything(0, verbose=False)
    data = PretrainingDataModule(p.config.data, seed=0)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = build_module(p.config, data.vocab_size)
    clock = _StepClock()
    steps = WARMUP_STEPS + TIMED_STEPS
    trainer = L.Trainer(accelerator="auto", devices=1, precision=precision, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=p.config.optim.gradient_clip,
                        callbacks=[clock])
    repeated = torch.utils.data.DataLoader([batch] * steps, batch_size=None)
    trainer.fit(module, train_dataloaders=repeated)
    return statistics.median(clock.times) * p.config.gradient_accumulation


def finished_step_s(p, kind: str) -> float | None:
    """Pretraining seconds per optimizer step of the row's finished run, if it ran on this kind of machine, alone,
    with the current config; None otherwise."""
    if not p.result_path.exists():
        return None
    record = json.loads(p.result_path.read_text())
    pretraining = record.get("seconds", {}).get("pretraining")
    if (record.get("config_hash") != p.config.config_hash() or not pretraining or record["config"].get("evaluate_at")
            or record.get("hardware", {}).get("machine_kind") != kind or shared_machine(record.get("load"))):
        return None
    return pretraining / record["steps"]


def measured_overheads(directory: Path) -> dict[str, float]:
    """Per kind of row: what the rest of a row (evaluations, fine-tuning) cost as a share of its pretraining, in
    the finished rows of `directory` (a table's results at one preset; rows with early points left out, whose
    time holds their points' pretraining too). These rows ran the current tasks, which the calibration's may not."""
    shares: dict[str, list[float]] = {}
    for path in sorted((directory / "rows").glob("*.json")):
        record = json.loads(path.read_text())
        pretraining = record.get("seconds", {}).get("pretraining")
        if pretraining and not record["config"].get("evaluate_at") and not shared_machine(record.get("load")):
            shares.setdefault(row_kind(record["config"]), []).append((row_seconds(record) - pretraining) / pretraining)
    return {kind: float(np.mean(values)) for kind, values in shares.items()}


def overheads(preset: str, path: Path = CALIBRATION_FILE) -> dict[str, float]:
    """Per kind of row: what the rest of a row cost as a share of its pretraining, in the calibration's rows."""
    entry = (json.loads(path.read_text()) if path.exists() else {}).get(preset) or {}
    found = {}
    for kind, figures in (entry.get("kinds") or {}).items():
        pretraining, rows = figures.get("seconds", {}).get("pretraining"), figures.get("row_seconds")
        if pretraining and rows:
            found[{"rtd": "electra-rtd"}.get(kind, kind)] = (float(np.mean(rows)) - float(np.mean(pretraining))) / float(np.mean(pretraining))
    return found


def plan_table(experiment: Experiment, preset, hours: float | None, seeds: int | None, tflops: float | None,
               results_dir: Path, calibration_path: Path = CALIBRATION_FILE, log=print) -> dict:
    """Print the plan and return it as data (rows' costs, claims' seeds)."""
    from experiments.reporting.tables import load_rows
    from experiments.verdicts.judging import check_claim
    from experiments.running.hardware import default_precision, machine_kind, machine_name
    from experiments.running.runner import plan
    from experiments.spec import DEPARTURES, budget_of, departures

    plans = plan(experiment, preset, 1, None, None, results_dir)
    precision = default_precision()
    # the rest of a row, priced from this table's finished rows where it has some, else from the calibration's
    shares = overheads(preset.name, calibration_path) | measured_overheads(results_dir / experiment.id / preset.name)
    where = (f"a machine at {tflops:g} TFLOP/s of training (--tflops)" if tflops else
             f"this machine ({machine_name()}, {machine_kind(precision)})")
    log(f"{experiment.id} at {preset.name} on {where}")
    costs, ratios = [], []
    for p in plans:
        kind = row_kind(p.config.to_dict())
        if tflops:
            step_s = budget_of(p.config, 1, "flops") / (tflops * 1e12)
        else:
            step_s = time_steps(p, precision)
            if (finished := finished_step_s(p, machine_kind(precision))) is not None:
                ratios.append(finished / step_s)
        share = shares.get(kind, shares.get(NEAREST_KIND.get(kind, "")))
        early = sum(p.config.evaluate_at) if p.config.early_points == "own-schedule" else 0.0
        # the early points are shorter runs of their own, each evaluated as the row is
        costs.append(RowCost(p.row.name, kind, step_s, round(p.steps * (1 + early)), share))
    # a run's pretraining is more than its steps (held-out evaluations, checkpoints, logging): priced by the
    # ratio of a finished row's pretraining seconds per step to the same row's timed step, on this kind of machine
    pretraining_factor = float(np.mean(ratios)) if ratios else 1.0
    for c in costs:
        c.step_s *= pretraining_factor
    table_s = sum(c.seconds for c in costs)
    log(f"  {'row':28} {'kind':18} {'step':>8} {'steps':>6} {'one seed':>10}")
    for c in costs:
        rest = "" if c.overhead is not None else "  (pretraining only: no calibrated cost for the rest)"
        log(f"  {c.name:28} {c.kind:18} {c.step_s * 1000:6.0f}ms {c.steps:6d} {c.seconds / 60:8.1f} min{rest}")
    log(f"  the table, one seed: {table_s / 3600:.2f} h")
    if tflops:
        log("  (the rest of a row, evaluations and fine-tuning, is priced at the share of its pretraining it takes here: "
            "not measured on that machine)")
    elif ratios:
        log(f"  (a step here is priced at {pretraining_factor:.2f}x its timed step: the pretraining seconds per step of "
            f"{len(ratios)} finished row{'s' * (len(ratios) != 1)} of this table on this kind of machine, with their "
            f"held-out evaluations and checkpoints)")
    else:
        log("  (timed steps only: the held-out evaluations and checkpoints during pretraining are not counted until "
            "a row of this table finishes on this kind of machine)")
    # a departure that changes how every row learns makes every claim the suite's proxy, as the table will mark it
    regime = sorted({path for p in plans for path in departures(p.config.to_dict()) if DEPARTURES[path]})
    if regime:
        log(f"  every row trains with {', '.join(regime)} (docs/faithfulness.md): every claim is the suite's proxy")

    calibration = load_calibration(preset.name, calibration_path)
    if not calibration.kinds:
        log(f"\n`{preset.name}` has no calibration, so no claim's seeds can be named: run `make calibrate "
            f"PRESET={preset.name}` (the noise of each kind of row), then plan again.")
        return {"rows": [c.__dict__ for c in costs], "table_hours_per_seed": table_s / 3600, "claims": []}
    measured = load_rows(experiment, results_dir / experiment.id / preset.name)
    order = [r.name for r in experiment.rows]
    cost_of = {c.name: c.seconds for c in costs}
    claims = []
    log(f"\nSeeds that would decide each claim (the 95% interval excludes its threshold; {POWER:.0%} power), each "
        f"against the calibrated noise of its rows' kind:")
    for claim in experiment.checked_claims:
        rows_read = claim.read_rows(order)
        kinds = {costs[order.index(r)].kind for r in rows_read}
        noise = calibration.for_kinds(kinds)
        paper = _seeds_at_paper(claim, experiment, order, noise)
        found = check_claim(claim, measured, order, noise, experiment.paper_value) if measured else None
        at_measured = _slowest([j.seeds_measured for j in found.judgements]) if found and found.judgements else None
        hours_per_seed = sum(cost_of[r] for r in rows_read) / 3600
        source = "proxy" if regime else claim.source
        claims.append({"claim": claim.text, "source": source, "paper": paper, "measured": at_measured,
                       "hours_per_seed": hours_per_seed, "borrowed": noise.borrowed})
        log(f"- ({source}) {claim.text}")
        if claim.source == "paper" or paper is not None:  # a proxy's scale is the suite's: the paper has no figure
            log(f"    at the paper's effect: {_say(paper, hours_per_seed)}")
        if found is not None and found.verdict == "not measured":
            log(f"    at the measured effect: not measured yet ({found.note})")
        elif found is not None:
            log(f"    at the measured effect ({found.verdict} now): {_say(at_measured, hours_per_seed)}")
        if noise.borrowed:
            log(f"    noise {noise.borrowed}")
    affordable = math.floor(hours * 3600 / table_s) if hours else seeds
    if affordable is not None:
        budget = f"{hours:g} h give {affordable} seed{'s' * (affordable != 1)} of the whole table" if hours else \
            f"{seeds} seeds of the whole table take {seeds * table_s / 3600:.1f} h"
        decided = [c for c in claims if c["paper"] and c["paper"][1] and c["paper"][1] <= affordable]
        edge = [c for c in claims if c["paper"] and c["paper"][0] and c["paper"][0] <= affordable]
        log(f"\n{budget}: at the paper's effects, {len(decided)} of {len(claims)} claims at {POWER:.0%} power and "
            f"{len(edge)} at the interval's edge (a real effect of the paper's size is then decided about half the time)")
        for c in decided:
            log(f"  - {c['claim']}")
    return {"rows": [c.__dict__ for c in costs], "table_hours_per_seed": table_s / 3600, "claims": claims,
            "affordable_seeds": affordable}


def _seeds_at_paper(claim, experiment: Experiment, order: list[str], noise) -> tuple[int | None, int | None] | None:
    """The seeds that decide the claim if its effect is the paper's own, each comparison against the calibrated SD
    of its quantity (its degrees of freedom growing with the seeds); None where the paper reports no figure on the
    claim's scale or the noise is not calibrated. A claim of several comparisons needs them all decided."""
    pairs = []
    for comparison in paper_comparisons(claim, experiment.paper_value, order):
        calibrated = noise.sd(comparison.quantity)
        if comparison.paper is None or calibrated is None:
            return None
        found = Spread(calibrated[0], calibrated[1], calibrated[1], noise.source)
        pairs.append(seeds_to_decide(comparison, comparison.paper, found))
    return _slowest(pairs)


def _slowest(pairs: list[tuple[int | None, int | None]]) -> tuple[int | None, int | None] | None:
    if not pairs:
        return None
    edge = [p[0] for p in pairs]
    power = [p[1] for p in pairs]
    return (None if None in edge else max(edge), None if None in power else max(power))


def _say(pair: tuple[int | None, int | None] | None, hours_per_seed: float) -> str:
    if pair is None:
        return "no figure on this scale (the paper reports none, or the noise of its quantity is not calibrated)"
    edge, power = pair
    if edge is None:
        return "more than 1,000 seeds: no budget decides it"
    power_text = (f"{power} seeds ({power * hours_per_seed:.1f} h) for {POWER:.0%} power" if power is not None
                  else f"more than 1,000 seeds for {POWER:.0%} power")
    return f"{edge} seeds ({edge * hours_per_seed:.1f} h of its rows) at the interval's edge, {power_text}"
