"""A claim's verdict from measured noise: holds / does not hold / inconclusive, never from a mean alone.

One rule for a claim's noise (docs/verdicts.md): each comparison of a claim (experiments.claims) has one value
per pretraining seed, the quantity it compares (a difference of two rows, a gap within a row, a gap of gaps).
Its SD is pooled from two measurements of that same quantity's seed-to-seed spread, with their degrees of
freedom summed: the preset's calibration (`experiments/calibration.json`, `make calibrate`: rows trained with
several seeds, per kind of row) and the table's own seeds (n - 1 degrees of freedom). The 95% interval of the
mean is mean +- t(0.975, df) * SD / sqrt(n). The claim holds when the whole interval is on its side of the
threshold (within the margin, for an equivalence), does not hold when it is wholly on the other side, and is
inconclusive otherwise; every verdict says which effects the interval rules out, and an undecided one how many
seeds would decide it, at the measured effect and at the paper's.

Rows differ in how much they vary between pretraining seeds, so the calibration is per kind of row (`KINDS`). A
claim is judged against the noise of its rows' kinds (the larger, per quantity); a kind not calibrated borrows
the nearest calibrated kind's noise, and the verdict says so. A smoke run never decides anything, and a row that
did not learn, or learned no word order, decides nothing.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from experiments.claims import Comparison, Quantity

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
MAX_SEEDS = 1000  # "more than 1,000 seeds" says all there is to say about an effect that small
POWER = 0.8  # the chance of deciding a real effect of the given size that the second seed count aims for
MIN_DISCRIMINATOR_AUC = 0.6  # a discriminator at or below this has not learned to detect replacements
# ...and below this one it has, but is early in training: the level this suite takes for ELECTRA's regime
# (issue 23); said under the table, not a reason to decide nothing
ELECTRA_REGIME_AUC = 0.8

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

# The kinds of row whose seed-to-seed noise is calibrated separately, each by one row (CALIBRATION_ROWS below).
KINDS = {"absolute-mlm": "absolute-position MLM rows", "disentangled-mlm": "disentangled-attention MLM rows",
         "electra-rtd": "ELECTRA-style RTD rows", "debertav3-rtd": "DeBERTaV3-style RTD rows"}
# A kind not calibrated borrows the noise of the nearest one (same objective, the other attention), marked so.
NEAREST_KIND = {"absolute-mlm": "disentangled-mlm", "disentangled-mlm": "absolute-mlm",
                "electra-rtd": "debertav3-rtd", "debertav3-rtd": "electra-rtd"}
LEGACY_KINDS = {"rtd": "electra-rtd"}  # calibration files written before the two RTD kinds were told apart


def row_kind(config: dict) -> str:
    """A row's kind from its config (as a row file stores it): by objective, then by attention."""
    disentangled = config.get("encoder", {}).get("attention") == "disentangled"
    if config.get("objective") == "rtd":
        return "debertav3-rtd" if disentangled else "electra-rtd"
    return "disentangled-mlm" if disentangled else "absolute-mlm"


def t_quantile(probability: float, degrees: int) -> float:
    return float(stats.t.ppf(probability, degrees))


def _base_metric(metric: str) -> str:
    """downstream_avg@0.25 is calibrated as downstream_avg."""
    return metric.split("@")[0]


