"""A claim's verdict from measured noise: holds / does not hold / inconclusive, never from a mean alone.

Every claim reduces to paired differences, one per pretraining seed, that the claim says are above (or,
for "close", inside) a threshold. Their 95% interval is a t-interval over the seeds when there are at
least 3; with fewer, it comes from the preset's calibrated noise (`experiments/calibration.json`: the
standard deviation of the difference between two pretraining seeds of one row, per metric, measured by
`make calibrate`, with its degrees of freedom, so that an SD estimated from few seeds widens the interval
through Student's t); with neither, the claim is inconclusive. The claim holds when the whole interval is
on its side of the threshold, does not hold when the whole interval is on the other side.
A smoke run never decides anything, and a row that did not learn, or learned no word order, decides nothing.

Rows differ in how much they vary between pretraining seeds: absolute-position MLM rows that are still bags
of words barely move, rows that learn word order vary far more. The calibration is therefore per kind of
row (`KINDS`), and a claim is judged against the noise of its rows' kind (rows of two kinds: the larger).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
MIN_SEEDS_FOR_T = 3
PRACTICAL_SEEDS = 100  # beyond this, "detectable at about 7,581 seeds" says no more than "not by seeds"
MIN_DISCRIMINATOR_AUC = 0.6  # a discriminator at or below this has not learned to detect replacements
# ...and below this one it has, but is early in training: the level this suite takes for ELECTRA's regime
# (issue 23); said under the table, not a reason to decide nothing
ELECTRA_REGIME_AUC = 0.8

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

# The kinds of row whose seed-to-seed noise is calibrated separately, each by one row (CALIBRATION_ROWS below).
KINDS = {"absolute-mlm": "absolute-position MLM rows", "disentangled-mlm": "disentangled-attention MLM rows",
         "rtd": "RTD rows"}


def row_kind(config: dict) -> str:
    """A row's kind from its config (as a row file stores it): RTD whatever its attention, else MLM by attention."""
    if config.get("objective") == "rtd":
        return "rtd"
    return "disentangled-mlm" if config.get("encoder", {}).get("attention") == "disentangled" else "absolute-mlm"


@dataclass(frozen=True)
class Noise:
    """What a claim is judged against: the paired SD per metric of one kind of row (or of a claim's kinds)."""

    preset: str
    paired_sd: dict[str, float]  # metric -> SD of a paired difference between two pretraining seeds
    source: str  # e.g. "calibration 2026-11-27" or "not calibrated"
    degrees: dict[str, int] = field(default_factory=dict)  # metric -> degrees of freedom of its SD (none: many)

    def quantile(self, metric: str) -> float:
        """The 97.5% quantile that turns the calibrated SD of `metric` into a 95% interval."""
        return _t_quantile(self.degrees.get(_base_metric(metric), 1000))

    @property
    def never_decides(self) -> bool:
        return self.preset == "smoke"

    def for_kinds(self, kinds: set[str]) -> "Noise":
        """A figure given for every kind (a test's, or one the caller chose) applies to any claim."""
        return self


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
        """The noise of a claim whose rows are of `kinds`: per metric the largest of their SDs (with its degrees
        of freedom); a metric is calibrated only if every kind has it."""
        figures = [self.kinds.get(kind) for kind in sorted(kinds)]
        what = " and ".join(KINDS.get(kind, kind) for kind in sorted(kinds)) or "no rows"
        if not figures or None in figures:
            missing = [KINDS.get(k, k) for k in sorted(kinds) if k not in self.kinds]
            return Noise(self.preset, {}, f"not calibrated for {' and '.join(missing) or what}")
        paired_sd, degrees = {}, {}
        for metric in set.intersection(*(set(noise.paired_sd) for noise in figures)):
            widest = max(figures, key=lambda noise: noise.paired_sd[metric])
            paired_sd[metric] = widest.paired_sd[metric]
            if metric in widest.degrees:
                degrees[metric] = widest.degrees[metric]
        dates = sorted({noise.source for noise in figures})
        return Noise(self.preset, paired_sd, f"{', '.join(dates)} of {what}" + (" (the larger)" if len(figures) > 1 else ""),
                     degrees)


def load_calibration(preset: str, path: Path = CALIBRATION_FILE) -> Calibration:
    """The preset's entry of calibration.json: `{"kinds": {kind: {...}}}`, or the older single entry (one
    paired SD pooled over its `rows`), which is read as the noise of each kind those rows are."""
    entry = (json.loads(path.read_text()) if path.exists() else {}).get(preset) or {}
    if "kinds" in entry:
        kinds = {kind: _noise(preset, figures) for kind, figures in entry["kinds"].items()}
    else:
        rows = entry.get("rows", [])
        kinds = {kind: _noise(preset, entry) for kind, (experiment, row) in CALIBRATION_ROWS.items()
                 if f"{experiment}/{row}" in rows}
    return Calibration(preset, {kind: noise for kind, noise in kinds.items() if noise.paired_sd})


