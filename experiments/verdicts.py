"""A claim's verdict from measured noise: holds / does not hold / inconclusive, never from a mean alone.

Every claim reduces to paired differences, one per pretraining seed, that the claim says are above (or,
for "close", inside) a threshold. Their 95% interval is a t-interval over the seeds when there are at
least 3; with fewer, it comes from the preset's calibrated noise (`experiments/calibration.json`: the
standard deviation of the difference between two pretraining seeds of one row, per metric, measured by
`make calibrate`, with its degrees of freedom, so that an SD estimated from few seeds widens the interval
through Student's t); with neither, the claim is inconclusive. The claim holds when the whole interval is
on its side of the threshold, does not hold when the whole interval is on the other side.
A smoke run never decides anything, and a row that did not learn decides nothing.
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

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Noise:
    """What a preset's claims are judged against."""

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


def load_noise(preset: str, path: Path = CALIBRATION_FILE) -> Noise:
    entry = (json.loads(path.read_text()) if path.exists() else {}).get(preset) or {}
    if not entry.get("paired_sd"):
        return Noise(preset, {}, "not calibrated")
    return Noise(preset, dict(entry["paired_sd"]), f"calibration {entry.get('date', '?')}",
                 dict(entry.get("degrees_of_freedom", {})))


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
        return INCONCLUSIVE, (f"{float(np.mean(diffs)):+.2f} over {len(diffs)} seed{'s' * (len(diffs) != 1)}, no "
                              f"interval: fewer than {MIN_SEEDS_FOR_T} seeds and {noise.preset} is not calibrated "
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
    """Why a row did not learn, from its metrics (a check whose metric is missing is skipped)."""
    mean = {k: float(np.mean(v)) for k, v in values.items() if v}
    problems = []
    if "mlm_acc" in mean and "mlm_unigram_acc" in mean and mean["mlm_acc"] <= mean["mlm_unigram_acc"]:
        problems.append(f"held-out MLM accuracy {mean['mlm_acc']:.3f} <= the most frequent token's share "
                        f"{mean['mlm_unigram_acc']:.3f}")
    if "disc_auc" in mean and mean["disc_auc"] <= MIN_DISCRIMINATOR_AUC:
        problems.append(f"discriminator AUC {mean['disc_auc']:.3f} <= {MIN_DISCRIMINATOR_AUC}")
    for task in tasks:
        if task in mean and f"{task}_majority" in mean and mean[task] <= mean[f"{task}_majority"]:
            problems.append(f"{task} {mean[task]:.1f} <= its majority class {mean[f'{task}_majority']:.1f}")
    return problems


# -- calibration ----------------------------------------------------------------------------------------

# One MLM row and one RTD row, trained with several pretraining seeds (each fine-tuned with the preset's
# fine-tuning seeds); their files are ordinary rows of those tables, so the seeds also serve the tables.
CALIBRATION_ROWS = (("ablation-nsp", "DOC-SENTENCES"), ("ablation-electra-efficiency", "ELECTRA"))
NOT_NOISE = ("parameters", "peak_lr", "epochs", "heldout_masked_tokens", "unk_rate", "mlm_unigram_acc")


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


def save_calibration(preset: str, entry: dict, path: Path = CALIBRATION_FILE) -> None:
    from experiments.durable import write_atomically

    calibration = json.loads(path.read_text()) if path.exists() else {}
    calibration[preset] = entry
    write_atomically(path, (json.dumps(calibration, indent=2, sort_keys=True) + "\n").encode())