@dataclass(frozen=True)
class Noise:
    """The calibrated seed-to-seed noise of one kind of row (or of a claim's kinds) at one preset."""

    preset: str
    paired_sd: dict[str, float]  # metric -> SD of the difference between two pretraining seeds of one row
    source: str  # e.g. "calibration 2026-11-27 of absolute-position MLM rows"
    degrees: dict[str, int] = field(default_factory=dict)  # metric -> degrees of freedom of its SD
    # metric -> its value per calibration seed: the SD of a derived quantity (a gap between two metrics) from them
    seed_values: dict[str, list[float]] = field(default_factory=dict)
    machine: str = ""  # where it was measured: the machine kind and precision (experiments.runner.machine_kind)
    borrowed: str = ""  # the claim's kinds that were not calibrated and borrowed this noise

    @property
    def never_decides(self) -> bool:
        return self.preset == "smoke"

    def for_kinds(self, kinds: set[str]) -> "Noise":
        """A figure given for every kind (a test's, or one the caller chose) applies to any claim."""
        return self

    def sd(self, quantity: Quantity) -> tuple[float, int] | None:
        """(SD, degrees of freedom) of `quantity`'s per-seed values, as calibrated; None if not calibrated."""
        if not quantity.minus:  # a difference between two rows' values of one metric
            metric = _base_metric(quantity.metric)
            if metric not in self.paired_sd:
                return None
            sd = self.paired_sd[metric] / (1.0 if quantity.rows == 2 else math.sqrt(2.0))
            return sd, self.degrees.get(metric, MAX_SEEDS)
        columns = [quantity.metric, quantity.minus]
        columns += [f"{m}@init" for m in columns] if quantity.from_init else []
        if not all(len(self.seed_values.get(m, [])) >= 2 for m in columns):
            return None
        values = [np.asarray(self.seed_values[m], float) for m in columns]
        gaps = values[0] - values[1] - ((values[2] - values[3]) if quantity.from_init else 0.0)
        sd = float(np.std(gaps, ddof=1)) * (math.sqrt(2.0) if quantity.rows == 2 else 1.0)
        return sd, len(gaps) - 1


@dataclass(frozen=True)
class Calibration:
    """A preset's calibrated noise, one Noise per kind of row (a kind not calibrated is absent)."""

    preset: str
    kinds: dict[str, Noise]

    @property
    def never_decides(self) -> bool:
        return self.preset == "smoke"

    @property
    def source(self) -> str:
        if not self.kinds:
            return "not calibrated"
        return "; ".join(f"{KINDS[kind]}: {noise.source}" for kind, noise in self.kinds.items())

    def for_kinds(self, kinds: set[str]) -> Noise:
        """The noise of a claim whose rows are of `kinds`: each kind's own, or the nearest calibrated kind's
        (borrowed, and marked); per metric the largest SD, with its degrees of freedom."""
        figures, borrowed = [], []
        for kind in sorted(kinds):
            if kind in self.kinds:
                figures.append(self.kinds[kind])
            elif NEAREST_KIND.get(kind) in self.kinds:
                figures.append(self.kinds[NEAREST_KIND[kind]])
                borrowed.append(f"{KINDS.get(kind, kind)} not calibrated: borrowed from {KINDS[NEAREST_KIND[kind]]}")
        what = " and ".join(KINDS.get(kind, kind) for kind in sorted(kinds)) or "no rows"
        if not figures:
            return Noise(self.preset, {}, f"not calibrated for {what}")
        paired_sd, degrees = {}, {}
        for metric in set.intersection(*(set(noise.paired_sd) for noise in figures)):
            widest = max(figures, key=lambda noise: noise.paired_sd[metric])
            paired_sd[metric] = widest.paired_sd[metric]
            if metric in widest.degrees:
                degrees[metric] = widest.degrees[metric]
        # seed values of one kind only: a derived quantity's SD cannot be pooled across kinds from them
        seed_values = figures[0].seed_values if len({id(f) for f in figures}) == 1 else {}
        sources = sorted({noise.source for noise in figures})
        return Noise(self.preset, paired_sd, ", ".join(sources) + (" (the larger)" if len(figures) > 1 else ""),
                     degrees, seed_values, ", ".join(sorted({f.machine for f in figures if f.machine})),
                     "; ".join(borrowed))


def load_calibration(preset: str, path: Path = CALIBRATION_FILE) -> Calibration:
    """The preset's entry of calibration.json: `{"kinds": {kind: {...}}}`, or the older single entry (one
    paired SD pooled over its `rows`), which is read as the noise of each kind those rows are."""
    entry = (json.loads(path.read_text()) if path.exists() else {}).get(preset) or {}
    if "kinds" in entry:
        kinds = {LEGACY_KINDS.get(kind, kind): _noise(preset, LEGACY_KINDS.get(kind, kind), figures)
                 for kind, figures in entry["kinds"].items()}
    else:
        rows = entry.get("rows", [])
        kinds = {kind: _noise(preset, kind, entry) for kind, (experiment, row) in CALIBRATION_ROWS.items()
                 if f"{experiment}/{row}" in rows}
    return Calibration(preset, {kind: noise for kind, noise in kinds.items() if noise.paired_sd})


