"""Tables rebuilt from the row JSONs: mean +- std over seeds, the paper's numbers beside them, each claim
checked on the measured numbers, plots, and one results/README.md over every table on disk.

Nothing here is typed by hand: a missing row shows as missing, and a claim with too few rows says so.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from datamodules.corpus import describe_corpus
from datamodules.downstream import OFFLINE, task_name
from experiments.running.durable import write_atomically
from experiments.evaluations.minimal_pairs import KINDS as PAIR_KINDS
from experiments.evaluations.finetuning import ORDER_AVERAGE, headline
from experiments.evaluations.probes import PROBE_FEATURE
from experiments.evaluations.word_order import LEARNED_ADJACENT_MULTIPLE, word_order_cell
from experiments.verdicts.claims import PROBE_AVERAGE
from experiments.verdicts.noise import Calibration, load_calibration, row_kind
from experiments.reporting.plots import draw
from experiments.verdicts.judging import (ELECTRA_REGIME_AUC, check_claim, detection_auc, early_points_in,
                                          failed_fine_tuning, learning_problems, values_at)
from experiments.running.hardware import (copied_pretraining_seconds, ran_alone, row_seconds, shared_machine,
                                          shared_pretraining_seconds)
from experiments.spec import DEPARTURES, Experiment, departures
from lightning_modules.base import describe


@dataclass
class RowSummary:
    name: str
    seeds: list[int]
    values: dict[str, list[float]]  # metric -> one value per seed (seed order)
    tokens_seen: list[int]
    padded_tokens: list[int]
    train_flops: list[float]
    row_seconds: list[float]  # each seed's whole time (earlier sessions in, another row's shared pretraining out)
    curves: list[Path]
    commits: set[str]
    steps: list[int] = field(default_factory=list)  # optimizer steps trained, per seed
    optim: dict = field(default_factory=dict)  # the optimiser settings it trained with (its config's `optim`)
    tasks: list[str] = field(default_factory=list)  # the downstream tasks it was fine-tuned on
    corpus: dict = field(default_factory=dict)  # the corpus it was pretrained on (its config's data.corpus)
    kind: str = "absolute-mlm"  # whose calibrated noise its claims use (experiments.verdicts.noise.KINDS)
    departures: dict = field(default_factory=dict)  # the departure switches it trained with (spec.departures)
    machines: set = field(default_factory=set)  # the machine kinds its seeds ran on (experiments.running.hardware.machine_kind)
    precisions: set = field(default_factory=set)  # the precisions its seeds trained in
    ran_alone: list[bool] = field(default_factory=list)  # per seed: its time is this machine's alone
    shared_seeds: int = 0  # seeds whose run shared the machine with other work (their time is not the machine's)
    unrecorded_load_seeds: int = 0  # seeds trained before rows recorded their load (whether they shared is unknown)
    unrecorded_resume_seeds: int = 0  # seeds resumed before rows recorded their earlier sessions' time (too short)
    copied_seconds: list[float] = field(default_factory=list)  # per seed: a copied pretraining's time (in its own)

    def machine_seconds(self) -> tuple[float, Counter]:
        """The row's time on its machine, as its table run alone spends it (a copied pretraining's time included):
        the mean of the seeds that ran alone, or of all seeds, with what makes it uncertain (seeds that shared the
        machine, have no load record, or lost an earlier session's time), when none did."""
        seconds = float(np.mean([self.row_seconds[i] for i in self._counted()]))
        copied = Counter({"copied another table's pretraining": int(self.copied_pretraining_seconds() > 0)})
        if any(self.ran_alone):
            return seconds, copied
        return seconds, copied + Counter({
            "shared the machine": self.shared_seeds, "without a load record": self.unrecorded_load_seeds,
            "resumed, earlier sessions' time not recorded": self.unrecorded_resume_seeds})

    def copied_pretraining_seconds(self) -> float:  # the part of that time `make ablations` spends in another table
        return float(np.mean([self.copied_seconds[i] for i in self._counted()]))

    def _counted(self) -> list[int]:  # the seeds a row's time is taken from: those that ran alone, else all
        return [i for i, ran in enumerate(self.ran_alone) if ran] or list(range(len(self.row_seconds)))

    def mean(self, metric: str) -> float:
        values = self.values.get(metric, [])
        return float(np.mean(values)) if values else math.nan

    def std(self, metric: str) -> float:
        values = self.values.get(metric, [])
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def load_rows(experiment: Experiment, directory: Path) -> dict[str, RowSummary]:
    found: dict[str, RowSummary] = {}
    table = [r for path in sorted((directory / "rows").glob("*.json")) if (r := json.loads(path.read_text()))
             and r.get("experiment") == experiment.id]
    for record in table:
        summary = found.setdefault(record["row"], RowSummary(record["row"], [], {}, [], [], [], [], [], set()))
        summary.seeds.append(record["seed"])
        for metric, value in record["metrics"].items():
            summary.values.setdefault(metric, []).append(float(value))
        summary.tokens_seen.append(record["tokens_seen"])
        summary.padded_tokens.append(record["padded_tokens"])
        summary.train_flops.append(record["train_flops"])
        summary.steps.append(record["steps"])
        summary.optim = record["config"]["optim"]
        summary.tasks = list(record["config"].get("tasks", []))
        summary.corpus = record["config"]["data"]["corpus"]
        summary.kind = row_kind(record["config"])
        summary.departures = departures(record["config"])
        summary.row_seconds.append(row_seconds(record) - shared_pretraining_seconds(record, table))
        summary.copied_seconds.append(copied_pretraining_seconds(record))
        # one pretraining log per session: a row resumed before it recorded its earlier sessions' time is too short
        lost_time = "resumed_pretraining_s" not in record and len(list((directory / record["curves"]).glob("log-*"))) > 1
        summary.unrecorded_resume_seeds += lost_time
        summary.ran_alone.append(ran_alone(record) and not lost_time)
        summary.shared_seeds += shared_machine(record.get("load"))
        summary.unrecorded_load_seeds += "load" not in record
        hardware = record.get("hardware", {})
        summary.machines.add(hardware.get("machine_kind") or "unknown machine")
        summary.precisions.add(hardware.get("precision") or "unknown precision")
        summary.curves.append(directory / record["curves"])
        summary.commits.add(_short(record["git_commit"]))
        later = record.get("reevaluated")
        while later:  # tasks evaluated later from its saved encoder, the latest first
            summary.commits.add(f"{_short(later['git_commit'])} (re-evaluated)")
            later = later.get("earlier")
    return {row.name: found[row.name] for row in experiment.rows if row.name in found}  # the paper's row order


def _short(commit: str) -> str:
    return commit[:8] + ("-dirty" if commit.endswith("-dirty") else "")


def _early_point_cell(values: dict[str, list[float]]) -> str:
    """What an early point had learned, from its metrics without the suffix: its word order, and an RTD
    point's discriminator AUC (`-` for a point that did not record them: a mid-run one, or an older file)."""
    cell = word_order_cell(values)
    if "disc_auc" in values:
        fixed = f" (bigram task {np.mean(values['disc_auc_bigram']):.3f})" if "disc_auc_bigram" in values else ""
        cell = f"AUC {np.mean(values['disc_auc']):.3f}{fixed}, word order {cell}"
    return cell


def table_metrics(experiment: Experiment, rows: dict[str, RowSummary]) -> list[str]:
    """The table's columns: its metrics, with one column per downstream task the rows actually ran (a task
    of the user's own gets its own column, before the average; a default task that was not run, none), then
    what every table shows of the frozen encoder: each task's linear probe, their average and the minimal
    pairs (for rows that measured them)."""
    ran = list(dict.fromkeys(task_name(spec) for s in rows.values() for spec in s.tasks))
    if not ran:
        return list(experiment.metrics)
    is_task = lambda metric: metric in OFFLINE or metric.startswith("glue-")  # noqa: E731
    kept = [m for m in experiment.metrics if not is_task(m) or m in ran]
    word_order = [t for t in ran if t in OFFLINE and OFFLINE[t].word_order]  # tasks a bag of words cannot pass
    extra = [t for t in ran if t not in kept and t not in word_order]
    at = kept.index("downstream_avg") if "downstream_avg" in kept else len(kept)
    measured = {m for s in rows.values() for m in s.values}
    # after the average of the tasks a bag of words passes: those it cannot, each by its headline score too
    order = [c for t in word_order for c in dict.fromkeys((t, headline(t, OFFLINE[t])))] + [ORDER_AVERAGE]
    columns = kept[:at + 1] + [c for c in order if c in measured] + kept[at + 1:]
    columns = columns[:at] + extra + columns[at:]
    frozen = [f"{headline(t, OFFLINE[t]) if t in OFFLINE else t}_probe" for t in ran] + [PROBE_AVERAGE, "order_probe_avg",
                                                                                          "minimal_pairs"]
    return columns + [m for m in frozen if m in measured and m not in columns]


def _cell(summary: RowSummary | None, metric: str) -> str:
    if summary is None or metric not in summary.values:
        return "-"
    mean, std = summary.mean(metric), summary.std(metric)
    several = len(summary.values[metric]) > 1
    if metric == "parameters":  # counts: whole numbers with separators
        return f"{mean:,.0f} +- {std:,.0f}" if several else f"{mean:,.0f}"
    if metric.endswith("_lr"):  # learning rates: scientific notation
        return f"{mean:.2e}"
    if metric.endswith("_rate"):  # rare events (unknown tokens): a percentage that keeps small values visible
        return f"{100 * mean:.4f}% +- {100 * std:.4f}%" if several else f"{100 * mean:.4f}%"
    digits = 3 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f} +- {std:.{digits}f}" if several else f"{mean:.{digits}f}"