def _noise(preset: str, figures: dict) -> Noise:
    return Noise(preset, dict(figures.get("paired_sd") or {}), f"calibration {figures.get('date', '?')}",
                 dict(figures.get("degrees_of_freedom", {})))


# Student's t, 97.5% quantile, by degrees of freedom (a conservative lookup between the listed ones)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def _t_quantile(degrees: int) -> float:
    return T_975[max(k for k in T_975 if k <= degrees)] if degrees < 1000 else 1.96


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    source: str  # where the noise figure came from

    def text(self) -> str:
        return (f"{self.mean:+.2f}, 95% interval [{self.low:+.2f}, {self.high:+.2f}], "
                f"{self.n} seed{'s' * (self.n != 1)}, noise from {self.source}")


def interval(diffs: np.ndarray, metric: str, noise: Noise) -> Interval | None:
    """The 95% interval of the mean paired difference; None when nothing says how noisy it is."""
    n = len(diffs)
    if n == 0:
        return None
    mean = float(np.mean(diffs))
    if n >= MIN_SEEDS_FOR_T:
        half = _t_quantile(n - 1) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
        return Interval(mean, mean - half, mean + half, n, f"the {n} seeds")
    sd = noise.paired_sd.get(_base_metric(metric))
    if sd is None:
        return None
    half = noise.quantile(metric) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, noise.source)


def _base_metric(metric: str) -> str:
    """downstream_avg@0.25 is calibrated as downstream_avg."""
    return metric.split("@")[0]


def judge(diffs: np.ndarray, metric: str, noise: Noise, above: float = 0.0, within: float | None = None) -> tuple[str, str]:
    """(verdict, effect text) for "the paired difference is >= `above`" or, with `within`, "|difference| <= within"."""
    if len(diffs) == 0:
        return INCONCLUSIVE, "no seed in common"
    found = interval(diffs, metric, noise)
    if found is None:
        missing = f"{noise.preset} is {noise.source}" if not noise.paired_sd else \
            f"{_base_metric(metric)} has no calibrated noise at {noise.preset} ({noise.source})"
        return INCONCLUSIVE, (f"{float(np.mean(diffs)):+.2f} over {len(diffs)} seed{'s' * (len(diffs) != 1)}, no "
                              f"interval: fewer than {MIN_SEEDS_FOR_T} seeds and {missing} "
                              f"(`make calibrate PRESET={noise.preset}`, or SEEDS={MIN_SEEDS_FOR_T})")
    if within is not None:
        verdict = HOLDS if -within <= found.low and found.high <= within else \
            FAILS if found.low > within or found.high < -within else INCONCLUSIVE
        threshold = within - abs(found.mean)
    else:
        verdict = HOLDS if found.low >= above else FAILS if found.high < above else INCONCLUSIVE
        threshold = found.mean - above
    text = found.text()
    if verdict == INCONCLUSIVE:
        text += _seeds_to_settle(threshold, metric, noise, diffs)
    return verdict, text


def _seeds_to_settle(distance: float, metric: str, noise: Noise, diffs: np.ndarray) -> str:
    """How many seeds would make an effect this far from the threshold detectable (95%, two-sided)."""
    sd = noise.paired_sd.get(_base_metric(metric)) or (float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None)
    if not sd or distance == 0:
        return "; the effect sits on the threshold: no number of seeds settles it"
    needed = math.ceil((noise.quantile(metric) * sd / abs(distance)) ** 2)
    if needed > PRACTICAL_SEEDS:
        return (f"; the effect is {abs(distance):.2g} from the threshold: more than {PRACTICAL_SEEDS} seeds would be "
                f"needed to settle it")
    return f"; detectable at about {max(needed, len(diffs) + 1)} seeds if the effect is real"


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
                    "rtd": ("ablation-electra-efficiency", "ELECTRA")}
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


def detectable_effect(noise: Noise, metric: str, seeds: int) -> float:
    """The smallest paired effect whose 95% interval excludes zero at `seeds` pretraining seeds."""
    return noise.quantile(metric) * noise.paired_sd[_base_metric(metric)] / math.sqrt(seeds)


def calibration_entry(row: str, values: dict[str, list[float]], results: dict[int, dict], finetune_seeds: int,
                      commit: str, hardware: str) -> dict:
    """One kind's entry of calibration.json from its calibration row: `values` (metric -> one value per
    pretraining seed) and its row files by seed (their seconds: what each part of a row cost)."""
    import time

    sd, degrees = paired_sd({row: values})
    parts = ("pretraining", "word_order", "minimal_pairs", "probes")
    seconds = {part: [r.get("seconds", {}).get(part) for r in results.values()] for part in parts}
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "row": row, "pretraining_seeds": len(results),
            "finetune_seeds": finetune_seeds, "paired_sd": sd, "degrees_of_freedom": degrees, "hardware": hardware,
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