def _noise(preset: str, kind: str, figures: dict) -> Noise:
    machine = figures.get("machine_kind") or figures.get("hardware", "")
    return Noise(preset, dict(figures.get("paired_sd") or {}),
                 f"calibration {figures.get('date', '?')} of {KINDS.get(kind, kind)}",
                 dict(figures.get("degrees_of_freedom", {})), dict(figures.get("seed_values", {})), machine)


# ------------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True)
class Spread:
    """The SD a comparison is judged with, its degrees of freedom and where they came from."""

    sd: float
    degrees: int
    calibrated_degrees: int  # the calibration's share of `degrees` (0: the table's own seeds alone)
    source: str


def spread(comparison: Comparison, noise: Noise) -> Spread | None:
    """The calibration's SD of the comparison's quantity pooled with the table's own seeds' SD of it, degrees of
    freedom summed; either alone where the other is missing; None with neither (one seed, nothing calibrated)."""
    n = len(comparison.values)
    calibrated = noise.sd(comparison.quantity)
    own = (float(np.std(comparison.values, ddof=1)), n - 1) if n >= 2 else None
    borrowed = f"; {noise.borrowed}" if noise.borrowed else ""
    if calibrated and own:
        (sd_c, df_c), (sd_t, df_t) = calibrated, own
        pooled = math.sqrt((df_c * sd_c ** 2 + df_t * sd_t ** 2) / (df_c + df_t))
        return Spread(pooled, df_c + df_t, df_c, f"{noise.source} ({df_c} df) pooled with the {n} seeds ({df_t} df){borrowed}")
    if calibrated:
        return Spread(calibrated[0], calibrated[1], calibrated[1], f"{noise.source} ({calibrated[1]} df){borrowed}")
    if own:
        return Spread(own[0], own[1], 0, f"the {n} seeds ({own[1]} df)")
    return None


def seeds_needed(distance: float, found: Spread, power: float | None = None) -> int | None:
    """The fewest pretraining seeds at which an effect `distance` from the claim's threshold (or inside its
    margin) would be decided: the 95% interval's half-width, t(0.975, df) * SD / sqrt(n), just below it, or with
    `power` (0.8) that chance of deciding it (t(0.975, df) + t(power, df) in place of t). The degrees of freedom
    grow with the seeds: the calibration's plus n - 1. None beyond MAX_SEEDS, or at a zero distance."""
    if distance <= 0 or found.sd <= 0:
        return None if distance <= 0 else 1
    for n in range(1, MAX_SEEDS + 1):
        degrees = found.calibrated_degrees + n - 1
        if degrees < 1:
            continue
        quantile = t_quantile(0.975, degrees) + (t_quantile(power, degrees) if power else 0.0)
        if quantile * found.sd / math.sqrt(n) <= distance:
            return n
    return None


def _distance(comparison: Comparison, effect: float) -> float:
    """How far an effect is from deciding the claim either way: from its threshold, or inside its margin."""
    if comparison.within is not None:
        return comparison.within - abs(effect) if abs(effect) < comparison.within else abs(effect) - comparison.within
    return abs(effect - comparison.threshold)


def seeds_to_decide(comparison: Comparison, effect: float, found: Spread) -> tuple[int | None, int | None]:
    """The seeds that would decide the comparison if its true effect were `effect`: (at the 95% interval's edge,
    at 80% power)."""
    distance = _distance(comparison, effect)
    return seeds_needed(distance, found), seeds_needed(distance, found, POWER)


