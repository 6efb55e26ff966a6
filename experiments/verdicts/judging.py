"""A claim's verdict from measured noise: holds / does not hold / inconclusive, never from a mean alone.

One rule for a claim's noise (docs/verdicts.md): each comparison of a claim (experiments.verdicts.claims) has one value
per pretraining seed, the quantity it compares (a difference of two rows, a gap within a row, a gap of gaps).
Its SD is pooled from two measurements of that same quantity's seed-to-seed spread, with their degrees of
freedom summed: the preset's calibration (`experiments/verdicts/calibration.json`, `make calibrate`: rows trained with
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

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from datamodules.downstream import OFFLINE, task_name
from experiments.verdicts.claims import DOWNSTREAM_AVERAGE, ORDER_AVERAGE, Claim, Comparison, Rows
from experiments.verdicts.noise import Calibration, Noise, base_metric, t_quantile

MAX_SEEDS = 1000  # "more than 1,000 seeds" says all there is to say about an effect that small
POWER = 0.8  # the chance of deciding a real effect of the given size that the second seed count aims for
MIN_DISCRIMINATOR_AUC = 0.6  # a discriminator at or below this has not learned to detect replacements
# ...and below this one it has, but is early in training: the level this suite takes for ELECTRA's regime
# (issue 23); said under the table, not a reason to decide nothing
ELECTRA_REGIME_AUC = 0.8

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

# ------------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True)
class Spread:
    """The SD a comparison is judged with, its degrees of freedom and where they came from."""

    sd: float
    degrees: int
    calibrated_degrees: int  # the calibration's share of `degrees` (0: the table's own seeds alone)
    source: str


def signed(value: float, metric: str) -> str:
    """An effect as the tables print it: two decimals, three on the measures whose whole range is 0 to 1 (an AUC,
    a cosine), where the effects are hundredths."""
    return f"{value:+.{3 if any(unit in metric for unit in ('auc', 'cosine')) else 2}f}"


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

    def signed(self, value: float) -> str:
        return signed(value, self.comparison.quantity.metric)

    @property
    def rules_out(self) -> str:
        """The effects the 95% interval excludes, said as a sentence (empty without an interval)."""
        if self.low is None:
            return ""
        f = self.signed
        return f"rules out {self.comparison.label} below {f(self.low)} or above {f(self.high)}"

    def text(self) -> str:
        c, seeds, f = self.comparison, f"{self.n} seed{'s' * (self.n != 1)}", self.signed
        if self.mean is None:
            return f"{c.label}: no seed in common"
        if self.low is None:
            return f"{c.label}: {f(self.mean)} over {seeds}, no interval: {self.why}"
        out = (f"{c.label}: {f(self.mean)}, 95% interval [{f(self.low)}, {f(self.high)}], {seeds}, SD "
               f"{self.spread.sd:.3g} from {self.spread.source}; {self.rules_out}")
        if self.verdict == INCONCLUSIVE:
            out += "; " + self.settle_text()
        return out

    def settle_text(self) -> str:
        def count(pair: tuple[int | None, int | None]) -> str:
            return (f"about {pair[0]} seeds ({pair[1]} for {POWER:.0%} power)" if pair[1] is not None
                    else f"about {pair[0]} seeds (more than {MAX_SEEDS:,} for {POWER:.0%} power)" if pair[0] is not None
                    else f"more than {MAX_SEEDS:,} seeds")
        out = f"deciding it takes {count(self.seeds_measured)} at the measured {self.signed(self.mean)}"
        if self.comparison.paper is not None:
            out += f", {count(self.seeds_paper)} at the paper's {self.signed(self.comparison.paper)}"
        return out


def judge(comparison: Comparison, noise: Noise) -> Judgement:
    """The comparison's 95% interval (experiments.verdicts.judging' one rule) and its verdict."""
    values = comparison.values
    if len(values) == 0:
        return Judgement(comparison, INCONCLUSIVE)
    mean = float(np.mean(values))
    found = spread(comparison, noise)
    if found is None:
        what = (f"{noise.preset} is {noise.source}" if not noise.paired_sd else
                f"{base_metric(comparison.quantity.metric)}{' - ' + comparison.quantity.minus if comparison.quantity.minus else ''} "
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


def combine(steps: list[str]) -> str:
    """A claim made of steps (a ranking) holds when every step holds, fails when any step fails."""
    if steps and all(s == HOLDS for s in steps):
        return HOLDS
    return FAILS if FAILS in steps else INCONCLUSIVE


def detection_auc(values: dict[str, list[float]]) -> tuple[float, str] | None:
    """(a discriminator's mean held-out AUC where it is trained, what it is over): ELECTRA 15%'s at its masked
    positions (`disc_auc_masked`, the only ones its loss reads), any other's over every token; None for a row
    without one."""
    for metric, over in (("disc_auc_masked", "at its masked positions "), ("disc_auc", "")):
        if values.get(metric):
            return float(np.mean(values[metric])), over
    return None


def learning_problems(values: dict[str, list[float]], brief: bool = False) -> list[str]:
    """Why a row has not learned what the claims are about, from its metrics (a check whose metric is missing
    is skipped): it did not learn at all, or it has not learned word order (experiments.evaluations.word_order).
    `brief`: word order without its figures, as a claim's line gives it."""
    from experiments.evaluations.word_order import word_order_problem

    mean = {k: float(np.mean(v)) for k, v in values.items() if v}
    problems = []
    if "mlm_acc" in mean and "mlm_unigram_acc" in mean and mean["mlm_acc"] <= mean["mlm_unigram_acc"]:
        problems.append(f"held-out MLM accuracy {mean['mlm_acc']:.3f} <= the most frequent token's share "
                        f"{mean['mlm_unigram_acc']:.3f}")
    if (auc := detection_auc(values)) is not None and auc[0] <= MIN_DISCRIMINATOR_AUC:
        problems.append(f"discriminator AUC {auc[1]}{auc[0]:.3f} <= {MIN_DISCRIMINATOR_AUC}")
    if (word_order := word_order_problem(values, brief)) is not None:
        problems.append(word_order)
    return problems


def failed_fine_tuning(values: dict[str, list[float]], tasks: list[str]) -> list[str]:
    """The tasks among `tasks` whose fine-tuned score is no better than their majority class: a failed run (Mosbach
    et al. 2021's definition). A run can fail by chance where the encoder has what the task needs (one of ELECTRA-
    Small's five bigram_shift runs at `cpu` ended at 50.0, three at 64-65: studies/finetune_spread), so it says
    nothing of the row's other measures; the papers' median over several runs (`finetune.seeds`) absorbs one.
    (A linear probe at its majority class is a measurement of the frozen features: the table shows it.)"""
    mean = {k: float(np.mean(v)) for k, v in values.items() if v}
    return [f"{task} {mean[task]:.1f} <= its majority class {mean[f'{task}_majority']:.1f}" for task in tasks
            if task in mean and f"{task}_majority" in mean and mean[task] <= mean[f"{task}_majority"]]


def tasks_read(metric: str, tasks: list[str]) -> list[str]:
    """The fine-tuned tasks (of `tasks`, a row's) a claim's `metric` reads: a task's own score or its headline
    (`pos_ambiguous`), or those an average is taken over (experiments.evaluations.finetuning.task_averages); none
    for the probes, the minimal pairs or a pretraining metric."""
    base = base_metric(metric)
    word_order = [t for t in tasks if t in OFFLINE and OFFLINE[t].word_order]
    if base == DOWNSTREAM_AVERAGE:
        return [t for t in tasks if t not in word_order]
    if base == ORDER_AVERAGE:
        return word_order
    return [t for t in tasks if base == t or t in OFFLINE and OFFLINE[t].headline and base == f"{t}_{OFFLINE[t].headline}"]


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


def learning_problems_of(values: dict[str, list[float]], metric: str, brief: bool = False) -> list[str]:
    """`learning_problems` of the model `metric` was measured on: the row's own, or its early point's (a claim
    on `downstream_avg@0.25` is about the run of a quarter of the steps, which may not have learned yet)."""
    if (point := early_point_of(metric)) is None:
        return learning_problems(values, brief)
    problems = learning_problems(values_at(values, point), brief)
    return [f"at {point} of training: {problems[0]}", *problems[1:]] if problems else []


def failed_fine_tuning_of(values: dict[str, list[float]], tasks: list[str], metric: str) -> list[str]:
    """`failed_fine_tuning` of the tasks `metric` reads, at its early point if it has one."""
    point = early_point_of(metric)
    failed = failed_fine_tuning(values_at(values, point) if point else values, tasks_read(metric, tasks))
    return [f"at {point} of training: {failed[0]}", *failed[1:]] if point and failed else failed


# ------------------------------------------------------------------------------------------------ a claim

SMOKE_VERDICT = "not a verdict (smoke preset)"


@dataclass(frozen=True)
class ClaimResult:
    """A claim checked on a table's rows: its verdict, the judgement of each comparison it makes, and why it was
    not decided where it was not (rows missing, a row that did not learn)."""

    claim: Claim
    verdict: str
    judgements: tuple[Judgement, ...] = ()
    note: str = ""  # not measured: the missing rows; inconclusive by learning: which row did not learn and why
    kinds: tuple[str, ...] = ()  # the kinds of row it read (experiments.verdicts.noise.KINDS)
    borrowed: str = ""  # the noise it borrowed from another kind of row, if any

    @property
    def learned(self) -> bool:
        """Whether every row (or early point) it reads learned what the claim is about."""
        return self.verdict != "not measured" and not self.note

    def text(self) -> str:
        if self.verdict == "not measured":
            return self.note
        if self.verdict == SMOKE_VERDICT:
            return "; ".join(f"{j.comparison.label}: {j.signed(j.mean)} over {j.n} seed{'s' * (j.n != 1)}"
                             for j in self.judgements if j.mean is not None) or "no seed in common"
        several = len(self.judgements) > 1
        measured = "; ".join(j.text() + (f" ({j.verdict})" if several else "") for j in self.judgements)
        return f"{self.note} (measured: {measured})" if self.note else measured

    def to_json(self) -> dict:
        c = self.claim
        return {"claim": c.text, "kind": type(c).__name__, "metric": c.metric, "source": c.source,
                "verdict": self.verdict, "effect": self.text(), "learned": self.learned, "kinds": list(self.kinds),
                "borrowed_noise": self.borrowed, "margin": c.margin, "margin_source": c.margin_source,
                "measures": c.measures,
                "comparisons": [{"label": j.comparison.label, "verdict": j.verdict, "n": j.n, "mean": j.mean,
                                 "low": j.low, "high": j.high, "rules_out": j.rules_out,
                                 "threshold": j.comparison.threshold, "within": j.comparison.within,
                                 "paper": j.comparison.paper,
                                 "sd": j.spread.sd if j.spread else None,
                                 "degrees": j.spread.degrees if j.spread else None,
                                 "noise": j.spread.source if j.spread else None,
                                 "seeds_to_decide": {"measured": list(j.seeds_measured), "paper": list(j.seeds_paper)}}
                                for j in self.judgements]}


def check_claim(claim: Claim, rows: dict, order: list[str],
                noise: Noise | Calibration = Noise("", {}, "not calibrated"),
                paper: Callable[[str, str], float | None] = lambda row, metric: None) -> ClaimResult:
    """The claim judged on the rows (experiments.verdicts.judging: one rule for its noise), against the noise of its rows'
    kinds (a Calibration's) or the one given; `paper(row, metric)` gives the paper's own figures, for the seeds
    its effect would need. Not measured when a row is missing, never a verdict at smoke, inconclusive when a
    row has not learned (experiments.verdicts.judging.learning_problems: not at all, or not word order) or a
    fine-tuning run the claim reads failed (`failed_fine_tuning`)."""
    needed = claim.needed(order)
    missing = list(dict.fromkeys(r for r, metric in needed if r not in rows or metric not in rows[r].values))
    if missing:
        return ClaimResult(claim, "not measured", note=f"missing rows: {', '.join(missing)}")
    kinds = tuple(sorted({rows[r].kind for r, _ in needed}))
    kind_noise = noise.for_kinds(set(kinds))
    judgements = tuple(judge(comparison, kind_noise) for comparison in claim.comparisons(Rows(rows, order), paper))
    if noise.never_decides:
        return ClaimResult(claim, SMOKE_VERDICT, judgements, kinds=kinds)
    # each model the claim reads: a row's own, or its early point's for an `@<fraction>` metric; and each
    # fine-tuning run it reads
    unlearned = list(dict.fromkeys(
        f"{r} did not learn ({'; '.join(p)})" for r, metric in sorted(set(needed))
        if (p := learning_problems_of(rows[r].values, metric, brief=True))))
    unlearned += list(dict.fromkeys(  # a row that did not learn is expected at its tasks' majority classes
        f"{r}'s fine-tuning failed ({'; '.join(f)})" for r, metric in sorted(set(needed))
        if not learning_problems_of(rows[r].values, metric)
        and (f := failed_fine_tuning_of(rows[r].values, [task_name(t) for t in rows[r].tasks], metric))))
    verdict = combine([j.verdict for j in judgements])
    if unlearned:
        return ClaimResult(claim, INCONCLUSIVE, judgements, "; ".join(unlearned), kinds, kind_noise.borrowed)
    return ClaimResult(claim, verdict, judgements, kinds=kinds, borrowed=kind_noise.borrowed)