def departures_used(rows: dict, order: list[str]) -> dict[str, list[str]]:
    """Each departure switch the rows turned on ("path=value") and the rows that did."""
    return {f"{path}={value}": [name for name in order if name in rows and rows[name].departures.get(path) == value]
            for s in rows.values() for path, value in s.departures.items()}


def regime_departures(rows: dict, order: list[str]) -> list[str]:
    """The departures that change how every row learns: they make every claim of the table the suite's proxy."""
    return sorted(d for d in departures_used(rows, order) if DEPARTURES[d.split("=")[0]])


def claim_source(claim, rows: dict, order: list[str]) -> str:
    """"paper" or "proxy", as the table and the board mark a claim."""
    return "proxy" if regime_departures(rows, order) else claim.source


def build_table(experiment: Experiment, preset: str, directory: Path) -> dict:
    """Write table.md / table.csv / table.json and the plots; return the table as data."""
    rows = load_rows(experiment, directory)
    order = [r.name for r in experiment.rows]
    metrics = table_metrics(experiment, rows)
    header = ["row", "seeds", "word order", *metrics, "steps", "tokens seen", "train FLOPs",
              *[f"paper {c}" for c in experiment.paper_columns]]
    table = []
    for row in experiment.rows:
        s = rows.get(row.name)
        cells = [row.name, str(len(s.seeds)) if s else "0", word_order_cell(s.values) if s else "-"]
        cells += [_cell(s, m) for m in metrics]
        cells += [f"{int(np.mean(s.steps)):,}" if s else "-", f"{int(np.mean(s.tokens_seen)):,}" if s else "-",
                  f"{np.mean(s.train_flops):.2e}" if s else "-"]
        cells += [f"{row.paper[c]:g}" if c in row.paper else "-" for c in experiment.paper_columns]
        table.append(cells)
    noise = load_calibration(preset)
    verdicts = [check_claim(c, rows, order, noise, experiment.paper_value) for c in experiment.checked_claims]
    used = departures_used(rows, order)
    unlearned = {name: problems for name, s in rows.items() if (problems := learning_problems(s.values))}
    # a fine-tuning run at its task's majority class, where the row learned (else that is what it is expected to
    # score): the claims on that task's score decide nothing from it
    failed = {name: found for name, s in rows.items()
              if name not in unlearned and (found := failed_fine_tuning(s.values, [task_name(t) for t in s.tasks]))}
    # an early point (ELECTRA Table 1's shorter runs) is a model of its own: whether it had learned, too
    points = {name: found for name, s in rows.items() if (found := early_points_in(s.values))}
    early = {name: {point: _early_point_cell(values_at(rows[name].values, point)) for point in found}
             for name, found in points.items()}
    unlearned |= {f"{name} at {point} of training": problems for name, found in points.items() for point in found
                  if (problems := learning_problems(values_at(rows[name].values, point)))}
    # a discriminator that learned to detect replacements, but not yet to ELECTRA's level
    early_training = {name + (f" ({auc[1].strip()})" if auc[1] else ""): round(auc[0], 3) for name, s in rows.items()
                      if name not in unlearned and (auc := detection_auc(s.values)) and auc[0] < ELECTRA_REGIME_AUC}
    optimisers: dict[str, list[str]] = {}  # one line per distinct setting, with the rows that used it
    for name in order:
        if name in rows and rows[name].optim:
            optimisers.setdefault(describe(rows[name].optim), []).append(name)
    majority = {k: float(np.mean(v)) for s in rows.values() for k, v in s.values.items() if k.endswith("_majority")}
    commits = sorted({c for s in rows.values() for c in s.commits})
    machines = sorted({m for s in rows.values() for m in s.machines})
    precisions = sorted({p for s in rows.values() for p in s.precisions})
    measured_on = sorted({n.machine for n in noise.kinds.values() if n.machine}) if isinstance(noise, Calibration) else []
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    plots = draw(experiment, rows, directory, metrics, majority, set(unlearned), preset,
                 [result.to_json() for result in verdicts])
    payload = {"experiment": experiment.id, "title": experiment.title, "paper": experiment.paper, "preset": preset,
               "built": stamp, "commits": commits, "machines": machines, "precisions": precisions,
               "noise_machine_note": (f"The noise was measured on {'; '.join(measured_on)}; these rows ran on "
                                      f"{', '.join(machines)}. Seed-to-seed noise can differ between machines and "
                                      f"precisions." if measured_on and machines and
                                      not all(any(m in n for n in measured_on) for m in machines) else ""),
               "header": header, "rows": table, "budget": experiment.budget,
               "claims": [result.to_json() | {"source": claim_source(result.claim, rows, order)} for result in verdicts],
               "departures": used,
               "majority_baselines": majority, "optimisers": optimisers, "plots": plots,
               "noise": noise.source, "did_not_learn": unlearned, "failed_fine_tuning": failed, "early_points": early,
               "design_limits": design_limits(rows),
               "early_training_discriminators": early_training,
               "minimal_pairs": {name: {kind: round(s.mean(f"minimal_pairs_{kind}"), 1) for kind in PAIR_KINDS
                                        if f"minimal_pairs_{kind}" in s.values}
                                 for name, s in rows.items() if "minimal_pairs" in s.values},
               "finetune_spread": {name: {m[:-len("_ft_range")]: round(s.mean(m), 2) for m in s.values
                                          if m.endswith("_ft_range")} for name, s in rows.items()
                                   if any(m.endswith("_ft_range") for m in s.values)},
               "corpus": sorted({describe_corpus(s.corpus) for s in rows.values()}),
               "overrides": json.loads((directory / "overrides.json").read_text())
               if (directory / "overrides.json").exists() else []}
    previous = directory / "table.json"
    if previous.exists():  # a table whose rows and verdicts did not change keeps its build time: no churn in its files
        earlier = json.loads(previous.read_text())
        if {**earlier, "built": stamp} == json.loads(json.dumps(payload)):
            payload["built"] = earlier["built"]
    directory.mkdir(parents=True, exist_ok=True)
    # each file whole or not at all: a sweep killed here, or a second sweep rebuilding beside it, corrupts nothing
    write_atomically(directory / "table.json", json.dumps(payload, indent=2).encode())
    table_csv = io.StringIO()
    csv.writer(table_csv).writerows([header, *table])
    write_atomically(directory / "table.csv", table_csv.getvalue().encode())
    write_atomically(directory / "table.md", render_markdown(experiment, payload).encode())
    return payload