@dataclass(frozen=True)
class Judgement:
    """One comparison's verdict with everything it rests on."""

    comparison: Comparison
    verdict: str
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    spread: Spread | None = None
    # seeds that would decide it: (interval just excludes, 80% power), at the measured and at the paper's effect
    seeds_measured: tuple[int | None, int | None] = (None, None)
    seeds_paper: tuple[int | None, int | None] = (None, None)
    why: str = ""  # why there is no interval, when there is none

    @property
    def n(self) -> int:
        return len(self.comparison.values)

    @property
    def rules_out(self) -> str:
        """The effects the 95% interval excludes, said as a sentence (empty without an interval)."""
        if self.low is None:
            return ""
        return f"rules out {self.comparison.label} below {self.low:+.2f} or above {self.high:+.2f}"

    def text(self) -> str:
        c, seeds = self.comparison, f"{self.n} seed{'s' * (self.n != 1)}"
        if self.mean is None:
            return f"{c.label}: no seed in common"
        if self.low is None:
            return f"{c.label}: {self.mean:+.2f} over {seeds}, no interval: {self.why}"
        out = (f"{c.label}: {self.mean:+.2f}, 95% interval [{self.low:+.2f}, {self.high:+.2f}], {seeds}, SD "
               f"{self.spread.sd:.3g} from {self.spread.source}; {self.rules_out}")
        if self.verdict == INCONCLUSIVE:
            out += "; " + self.settle_text()
        return out

    def settle_text(self) -> str:
        def count(pair: tuple[int | None, int | None]) -> str:
            return (f"{pair[0]} seeds ({pair[1]} for {POWER:.0%} power)" if pair[1] is not None
                    else f"{pair[0]} seeds (more than {MAX_SEEDS:,} for {POWER:.0%} power)" if pair[0] is not None
                    else f"more than {MAX_SEEDS:,} seeds")
        out = f"deciding it takes about {count(self.seeds_measured)} at the measured {self.mean:+.2f}"
        if self.comparison.paper is not None:
            out += f", {count(self.seeds_paper)} at the paper's {self.comparison.paper:+.2f}"
        return out


def judge(comparison: Comparison, noise: Noise) -> Judgement:
    """The comparison's 95% interval (experiments.verdicts' one rule) and its verdict."""
    values = comparison.values
    if len(values) == 0:
        return Judgement(comparison, INCONCLUSIVE)
    mean = float(np.mean(values))
    found = spread(comparison, noise)
    if found is None:
        what = (f"{noise.preset} is {noise.source}" if not noise.paired_sd else
                f"{_base_metric(comparison.quantity.metric)}{' - ' + comparison.quantity.minus if comparison.quantity.minus else ''} "
                f"has no calibrated noise at {noise.preset} ({noise.source})")
        return Judgement(comparison, INCONCLUSIVE, mean, why=f"one seed and {what} (`make calibrate "
                                                              f"PRESET={noise.preset}`, or SEEDS=2 or more)")
    half = t_quantile(0.975, found.degrees) * found.sd / math.sqrt(len(values))
    low, high = mean - half, mean + half
    if comparison.within is not None:
        m = comparison.within
        verdict = HOLDS if -m <= low and high <= m else FAILS if low > m or high < -m else INCONCLUSIVE
    else:
        # strictly above: an effect sitting on its threshold with no spread (a gap nothing changed) is not shown
        verdict = HOLDS if low > comparison.threshold else FAILS if high < comparison.threshold else INCONCLUSIVE
    paper = seeds_to_decide(comparison, comparison.paper, found) if comparison.paper is not None else (None, None)
    return Judgement(comparison, verdict, mean, low, high, found, seeds_to_decide(comparison, mean, found), paper)


def detectable_effect(noise: Noise, metric: str, seeds: int) -> float:
    """The smallest paired effect whose 95% interval excludes zero at `seeds` pretraining seeds, the calibration's
    SD taken as the pooled one and its degrees of freedom growing with the seeds."""
    sd, degrees = noise.sd(Quantity(metric))
    return t_quantile(0.975, degrees + seeds - 1) * sd / math.sqrt(seeds)


def combine(steps: list[str]) -> str:
    """A claim made of steps (a ranking) holds when every step holds, fails when any step fails."""
    if steps and all(s == HOLDS for s in steps):
        return HOLDS
    return FAILS if FAILS in steps else INCONCLUSIVE


def learning_problems(values: dict[str, list[float]], tasks: list[str]) -> list[str]:
    """Why a row has not learned what the claims are about, from its metrics (a check whose metric is missing
    is skipped): it did not learn at all, or it has not learned word order (experiments.evaluations.word_order),
    or a task's fine-tuned score is no better than its majority class. (A linear probe at its majority class
    is a measurement of the frozen features, not a sign that fine-tuning failed: the table shows both.)"""
    from experiments.evaluations.word_order import word_order_problem

    mean = {k: float(np.mean(v)) for k, v in values.items() if v}
    problems = []
    if "mlm_acc" in mean and "mlm_unigram_acc" in mean and mean["mlm_acc"] <= mean["mlm_unigram_acc"]:
        problems.append(f"held-out MLM accuracy {mean['mlm_acc']:.3f} <= the most frequent token's share "
                        f"{mean['mlm_unigram_acc']:.3f}")
    if "disc_auc" in mean and mean["disc_auc"] <= MIN_DISCRIMINATOR_AUC:
        problems.append(f"discriminator AUC {mean['disc_auc']:.3f} <= {MIN_DISCRIMINATOR_AUC}")
    if (word_order := word_order_problem(values)) is not None:
        problems.append(word_order)
    for task in tasks:
        if task in mean and f"{task}_majority" in mean and mean[task] <= mean[f"{task}_majority"]:
            problems.append(f"{task} {mean[task]:.1f} <= its majority class {mean[f'{task}_majority']:.1f}")
    return problems


# figures of the corpus a row is measured on, not of its model: an early point shares its row's
CORPUS_FIGURES = ("unigram_loss", "bigram_loss", "mlm_unigram_acc")


def early_point_of(metric: str) -> str | None:
    """The fraction of training an early point's metric was measured at (`downstream_avg@0.25` -> "0.25"),
    or None for a metric of the row's own model (`@init` and `@ft<k>` are not points of training)."""
    _, at, point = metric.rpartition("@")
    try:
        return point if at and 0 < float(point) < 1 else None
    except ValueError:
        return None


def values_at(values: dict[str, list[float]], point: str) -> dict[str, list[float]]:
    """An early point's metrics without their `@<point>` suffix, with its row's corpus figures and majority
    classes: what `learning_problems` and the word-order cell read."""
    at = f"@{point}"
    shared = {k: v for k, v in values.items() if k in CORPUS_FIGURES or k.endswith("_majority")}
    return shared | {k[:-len(at)]: v for k, v in values.items() if k.endswith(at)}


def early_points_in(values: dict[str, list[float]]) -> list[str]:
    """The early points a row measured, in order of training (their fractions as the suffix writes them)."""
    return sorted({p for k in values if (p := early_point_of(k))}, key=float)


def learning_problems_of(values: dict[str, list[float]], tasks: list[str], metric: str) -> list[str]:
    """`learning_problems` of the model `metric` was measured on: the row's own, or its early point's (a claim
    on `downstream_avg@0.25` is about the run of a quarter of the steps, which may not have learned yet)."""
    if (point := early_point_of(metric)) is None:
        return learning_problems(values, tasks)
    problems = learning_problems(values_at(values, point), tasks)
    return [f"at {point} of training: {problems[0]}", *problems[1:]] if problems else []


# -- calibration ----------------------------------------------------------------------------------------

# One row of each kind, trained with several pretraining seeds (each fine-tuned with the preset's fine-tuning
# seeds); their files are ordinary rows of those tables, so the seeds also serve the tables.
CALIBRATION_ROWS = {"absolute-mlm": ("ablation-nsp", "DOC-SENTENCES"),
                    "disentangled-mlm": ("ablation-deberta", "DeBERTa"),
                    "electra-rtd": ("ablation-electra-efficiency", "ELECTRA"),
                    "debertav3-rtd": ("ablation-embedding-sharing", "GDES")}
# figures that are not measurements with a seed-to-seed spread (settings, counts, the corpus's count models)
NOT_NOISE = ("parameters", "peak_lr", "epochs", "heldout_masked_tokens", "unk_rate", "mlm_unigram_acc",
             "unigram_loss", "bigram_loss")


def paired_sd(values_by_row: dict[str, dict[str, list[float]]]) -> tuple[dict[str, float], dict[str, int]]:
    """Per metric: the SD of the difference between two independent pretraining seeds, sqrt(2) x the
    per-seed SD pooled over the calibration rows (each row's own mean removed), and its degrees of freedom."""
    pooled: dict[str, list[float]] = {}
    for values in values_by_row.values():
        for metric, seeds in values.items():
            if len(seeds) >= 2 and "@" not in metric and not metric.endswith(("_majority", "_ft_range")) \
                    and metric not in NOT_NOISE:
                pooled.setdefault(metric, []).extend(np.asarray(seeds, float) - np.mean(seeds))
    degrees = {m: sum(len(v[m]) - 1 for v in values_by_row.values() if len(v.get(m, [])) >= 2) for m in pooled}
    sd = {m: round(math.sqrt(2 * float(np.sum(np.square(r))) / degrees[m]), 5) for m, r in pooled.items() if degrees[m]}
    return sd, {m: degrees[m] for m in sd}