# Fewer optimizer steps than this leave a model at this suite's presets short of learning word order (the `cpu`
# preset's rows first pass 3x on their most local head at a few hundred steps: docs/what-models-learn.md)
MIN_STEPS_TO_LEARN = 500


def design_limits(rows: dict[str, RowSummary]) -> list[str]:
    """What the table's design cannot show at this preset: a row whose budget (the table's rule: equal tokens or
    FLOPs) leaves it too few optimizer steps to learn, as the 32x batch at equal tokens does at `cpu`."""
    limits = []
    for name, summary in rows.items():
        steps = int(np.mean(summary.steps)) if summary.steps else None
        if steps is not None and steps < MIN_STEPS_TO_LEARN:
            limits.append(f"{name} trains {steps:,} optimizer steps here, too few at this scale to learn what the "
                          f"claims are about (fewer than {MIN_STEPS_TO_LEARN}); its claims count only if the word-order "
                          f"column says it learned.")
    return limits


def render_markdown(experiment: Experiment, payload: dict) -> str:
    out = io.StringIO()
    out.write(f"# {experiment.title}\n\n{experiment.paper}. Preset `{payload['preset']}`, built {payload['built']}, "
              f"commit {', '.join(payload['commits']) or '-'}, machine {', '.join(payload.get('machines', [])) or '-'}, "
              f"precision {', '.join(payload.get('precisions', [])) or '-'}. "
              f"Rows get equal training "
              f"{'FLOPs' if experiment.budget == 'flops' else 'tokens'}; values are mean +- std over seeds.\n\n")
    if payload.get("corpus"):
        out.write(f"Pretraining corpus: {'; '.join(payload['corpus'])}.\n\n")
    if payload.get("overrides"):
        out.write(f"Run with overrides (every row): {', '.join(f'`{o}`' for o in payload['overrides'])}.\n\n")
    if payload.get("departures"):
        out.write("Departures from the papers (docs/faithfulness.md): " + "; ".join(
            f"`{d}` ({'every row' if len(names) == len(payload['rows']) else ', '.join(names)})"
            for d, names in payload["departures"].items()) + ".\n\n")
    header = payload["header"]
    out.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for row in payload["rows"]:
        out.write("| " + " | ".join(row) + " |\n")
    if payload["majority_baselines"]:
        out.write("\nMajority-class baselines: " + ", ".join(
            f"{k.replace('_majority', '')} {v:.1f}" for k, v in sorted(payload["majority_baselines"].items())) + "\n")
    if payload.get("finetune_spread"):
        out.write("\nDownstream scores are the median of several fine-tuning runs per task; their spread (max - min): "
                  + "; ".join(f"{row}: " + ", ".join(f"{task} {spread:.1f}" for task, spread in tasks.items())
                              for row, tasks in payload["finetune_spread"].items()) + ".\n")
    if any(cell != "-" for cell in (row[header.index("word order")] for row in payload["rows"])):
        out.write(f"\nWord order: **learned** when some layer's most local attention head puts at least "
                  f"{LEARNED_ADJACENT_MULTIPLE:g}x the uniform share on the adjacent tokens (the figure shown) and the "
                  f"held-out MLM loss (an RTD row's generator's) is at most the midpoint between a unigram and a "
                  f"left-bigram count model of the training text. A row that has not (a **bag of words**, or one that "
                  f"**attends locally** but whose MLM loss has not followed) decides no claim.\n")
    if PROBE_AVERAGE in header:
        out.write(f"\nLinear probes (`<task>_probe`, `{PROBE_AVERAGE}`): logistic regression on the frozen encoder's "
                  f"features ({PROBE_FEATURE.replace('_', ' ')}), its regularisation chosen on a fifth of the training "
                  f"set, scored on the same dev sets as fine-tuning (the majority baselines above apply).\n")
    if payload.get("minimal_pairs"):
        out.write("\nMinimal pairs (x100, 50 = chance): the share of held-out sentences whose pseudo-log-likelihood "
                  "(PLL-word-l2r; an RTD row's from its generator, the part of it that predicts tokens) is above "
                  "their variant's, by kind (two adjacent words swapped; one word replaced by one as frequent): " + "; ".join(f"{row}: " + ", ".join(f"{kind} {share:.1f}" for kind, share in kinds.items())
                                                    for row, kinds in payload["minimal_pairs"].items()) + ".\n")
    if payload.get("early_points"):
        out.write("\nEarly points (the row at a fraction of its steps), what each had learned: " + "; ".join(
            f"{row} at " + ", ".join(f"{point}: {cell}" for point, cell in points.items())
            for row, points in payload["early_points"].items()) + ".\n")
    for limit in payload.get("design_limits", []):
        out.write(f"\n**Where this table's design does not carry to this preset**: {limit}\n")
    for name, problems in payload.get("did_not_learn", {}).items():
        out.write(f"\n**{name} decides no claim**: {'; '.join(problems)}.\n")
    for name, runs in payload.get("failed_fine_tuning", {}).items():
        out.write(f"\n**{name}'s fine-tuning failed**: {'; '.join(runs)}. A claim on that task's score, or on an "
                  f"average over it, decides nothing from this row; its other claims stand. A run can fail by chance "
                  f"where the encoder has what the task needs (docs/what-models-learn.md); the papers' median over "
                  f"several runs (`SET=finetune.seeds=3`) absorbs one.\n")
    if early_training := payload.get("early_training_discriminators"):
        aucs = ", ".join(f"{name} {auc:.3f}" for name, auc in early_training.items())
        out.write(f"\nReplaced-token detection is early in training: held-out AUC {aucs}, below the "
                  f"{ELECTRA_REGIME_AUC:g} this suite takes for ELECTRA's regime. These discriminators have learned to "
                  f"detect replacements, so their claims are checked, but read them as claims about early training "
                  f"(docs/what-models-learn.md).\n")
    column = payload["header"].index("disc_auc_bigram") if "disc_auc_bigram" in payload["header"] else None
    if column is not None and any(row[column] != "-" for row in payload["rows"]):  # rows measured since 2026-12-05
        out.write("\n`disc_auc` is each discriminator's AUC against its own generator's replacements, a task that is "
                  "easier where that generator is weaker; `disc_auc_bigram` is its AUC on one task for every row, the "
                  "held-out blocks with every masked position refilled by a left-bigram count model of the training "
                  "text.\n")
    if payload["claims"]:
        out.write("\n## The paper's claims, checked on these numbers\n\n"
                  "(paper): the paper states it; (proxy): the paper measured something else, or the rows train with a "
                  "departure that changes how they learn (named above), and this is the suite's stand-in for it. Each "
                  "effect is the mean paired difference over pretraining seeds with its 95% interval, its SD pooled "
                  "from the calibration and these seeds (docs/verdicts.md); **holds** / **does not hold** when the "
                  "whole interval is on one side of the claim's threshold (inside / outside its margin, for an "
                  "equivalence), else **inconclusive**, with the seeds that would decide it (noise for this preset: "
                  f"{payload.get('noise', '-')}).\n\n")
        if payload.get("noise_machine_note"):
            out.write(f"{payload['noise_machine_note']}\n\n")
        for claim in payload["claims"]:
            margin = f" Margin {claim['margin']:g}: {claim['margin_source']}." if claim.get("margin") else ""
            measures = f" Measures {claim['measures']}." if claim.get("measures") else ""
            out.write(f"- ({claim['source']}) {claim['claim']}: {claim['effect']}, **{claim['verdict']}**.{margin}{measures}\n")
    for line, names in payload["optimisers"].items():
        out.write(f"\nOptimiser ({', '.join(names)}): {line}.\n")
    if experiment.notes:
        out.write(f"\n{experiment.notes}\n")
    for name in payload["plots"]:
        out.write(f"\n![{name}]({name})\n")
    return out.getvalue()


def write_index(results_dir: Path, experiments: list[Experiment]) -> Path:
    """results/README.md: every table on disk with its verdicts and plots, date, commit and preset."""
    out = io.StringIO()
    out.write("# Results\n\nRebuilt from the tables on disk by `python -m experiments index` "
              "(and after every `make ablation-*`). Numbers are as measured; see each table for seeds.\n")
    for experiment in experiments:
        for table_path in sorted((results_dir / experiment.id).glob("*/table.json")):
            relative = table_path.parent.relative_to(results_dir)
            markdown = (table_path.parent / "table.md").read_text()
            markdown = markdown.replace("](", f"]({relative}/").replace("# ", "## ", 1)
            verdicts = [c["verdict"] for c in json.loads(table_path.read_text())["claims"]]
            counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("holds", "does not hold", "inconclusive"))
            out.write(f"\n---\n\n**{relative}**: {counts} (of {len(verdicts)} claims)\n\n{markdown}")
    path = results_dir / "README.md"
    write_atomically(path, out.getvalue().encode())
    return path