def calibration_entry(row: str, values: dict[str, list[float]], results: dict[int, dict], finetune_seeds: int,
                      commit: str, hardware: str, machine_kind: str = "") -> dict:
    """One kind's entry of calibration.json from its calibration row: `values` (metric -> one value per
    pretraining seed) and its row files by seed (their seconds: what each part of a row cost)."""
    import time

    sd, degrees = paired_sd({row: values})
    parts = ("pretraining", "word_order", "minimal_pairs", "probes")
    seconds = {part: [r.get("seconds", {}).get(part) for r in results.values()] for part in parts}
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "row": row, "pretraining_seeds": len(results),
            "finetune_seeds": finetune_seeds, "paired_sd": sd, "degrees_of_freedom": degrees, "hardware": hardware,
            "machine_kind": machine_kind,
            # every metric's value per seed: the SD of a quantity derived from several (a gap) comes from them
            "seed_values": {metric: [round(v, 6) for v in seeds] for metric, seeds in values.items()
                            if len(seeds) == len(results)},
            "row_seconds": [r.get("wall_time_s") for r in results.values()],
            "seconds": {part: times for part, times in seconds.items() if None not in times}}


def describe_calibration(preset: str, entries: dict[str, dict], path: Path = CALIBRATION_FILE) -> str:
    """Per kind just calibrated: each metric's paired SD and the minimum detectable effect at 1, 3 and 5
    pretraining seeds; which probe feature varied least between seeds; what the evaluations cost a row."""
    from experiments.evaluations.probes import FEATURES, PROBE_FEATURE

    calibration, lines = load_calibration(preset, path), []
    for kind, entry in entries.items():
        noise = calibration.kinds.get(kind)
        lines.append(f"{KINDS[kind]} ({entry['row']}, {entry['pretraining_seeds']} pretraining seeds x "
                     f"{entry['finetune_seeds']} fine-tuning seeds):")
        if noise is None:
            lines.append("  no metric varied between seeds")
            continue
        lines.append(f"  {'metric':30} {'paired SD':>10} {'df':>3}  minimum detectable effect (95%) at 1 / 3 / 5 seeds")
        for metric in sorted(noise.paired_sd):
            lines.append(f"  {metric:30} {noise.paired_sd[metric]:10.4f} {noise.degrees.get(metric, 0):3d}  "
                         + " / ".join(f"{detectable_effect(noise, metric, n):.4f}" for n in (1, 3, 5)))
        features = {f: noise.paired_sd[f"probe_avg_{f}"] for f in FEATURES if f"probe_avg_{f}" in noise.paired_sd}
        if features:
            lines.append("  linear-probe features, paired SD of probe_avg: "
                         + ", ".join(f"{f.replace('_', ' ')} {sd:.2f}" for f, sd in features.items())
                         + f"; steadiest: {min(features, key=features.get)} (the table uses {PROBE_FEATURE})")
        seconds = {part: float(np.mean(times)) for part, times in entry.get("seconds", {}).items()}
        if "pretraining" in seconds and len(seconds) > 1:
            extra = {part: t for part, t in seconds.items() if part != "pretraining"}
            lines.append("  evaluations per row: " + ", ".join(f"{part.replace('_', ' ')} {t:.0f} s" for part, t in extra.items())
                         + f": {100 * sum(extra.values()) / seconds['pretraining']:.1f}% of its pretraining "
                         f"({seconds['pretraining']:.0f} s)")
    return "\n".join(lines)


def save_calibration(preset: str, kinds: dict[str, dict], path: Path = CALIBRATION_FILE) -> None:
    """Store each kind's figures in the preset's entry, keeping the kinds calibrated before (an older single
    entry is replaced)."""
    from experiments.durable import write_atomically

    calibration = json.loads(path.read_text()) if path.exists() else {}
    entry = calibration.get(preset) or {}
    calibration[preset] = {"kinds": {**(entry.get("kinds") or {}), **kinds}}
    write_atomically(path, (json.dumps(calibration, indent=2, sort_keys=True) + "\n").encode())
